"""CPU vs CUDA parity (docs/numerics.md §1): integer sums are associative, so every result must be bit-identical.

Covers ``int_mm_cuda`` (shapes that need padding, every operand layout,
int32 extremes), the convolution kernels on both CUDA backends (the Triton
implicit GEMM and im2col + ``_int_mm``), pooling, and whole training steps of
LeNet and VGG-small-7 on real data for every rounding mode.  Everything but
the padding arithmetic skips when no CUDA device is present.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import niti
from niti.audit import integer_only
from niti.kernels import MAX_K_INT32, conv, int_matmul, maxpool2d, maxpool2d_backward
from niti.kernels.cuda import CONV_BACKEND_ENV, MIN_M, padded_shape
from niti.numerics import ROUNDING_MODES, RoundingPolicy

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device (torch.cuda.is_available() is False)")
HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = [pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")),
            "im2col"]


def _rand(shape: tuple[int, ...], seed: int, lo: int = -127, hi: int = 127) -> torch.Tensor:
    return torch.randint(lo, hi + 1, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)


def _exact(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in int64 on the CPU: the reference every int8 product must equal."""
    return a.cpu().to(torch.int64) @ b.cpu().to(torch.int64)


def test_padded_shape_meets_int_mm_cuda_rules() -> None:
    for m, k, n in [(1, 1, 1), (16, 8, 8), (17, 9, 15), (300, 1152, 128), (5, 27, 10)]:
        mp, kp, np_ = padded_shape(m, k, n)
        assert mp > 16 and kp % 8 == 0 and np_ % 8 == 0
        assert mp >= m and kp >= k and np_ >= n and kp - k < 8 and np_ - n < 8
        assert mp == (m if m > 16 else MIN_M)


# ------------------------------------------------------------------------------------------------- int_mm_cuda
@needs_cuda
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (5, 3, 7), (16, 8, 8), (17, 8, 8), (17, 9, 15), (33, 100, 10),
                                   (64, 1000, 130), (300, 1152, 128)])
@pytest.mark.parametrize("a_t,b_t", [(False, False), (True, False), (False, True), (True, True)])
def test_int_mm_cuda_matches_exact_product(m: int, k: int, n: int, a_t: bool, b_t: bool) -> None:
    from niti.kernels.cuda import int_mm_cuda

    a = _rand((m, k), 1)
    b = _rand((k, n), 2)
    a_dev = a.t().contiguous().cuda().t() if a_t else a.cuda()  # column-major view when a_t
    b_dev = b.t().contiguous().cuda().t() if b_t else b.cuda()
    out = int_mm_cuda(a_dev, b_dev)
    assert out.dtype == torch.int32 and out.shape == (m, n) and out.is_contiguous()
    assert torch.equal(out.cpu().to(torch.int64), _exact(a, b))
    assert torch.equal(int_matmul(a_dev, b_dev).cpu(), int_matmul(a, b))


@needs_cuda
def test_int_mm_cuda_reaches_int32_limit_without_saturating() -> None:
    # K = MAX_K_INT32 all ±127: 2,147,479,576, within 4,071 of 2**31 - 1. Tensor cores would clip past it.
    k = MAX_K_INT32
    a = torch.full((17, k), 127, dtype=torch.int8)
    a[1::2] = -127
    b = torch.full((k, 8), 127, dtype=torch.int8)
    out = int_matmul(a.cuda(), b.cuda())
    assert out.dtype == torch.int32
    assert int(out[0, 0]) == k * 127 * 127 and int(out[1, 0]) == -k * 127 * 127
    assert torch.equal(out.cpu(), int_matmul(a, b))


@needs_cuda
def test_int_matmul_cuda_splits_past_int32() -> None:
    k = MAX_K_INT32 + 1000
    a = torch.full((20, k), 127, dtype=torch.int8)
    a[::3] = -127
    b = torch.full((k, 8), 127, dtype=torch.int8)
    out = int_matmul(a.cuda(), b.cuda())
    assert out.dtype == torch.int64
    assert int(out[0, 0]) == -k * 127 * 127 and int(out[1, 0]) == k * 127 * 127
    assert torch.equal(out.cpu(), _exact(a, b))


# ------------------------------------------------------------------------------------------------ convolutions
CONV_SHAPES = [  # (n, h, w, c_in, c_out, kernel, stride, padding)
    (4, 28, 28, 1, 20, 5, 1, 0),     # LeNet conv1
    (4, 12, 12, 20, 50, 5, 1, 0),    # LeNet conv2
    (8, 32, 32, 3, 128, 3, 1, 1),    # VGG first layer
    (8, 16, 16, 128, 256, 3, 1, 1),  # VGG middle layer
    (3, 9, 11, 24, 40, 3, 2, 1),     # stride 2, odd sizes
    (2, 7, 7, 64, 33, 1, 1, 0),      # 1×1, odd C_out
]


@needs_cuda
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv_kernels_match_cpu(shape: tuple, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONV_BACKEND_ENV, backend)
    n, h, w, c, co, k, s, p = shape
    x, wt = _rand((n, h, w, c), 3), _rand((co, k, k, c), 4)
    stride, padding = (s, s), (p, p)
    ref, cols = conv.conv2d(x, wt, stride, padding)
    out, cols_dev = conv.conv2d(x.cuda(), wt.cuda(), stride, padding)
    assert isinstance(cols_dev, torch.Tensor) == (backend == "im2col")  # the Triton path keeps no columns
    assert out.dtype == ref.dtype and torch.equal(out.cpu(), ref)
    err = _rand(tuple(ref.shape), 5)
    g_ref = conv.conv2d_grad_weight(err, cols, (k, k))
    g = conv.conv2d_grad_weight(err.cuda(), cols_dev, (k, k))
    assert g.dtype == g_ref.dtype and torch.equal(g.cpu(), g_ref)
    e_ref = conv.conv2d_grad_input(err, wt, (h, w), stride, padding)
    e = conv.conv2d_grad_input(err.cuda(), wt.cuda(), (h, w), stride, padding)
    assert e.dtype == e_ref.dtype and torch.equal(e.cpu(), e_ref)


@needs_cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_grad_weight_past_int32_is_exact_int64(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONV_BACKEND_ENV, backend)
    x = torch.full((2, 260, 260, 8), 127, dtype=torch.int8)  # 135,200 reduction rows of 127·127
    wt = torch.ones((8, 1, 1, 8), dtype=torch.int8)
    _, cols = conv.conv2d(x, wt, (1, 1), (0, 0))
    _, cols_dev = conv.conv2d(x.cuda(), wt.cuda(), (1, 1), (0, 0))
    err = torch.full((2, 260, 260, 8), -127, dtype=torch.int8)
    g_ref = conv.conv2d_grad_weight(err, cols, (1, 1))
    g = conv.conv2d_grad_weight(err.cuda(), cols_dev, (1, 1))
    assert g_ref.dtype == g.dtype == torch.int64
    assert int(g_ref.min()) == int(g_ref.max()) == -2 * 260 * 260 * 127 * 127
    assert torch.equal(g.cpu(), g_ref)


@needs_cuda
def test_maxpool_matches_cpu() -> None:
    x = _rand((4, 9, 10, 16), 6, lo=-3, hi=3)  # many ties: first-maximum routing must agree
    out, index = maxpool2d(x, 2)
    out_d, index_d = maxpool2d(x.cuda(), 2)
    assert torch.equal(out_d.cpu(), out) and torch.equal(index_d.cpu(), index)
    err = _rand(tuple(out.shape), 7)
    back = maxpool2d_backward(err, index, 2, x.shape)
    assert torch.equal(maxpool2d_backward(err.cuda(), index_d, 2, x.shape).cpu(), back)


# ----------------------------------------------------------------------------------------------- training steps
POLICIES = ({mode: RoundingPolicy.all(mode) for mode in ROUNDING_MODES}
            | {"reference": RoundingPolicy.reference(), "default": RoundingPolicy()})


def _real_batches(data: dict[str, np.ndarray], n: int, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x = data["x_train"][: n * steps]
    x = x[..., None] if x.ndim == 3 else x
    y = data["y_train"][: n * steps].astype(np.int64)
    return [(torch.from_numpy(x[i * n:(i + 1) * n].copy()), torch.from_numpy(y[i * n:(i + 1) * n].copy()))
            for i in range(steps)]


def _train_both(name: str, batches: list, policy: RoundingPolicy, accumulator_bits: int = 8) -> None:
    cpu = niti.build(name, seed=3, policy=policy, accumulator_bits=accumulator_bits, total_steps=len(batches))
    gpu = niti.build(name, seed=3, policy=policy, accumulator_bits=accumulator_bits,
                     total_steps=len(batches)).to("cuda")
    assert gpu.weights_sha256() == cpu.weights_sha256()
    for images, labels in batches:
        logits_cpu = cpu.train_step(images, labels)
        logits_gpu = gpu.train_step(images.cuda(), labels.cuda())
        assert logits_gpu.e == logits_cpu.e and torch.equal(logits_gpu.m.cpu(), logits_cpu.m)
    assert gpu.weights_sha256() == cpu.weights_sha256()
    images = batches[0][0]
    assert torch.equal(gpu.predict(images.cuda()).cpu(), cpu.predict(images))


@needs_cuda
@pytest.mark.parametrize("policy", list(POLICIES))
def test_lenet_train_steps_bit_identical(policy: str, mnist: dict[str, np.ndarray]) -> None:
    _train_both("lenet", _real_batches(mnist, 32, 3), POLICIES[policy])


@needs_cuda
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy", list(POLICIES))
def test_vgg_small_7_train_steps_bit_identical(policy: str, backend: str, cifar10: dict[str, np.ndarray],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONV_BACKEND_ENV, backend)
    _train_both("vgg-small-7", _real_batches(cifar10, 8, 2), POLICIES[policy])


@needs_cuda
def test_vgg_small_7_16bit_accumulators_bit_identical(cifar10: dict[str, np.ndarray]) -> None:
    _train_both("vgg-small-7", _real_batches(cifar10, 8, 2), RoundingPolicy(), accumulator_bits=16)


@needs_cuda
def test_cuda_train_step_is_integer_only(cifar10: dict[str, np.ndarray]) -> None:
    model = niti.build("vgg-small-7", seed=1).to("cuda")
    images, labels = _real_batches(cifar10, 4, 1)[0]
    images, labels = images.cuda(), labels.cuda()
    with integer_only() as audit:
        model.train_step(images, labels)
    assert audit.ops > 100
