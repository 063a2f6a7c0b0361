"""Triton implicit-GEMM convolution: bit-identical to the im2col + ``_int_mm`` path.

Without CUDA the kernels run in Triton's interpreter on CPU tensors
(``TRITON_INTERPRET=1``, which Triton reads when a kernel is defined, so it is
set before ``niti.kernels.triton_conv`` is imported, and the module is reloaded
if something imported it earlier in the other mode).  With CUDA they run
compiled on the GPU.  The reference is always ``niti.kernels.conv`` on the CPU.
Shapes stay tiny: the interpreter is slow.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

_INTERPRET = not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"
if _INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[gpu]' -c constraints.txt)")

from niti.kernels import MAX_K_INT32, conv, triton_conv  # noqa: E402
from niti.kernels import cuda as kernels_cuda  # noqa: E402

if triton_conv.INTERPRETED != _INTERPRET:  # imported earlier in the other mode: rebuild the kernels
    triton_conv = importlib.reload(triton_conv)

DEVICE = "cpu" if _INTERPRET else "cuda"

# (n, h, w, c_in, c_out, kernel, stride, padding): narrow channels use the flat-K loop, c_in >= 32 the tap loop.
SHAPES = [
    (2, 5, 6, 3, 8, (3, 3), (1, 1), (1, 1)),
    (1, 7, 7, 1, 20, (5, 5), (1, 1), (0, 0)),
    (2, 9, 8, 5, 7, (5, 5), (2, 2), (2, 2)),
    (1, 6, 7, 4, 16, (1, 1), (1, 1), (0, 0)),
    (1, 8, 7, 6, 9, (2, 3), (1, 2), (2, 0)),
    (1, 7, 7, 3, 5, (3, 3), (3, 3), (1, 1)),
    (2, 6, 6, 40, 33, (3, 3), (2, 2), (1, 1)),
    (1, 5, 5, 64, 16, (3, 3), (1, 1), (1, 1)),
    (1, 4, 4, 32, 12, (3, 3), (1, 1), (3, 3)),
    (1, 5, 6, 96, 24, (1, 1), (1, 1), (0, 0)),
]


def _ids(shape: tuple) -> str:
    n, h, w, c, co, k, s, p = shape
    return f"{n}x{h}x{w}x{c}->{co}_k{k[0]}{k[1]}_s{s[0]}{s[1]}_p{p[0]}{p[1]}"


def _rand(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return torch.randint(-127, 128, shape, generator=g, dtype=torch.int8)


def _operands(shape: tuple, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, h, w, c, co, k, _, _ = shape
    g = torch.Generator().manual_seed(seed)
    return _rand((n, h, w, c), g), _rand((co, k[0], k[1], c), g)


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_forward_matches_im2col(shape: tuple) -> None:
    x, w = _operands(shape, 1)
    stride, padding = shape[6], shape[7]
    ref, _ = conv.conv2d(x, w, stride, padding)
    assert triton_conv.supports(x.to(DEVICE), w.to(DEVICE), stride, padding)
    out = triton_conv.conv2d_nhwc(x.to(DEVICE), w.to(DEVICE), stride, padding)
    assert out.dtype == ref.dtype == torch.int32
    assert out.shape == ref.shape
    assert torch.equal(out.cpu(), ref)


@pytest.mark.parametrize("shape", SHAPES[::2], ids=_ids)
def test_grad_weight_matches_im2col(shape: tuple) -> None:
    x, w = _operands(shape, 2)
    stride, padding = shape[6], shape[7]
    acc, cols = conv.conv2d(x, w, stride, padding)
    err = _rand(tuple(acc.shape), torch.Generator().manual_seed(3))
    ref = conv.conv2d_grad_weight(err, cols, shape[5])
    _, implicit = triton_conv.conv2d(x.to(DEVICE), w.to(DEVICE), stride, padding)
    got = implicit.grad_weight(err.to(DEVICE), shape[5])
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert torch.equal(got.cpu(), ref)


def test_grad_weight_sums_int32_partials_across_splits() -> None:
    # Enough rows that the reduction is split over several programs (int64 sum, int32 result).
    x, w = _operands((4, 24, 24, 3, 8, (3, 3), (1, 1), (1, 1)), 4)
    acc, cols = conv.conv2d(x, w, (1, 1), (1, 1))
    err = _rand(tuple(acc.shape), torch.Generator().manual_seed(5))
    ref = conv.conv2d_grad_weight(err, cols, (3, 3))
    got = triton_conv.conv2d_grad_weight(err.to(DEVICE), x.to(DEVICE), (3, 3), (1, 1), (1, 1))
    assert triton_conv.wgrad_plan(4 * 24 * 24, 8, 27).splits > 1
    assert ref.dtype == got.dtype == torch.int32
    assert torch.equal(got.cpu(), ref)


@pytest.mark.parametrize("sign", [1, -1])
def test_adversarial_extremes_are_exact(sign: int) -> None:
    # Every product is ±127·127: the largest sums the datapath can make, exact and never saturated.
    x = torch.full((2, 5, 5, 64), 127, dtype=torch.int8)
    x[1] = -127
    w = torch.full((8, 3, 3, 64), sign * 127, dtype=torch.int8)
    w[1::2] *= -1
    ref, cols = conv.conv2d(x, w, (1, 1), (0, 0))
    out, implicit = triton_conv.conv2d(x.to(DEVICE), w.to(DEVICE), (1, 1), (0, 0))
    assert int(ref.abs().min()) == int(ref.abs().max()) == 9 * 64 * 127 * 127
    assert torch.equal(out.cpu(), ref)
    err = torch.full(tuple(ref.shape), -127 * sign, dtype=torch.int8)
    assert torch.equal(implicit.grad_weight(err.to(DEVICE), (3, 3)).cpu(), conv.conv2d_grad_weight(err, cols, (3, 3)))


def test_grad_weight_past_int32_reduction_returns_exact_int64() -> None:
    # 133,225 rows of 127·127 = 2,148,786,025 > 2**31 - 1: int32 would wrap (CPU) or saturate (tensor cores).
    side, c = 365, 8
    assert side * side > MAX_K_INT32
    x = torch.full((1, side, side, c), 127, dtype=torch.int8)
    err = torch.full((1, side, side, c), 127, dtype=torch.int8)
    err[..., 1::2] = -127
    got = triton_conv.conv2d_grad_weight(err.to(DEVICE), x.to(DEVICE), (1, 1), (1, 1), (0, 0))
    ref = conv.conv2d_grad_weight(err, conv.im2col(x, (1, 1), (1, 1), (0, 0)), (1, 1))
    assert got.dtype == ref.dtype == torch.int64
    expected = side * side * 127 * 127
    assert int(ref.abs().min()) == int(ref.abs().max()) == expected
    assert torch.equal(got.cpu(), ref)


def test_supports_guards_int32_accumulator_and_dtype() -> None:
    c = MAX_K_INT32 + 1  # K = c > MAX_K_INT32: one output could need more than int32
    assert not triton_conv.supports(torch.zeros((1, 1, 1, c), dtype=torch.int8, device=DEVICE),
                                    torch.zeros((1, 1, 1, c), dtype=torch.int8, device=DEVICE), (1, 1), (0, 0))
    c = MAX_K_INT32
    assert triton_conv.supports(torch.zeros((1, 1, 1, c), dtype=torch.int8, device=DEVICE),
                                torch.zeros((1, 1, 1, c), dtype=torch.int8, device=DEVICE), (1, 1), (0, 0))
    x16 = torch.zeros((1, 4, 4, 3), dtype=torch.int16, device=DEVICE)
    w8 = torch.zeros((2, 3, 3, 3), dtype=torch.int8, device=DEVICE)
    assert not triton_conv.supports(x16, w8, (1, 1), (1, 1))
    with pytest.raises(ValueError, match="does not support"):
        triton_conv.conv2d_nhwc(x16, w8, (1, 1), (1, 1))


def test_grad_weight_rejects_mismatched_error() -> None:
    x = torch.zeros((1, 4, 4, 3), dtype=torch.int8, device=DEVICE)
    with pytest.raises(ValueError, match="error must be int8"):
        triton_conv.conv2d_grad_weight(torch.zeros((1, 3, 3, 2), dtype=torch.int8, device=DEVICE), x, (3, 3),
                                       (1, 1), (1, 1))


def test_cuda_hook_serves_triton_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # conv.conv2d hands CUDA tensors to this hook; its answer must be conv2d's contract, or None.
    shape = SHAPES[6]
    x, w = _operands(shape, 8)
    stride, padding = shape[6], shape[7]
    ref, cols = conv.conv2d(x, w, stride, padding)
    monkeypatch.setenv(kernels_cuda.CONV_BACKEND_ENV, "triton")
    out, implicit = kernels_cuda.triton_conv2d(x.to(DEVICE), w.to(DEVICE), stride, padding)
    assert torch.equal(out.cpu(), ref)
    err = _rand(tuple(ref.shape), torch.Generator().manual_seed(9))
    grad = conv.conv2d_grad_weight(err.to(DEVICE), implicit, shape[5])  # conv.py's dispatch on the stand-in
    assert torch.equal(grad.cpu(), conv.conv2d_grad_weight(err, cols, shape[5]))
    big_k = torch.zeros((1, 1, 1, MAX_K_INT32 + 1), dtype=torch.int8, device=DEVICE)
    assert kernels_cuda.triton_conv2d(big_k, big_k, (1, 1), (0, 0)) is None  # falls back to im2col
    monkeypatch.setenv(kernels_cuda.CONV_BACKEND_ENV, "im2col")
    assert kernels_cuda.triton_conv2d(x.to(DEVICE), w.to(DEVICE), stride, padding) is None
