"""Kernels bit-exact against int64 references written without floats (docs/numerics.md §1, §4)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from niti.kernels import (MAX_K_INT32, conv2d, conv2d_grad_input, conv2d_grad_weight, im2col, int_matmul,
                          maxpool2d, maxpool2d_backward)
from niti.kernels import fused
from niti.kernels.matmul import check_int_mm_layout

INT32_MAX = 2**31 - 1


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _int8(shape: tuple[int, ...], seed: int, lo: int = -127, hi: int = 127) -> torch.Tensor:
    return torch.randint(lo, hi + 1, shape, generator=_gen(seed), dtype=torch.int8)


def _signs(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """±127 only: the adversarial inputs that make every product as large as an int8 product can be."""
    return (torch.randint(0, 2, shape, generator=_gen(seed), dtype=torch.int8) * 2 - 1) * 127


# --------------------------------------------------------------------------- int64 references (no floats)
def ref_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact product on int64 (CPU integer matmul, no floating point)."""
    return a.to(torch.int64) @ b.to(torch.int64)


def _pad(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    n, h, w, c = x.shape
    out = torch.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=torch.int64)
    out[:, ph:ph + h, pw:pw + w] = x
    return out


def _out_size(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def ref_conv(x: torch.Tensor, w: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """NHWC conv as a sum over kernel offsets of int64 products of shifted, strided slices."""
    n, h, wd, _ = x.shape
    c_out, kh, kw, _ = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = _out_size(h, kh, sh, ph), _out_size(wd, kw, sw, pw)
    xp = _pad(x.to(torch.int64), ph, pw)
    w64 = w.to(torch.int64)
    out = torch.zeros((n, ho, wo, c_out), dtype=torch.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]  # (n, ho, wo, c_in)
            out += (patch.unsqueeze(3) * w64[:, i, j, :]).sum(-1)
    return out


def ref_conv_grad_input(err: torch.Tensor, w: torch.Tensor, input_hw: tuple[int, int], stride: tuple[int, int],
                        padding: tuple[int, int]) -> torch.Tensor:
    """The adjoint of ``ref_conv``: scatter ``err · W[:, i, j, :]`` back to every offset, then crop the padding."""
    n, ho, wo, _ = err.shape
    _, kh, kw, c_in = w.shape
    (h, wd), (sh, sw), (ph, pw) = input_hw, stride, padding
    e64, w64 = err.to(torch.int64), w.to(torch.int64)
    dxp = torch.zeros((n, h + 2 * ph, wd + 2 * pw, c_in), dtype=torch.int64)
    for i in range(kh):
        for j in range(kw):
            contrib = (e64.unsqueeze(-1) * w64[:, i, j, :]).sum(3)  # (n, ho, wo, c_in)
            dxp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :] += contrib
    return dxp[:, ph:ph + h, pw:pw + wd]


def ref_conv_grad_weight(err: torch.Tensor, x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                         padding: tuple[int, int]) -> torch.Tensor:
    """``dW[o, i, j, c] = Σ_{n,ho,wo} err[n,ho,wo,o] · x_pad[n, ho·sh+i, wo·sw+j, c]`` in int64."""
    n, ho, wo, c_out = err.shape
    kh, kw = kernel
    (sh, sw), (ph, pw) = stride, padding
    xp = _pad(x.to(torch.int64), ph, pw)
    e64 = err.to(torch.int64).reshape(-1, c_out)
    out = torch.zeros((c_out, kh, kw, x.shape[3]), dtype=torch.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :].reshape(-1, x.shape[3])
            out[:, i, j, :] = e64.t() @ patch
    return out


# --------------------------------------------------------------------------- matmul
@pytest.fixture(params=["int_mm", "int32", "avx2"])
def cpu_path(request, monkeypatch) -> str:
    """Every exact CPU product: int8 ``_int_mm`` (VNNI), the widened int32 ``torch.mm`` and niti's AVX2 kernel."""
    import niti.kernels.matmul as matmul
    from niti.kernels import cpu_gemm

    if request.param == "avx2" and cpu_gemm.load() is None:
        pytest.skip("the AVX2 kernel cannot be built here (no AVX2 or no C compiler)")
    monkeypatch.setattr(matmul, "cpu_matmul_path", lambda: request.param)
    return request.param


def test_cpu_matmul_path_env_override(monkeypatch) -> None:
    import niti.kernels.matmul as matmul

    from niti.kernels import cpu_gemm

    for value in ("int_mm", "int32") + (("avx2",) if cpu_gemm.load() is not None else ()):
        monkeypatch.setenv(matmul.CPU_MATMUL_ENV, value)
        matmul.cpu_matmul_path.cache_clear()
        assert matmul.cpu_matmul_path() == value
    monkeypatch.setenv(matmul.CPU_MATMUL_ENV, "float")
    matmul.cpu_matmul_path.cache_clear()
    with pytest.raises(ValueError, match="int_mm, avx2 or int32"):
        matmul.cpu_matmul_path()
    monkeypatch.delenv(matmul.CPU_MATMUL_ENV)
    matmul.cpu_matmul_path.cache_clear()
    assert matmul.cpu_matmul_path() in ("int_mm", "avx2", "int32")


def test_every_c_source_builds_where_a_compiler_and_avx2_exist() -> None:
    """The C loops fall back to PyTorch silently at run time; here a source that no longer compiles fails loudly
    (otherwise every test that pins a C loop would skip)."""
    import shutil
    import subprocess

    from niti.kernels import cpu_gemm

    compiler = shutil.which("cc") or shutil.which("gcc")
    if not cpu_gemm.cpu_has_avx2() or not compiler:
        pytest.skip("no AVX2 or no C compiler: the C loops are not used here")
    sources = sorted(cpu_gemm.csrc("x").parent.glob("*.c"))
    assert len(sources) >= 7
    for source in sources:
        try:
            cpu_gemm._build(compiler, source)
        except subprocess.CalledProcessError as e:
            pytest.fail(f"{source.name} does not compile:\n{e.stderr.decode(errors='replace')}")
        assert cpu_gemm.load_library(source) is not None, source.name


def test_avx2_kernel_is_exact_for_any_shape_and_layout() -> None:
    """The C kernel against an int64 reference: odd K, K not a multiple of its blocks, M and N off its tile sizes,
    row- and column-major operands and row-strided slices, the full int8 range (-128 included)."""
    from hypothesis import given, settings, strategies as st

    from niti.kernels import cpu_gemm

    if cpu_gemm.load() is None:
        pytest.skip("the AVX2 kernel cannot be built here (no AVX2 or no C compiler)")

    @settings(max_examples=60, deadline=None)
    @given(st.integers(1, 70), st.integers(1, 700), st.integers(1, 70), st.booleans(), st.booleans(),
           st.integers(0, 2**31 - 1))
    def check(m: int, k: int, n: int, a_cols: bool, b_cols: bool, seed: int) -> None:
        a, b = _int8((m, k), seed, lo=-128), _int8((k, n), seed + 1, lo=-128)
        if a_cols:
            a = a.t().contiguous().t()
        if b_cols:
            b = b.t().contiguous().t()
        assert torch.equal(cpu_gemm.gemm(a, b).to(torch.int64), ref_matmul(a, b))

    check()
    # Long K across many K blocks, with worst-case magnitudes (the int32 lanes sum 2 · 128² per pair).
    k = 9_001
    a = torch.full((5, k), -128, dtype=torch.int8)
    b = torch.full((k, 17), -128, dtype=torch.int8)
    assert cpu_gemm.gemm(a, b).unique().tolist() == [k * 16384]
    sliced = _int8((50, 60), 9)[5:45, 10:30]
    assert torch.equal(cpu_gemm.gemm(_int8((3, 40), 8), sliced).to(torch.int64), ref_matmul(_int8((3, 40), 8), sliced))
    # Column-major A over more than one group of 16 row blocks (M = 150: 37 whole blocks and 2 rows), odd K across
    # K blocks, and the transposed weight-gradient shape (few rows, long K): the vector packing paths.
    for m, k, n in ((150, 1_001, 33), (16, 4_099, 48)):
        a_t = _int8((k, m), 10, lo=-128).t()
        b = _int8((k, n), 11, lo=-128)
        assert torch.equal(cpu_gemm.gemm(a_t, b).to(torch.int64), ref_matmul(a_t, b))


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 33, 5), (64, 300, 48), (17, 1000, 129)])
def test_int_matmul_exact_random(m: int, k: int, n: int, cpu_path: str) -> None:
    a, b = _int8((m, k), 1), _int8((k, n), 2)
    got = int_matmul(a, b)
    assert got.dtype == torch.int32
    assert torch.equal(got.to(torch.int64), ref_matmul(a, b))


def test_int_matmul_accepts_transposed_and_sliced_views() -> None:
    a_t = _int8((40, 30), 3).t()          # column-major (30, 40)
    b = _int8((50, 60), 4)[5:45, 10:30]   # row-major slice (40, 20) with row stride 60
    assert not a_t.is_contiguous() and not b.is_contiguous()
    assert torch.equal(int_matmul(a_t, b).to(torch.int64), ref_matmul(a_t, b))


def test_int_matmul_worst_case_below_split_stays_int32_and_exact(cpu_path: str) -> None:
    k = MAX_K_INT32  # 133,144 · 127² = 2,147,468,176 ≤ 2**31 - 1: no split needed
    assert k * 127 * 127 <= INT32_MAX < (k + 1) * 127 * 127
    s = _signs((k,), 5)
    a = torch.stack([s, -s])
    got = int_matmul(a, s.unsqueeze(1))
    assert got.dtype == torch.int32
    assert got.flatten().tolist() == [k * 16129, -k * 16129]


@pytest.mark.parametrize("k", [MAX_K_INT32 + 1, 140_000, 2 * MAX_K_INT32 + 7])
def test_int_matmul_splits_k_into_int64_where_int_mm_alone_wraps(k: int, cpu_path: str) -> None:
    # Rows: aligned signs (sum +k·127²), opposite signs (-k·127²), and random signs.
    s = _signs((k,), 6)
    a = torch.stack([s, -s, _signs((k,), 7)])
    b = torch.stack([s, _signs((k,), 8)], dim=1)  # (k, 2), column-major
    want = ref_matmul(a, b)
    assert int(want[0, 0]) == k * 16129 > INT32_MAX and int(want[1, 0]) == -k * 16129 < -INT32_MAX
    got = int_matmul(a, b)
    assert got.dtype == torch.int64
    assert torch.equal(got, want)
    # The same operands through torch._int_mm alone wrap silently: that is why the split exists.
    raw = torch._int_mm(a, b.contiguous())
    assert raw.dtype == torch.int32
    assert not torch.equal(raw.to(torch.int64), want)
    assert int(raw[0, 0]) == k * 16129 - 2**32  # exactly one wrap around 2**32


def test_int_matmul_shape_errors_and_empty() -> None:
    with pytest.raises(ValueError, match="inner dimensions"):
        int_matmul(_int8((3, 4), 0), _int8((5, 2), 0))
    out = int_matmul(torch.zeros((0, 4), dtype=torch.int8), _int8((4, 3), 0))
    assert out.shape == (0, 3)
    out = int_matmul(torch.zeros((2, 0), dtype=torch.int8), torch.zeros((0, 3), dtype=torch.int8))
    assert out.shape == (2, 3) and int(out.abs().sum()) == 0


def test_layout_guard_rejects_overlap_zero_stride_and_wrong_dtype() -> None:
    base = _int8((64,), 9)
    overlapping = base.as_strided((8, 8), (2, 1))     # rows overlap
    same_memory = base.as_strided((8, 8), (1, 1))     # every row/column shifted by one element
    broadcast = base[:8].expand(8, 8)                 # stride-0 rows
    broadcast_cols = base[:8].unsqueeze(1).expand(8, 8)  # stride-0 columns
    good = _int8((8, 8), 10)
    for bad in (overlapping, same_memory, broadcast, broadcast_cols):
        with pytest.raises(ValueError, match="layout"):
            check_int_mm_layout(bad, "a")
        with pytest.raises(ValueError, match="layout"):
            int_matmul(bad, good)
        with pytest.raises(ValueError, match="layout"):
            int_matmul(good, bad)
    with pytest.raises(ValueError, match="int8"):
        int_matmul(good.to(torch.int32), good)
    with pytest.raises(ValueError, match="2-D"):
        int_matmul(good.unsqueeze(0), good)
    # Plain layouts pass the guard.
    for ok in (good, good.t(), good[2:6], good[:, 1:5], _int8((1, 8), 11), _int8((8, 1), 12)):
        check_int_mm_layout(ok, "ok")


# --------------------------------------------------------------------------- convolution
CONV_CASES = [
    # (n, h, w, c_in, c_out, kernel, stride, padding)
    (2, 8, 8, 3, 4, (1, 1), (1, 1), (0, 0)),
    (2, 9, 7, 3, 5, (3, 3), (1, 1), (1, 1)),
    (1, 11, 10, 2, 3, (3, 3), (2, 2), (0, 0)),
    (2, 12, 12, 4, 2, (5, 5), (1, 1), (2, 2)),
    (1, 13, 11, 3, 4, (5, 5), (3, 3), (1, 1)),
    (2, 10, 9, 2, 3, (3, 5), (2, 1), (1, 2)),
    (1, 9, 12, 3, 2, (1, 3), (3, 2), (2, 0)),
    (1, 7, 7, 1, 6, (5, 3), (2, 3), (2, 1)),
    (3, 6, 6, 5, 16, (3, 3), (1, 1), (0, 0)),
]


@pytest.mark.parametrize("n,h,w,c_in,c_out,kernel,stride,padding", CONV_CASES)
def test_conv2d_forward_and_both_gradients_exact(n: int, h: int, w: int, c_in: int, c_out: int,
                                                 kernel: tuple[int, int], stride: tuple[int, int],
                                                 padding: tuple[int, int]) -> None:
    x = _int8((n, h, w, c_in), 20)
    wt = _int8((c_out, *kernel, c_in), 21)
    out, cols = conv2d(x, wt, stride, padding)
    want = ref_conv(x, wt, stride, padding)
    assert out.dtype == torch.int32 and out.shape == want.shape
    assert torch.equal(out.to(torch.int64), want)

    err = _int8(tuple(want.shape), 22)
    gi = conv2d_grad_input(err, wt, (h, w), stride, padding)
    want_gi = ref_conv_grad_input(err, wt, (h, w), stride, padding)
    assert gi.shape == x.shape
    assert torch.equal(gi.to(torch.int64), want_gi)

    gw = conv2d_grad_weight(err, cols, kernel)
    assert gw.shape == wt.shape
    assert torch.equal(gw.to(torch.int64), ref_conv_grad_weight(err, x, kernel, stride, padding))


def test_conv_reference_is_the_adjoint_pair() -> None:
    # <conv(x), err> == <x, conv_grad_input(err)>: guards the references themselves.
    x, wt = _int8((2, 9, 8, 3), 30), _int8((4, 3, 5, 3), 31)
    y = ref_conv(x, wt, (2, 1), (1, 2))
    err = _int8(tuple(y.shape), 32).to(torch.int64)
    dx = ref_conv_grad_input(err, wt, (9, 8), (2, 1), (1, 2))
    assert int((y * err).sum()) == int((x.to(torch.int64) * dx).sum())
    # and <conv(x), err> == <W, grad_weight(err, x)>
    dw = ref_conv_grad_weight(err, x, (3, 5), (2, 1), (1, 2))
    assert int((y * err).sum()) == int((wt.to(torch.int64) * dw).sum())


def test_im2col_layout() -> None:
    x = _int8((1, 4, 5, 2), 33)
    cols = im2col(x, (2, 3), (1, 2), (0, 1))
    # row (n, ho, wo), column (i, j, c): row 1 is output (0, 1), which starts at padded column 2 (= input column 1).
    assert cols.shape == (3 * 3, 2 * 3 * 2)
    assert cols[1].tolist() == x[0, 0:2, 1:4, :].reshape(-1).tolist()
    with pytest.raises(ValueError, match="larger than padded input"):
        im2col(x, (7, 1), (1, 1), (1, 0))


def test_conv_adversarial_inputs_exact() -> None:
    # ±127 everywhere: every term is ±16129, the largest any int8 product can be.
    x, wt = _signs((2, 8, 8, 16), 40), _signs((8, 5, 5, 16), 41)
    out, cols = conv2d(x, wt, (1, 1), (2, 2))
    assert torch.equal(out.to(torch.int64), ref_conv(x, wt, (1, 1), (2, 2)))
    err = _signs(tuple(out.shape), 42)
    assert torch.equal(conv2d_grad_input(err, wt, (8, 8), (1, 1), (2, 2)).to(torch.int64),
                       ref_conv_grad_input(err, wt, (8, 8), (1, 1), (2, 2)))
    assert torch.equal(conv2d_grad_weight(err, cols, (5, 5)).to(torch.int64),
                       ref_conv_grad_weight(err, x, (5, 5), (1, 1), (2, 2)))


def test_conv_grad_weight_splits_k_for_large_batches() -> None:
    # K = N·Ho·Wo = 34·64·64 = 139,264 > 133,144: the early-layer weight gradient at large batch (numerics.md §1).
    n, h = 34, 64
    assert n * h * h > MAX_K_INT32
    x = torch.full((n, h, h, 1), 127, dtype=torch.int8)
    x[0, 0, 0, 0] = -127
    wt = torch.ones((2, 1, 1, 1), dtype=torch.int8)
    out, cols = conv2d(x, wt, (1, 1), (0, 0))
    err = torch.full(tuple(out.shape), 127, dtype=torch.int8)
    err[..., 1] = -127
    gw = conv2d_grad_weight(err, cols, (1, 1))
    assert gw.dtype == torch.int64
    total = (n * h * h - 2) * 16129
    assert gw.flatten().tolist() == [total, -total]
    assert total > INT32_MAX


# --------------------------------------------------------------------------- max pooling
def ref_maxpool(x: torch.Tensor, k: int) -> tuple[list, list]:
    """Python loops: the max of each window and the row-major position of its FIRST occurrence."""
    n, h, w, c = x.shape
    out, idx = [], []
    xl = x.tolist()
    for b in range(n):
        for oh in range(h // k):
            for ow in range(w // k):
                for ch in range(c):
                    window = [xl[b][oh * k + i][ow * k + j][ch] for i in range(k) for j in range(k)]
                    best = max(window)
                    out.append(best)
                    idx.append(window.index(best))
    return out, idx


@pytest.mark.parametrize("shape,k,lo,hi", [((2, 6, 6, 3), 2, -1, 1), ((1, 7, 5, 2), 2, 0, 1),
                                           ((2, 9, 9, 2), 3, -2, 2), ((1, 8, 8, 4), 2, -127, 127)])
def test_maxpool_first_max_routing_with_ties(shape: tuple[int, ...], k: int, lo: int, hi: int) -> None:
    x = _int8(shape, 50, lo, hi)  # tiny value ranges: most windows hold ties
    out, index = maxpool2d(x, k)
    want_out, want_idx = ref_maxpool(x, k)
    assert out.dtype == torch.int8
    assert out.flatten().tolist() == want_out
    assert index.flatten().tolist() == want_idx

    err = _int8(tuple(out.shape), 51, 1, 127)  # nonzero so routing is visible
    back = maxpool2d_backward(err, index, k, x.shape)
    assert back.shape == x.shape and back.dtype == err.dtype
    want = torch.zeros(shape, dtype=torch.int8)
    n, h, w, c = shape
    flat_err = err.flatten().tolist()
    pos = 0
    for b in range(n):
        for oh in range(h // k):
            for ow in range(w // k):
                for ch in range(c):
                    i, j = divmod(want_idx[pos], k)
                    want[b, oh * k + i, ow * k + j, ch] = flat_err[pos]
                    pos += 1
    assert torch.equal(back, want)


def test_maxpool_all_equal_window_routes_to_top_left() -> None:
    x = torch.full((1, 2, 2, 1), 5, dtype=torch.int8)
    out, index = maxpool2d(x, 2)
    back = maxpool2d_backward(torch.tensor([[[[9]]]], dtype=torch.int8), index, 2, x.shape)
    assert out.item() == 5 and index.item() == 0
    assert back.flatten().tolist() == [9, 0, 0, 0]
    # A tie between positions 1 and 3 routes to 1 (row-major first), not to 3.
    x = torch.tensor([[[[1], [7]], [[2], [7]]]], dtype=torch.int8)
    _, index = maxpool2d(x, 2)
    back = maxpool2d_backward(torch.tensor([[[[9]]]], dtype=torch.int8), index, 2, x.shape)
    assert back.flatten().tolist() == [0, 9, 0, 0]


def test_int_matmul_copies_views_that_int_mm_misreads() -> None:
    # A (1, K) view with strides (1, 1) counts as contiguous in PyTorch, but _int_mm reads it wrongly.
    a = torch.ones(1, 40_000, dtype=torch.int8).reshape(-1, 1).t()
    assert a.stride() == (1, 1)
    b = torch.ones(40_000, 1, dtype=torch.int8)
    assert int_matmul(a, b).tolist() == [[40_000]]


# ----------------------------------------------------------------------------- the C rounding pass
_ROUND_CASES = [(n, shift, target, mode) for n in (1, 1000, (1 << 16) + 5) for target in (1, 7)
                for shift in (0, 1, 2, 13, 31 - target) for mode in ("nearest", "pseudo_stochastic", "truncate")]


@contextlib.contextmanager
def _round_build(avx512: bool) -> Iterator[None]:
    """The C rounding loops on their AVX-512 build (where the CPU has it) or on AVX2 (csrc/isa.h)."""
    from niti.kernels import cpu_round

    cpu_round.set_avx512(avx512)
    try:
        yield
    finally:
        cpu_round.set_avx512(True)


@pytest.mark.parametrize("avx512", [True, False], ids=["avx512", "avx2"])
@pytest.mark.parametrize("n,shift,target,mode", _ROUND_CASES)
def test_c_round_clip_equals_round_shift(n: int, shift: int, target: int, mode: str, avx512: bool) -> None:
    """int32 → int8 as ``numerics.round_shift`` then the clip, bit for bit, across the one-thread threshold, at
    shifts 0 and 31 - target, with |x| up to 2**31 - 1 (the bit width the caller guarantees) and ties; in both
    builds of the loop."""
    from niti.kernels import cpu_round
    from niti.numerics import round_shift

    if not cpu_round.applies(torch.zeros(1, dtype=torch.int32), shift, mode, target, torch.int8):
        pytest.skip("the C rounding pass is not built here")
    with _round_build(avx512):
        _check_round_clip(n, shift, target, mode, round_shift)


def _check_round_clip(n: int, shift: int, target: int, mode: str, round_shift) -> None:  # noqa: ANN001
    from niti.kernels import cpu_round

    g = torch.Generator().manual_seed(n + shift)
    top = min(1 << (shift + target), (1 << 31) - 1)
    x = torch.randint(-top, top + 1, (n,), generator=g, dtype=torch.int64)
    x[: min(n, 4)] = torch.tensor([top, -top, 3 << max(shift - 1, 0), -(3 << max(shift - 1, 0))])[: min(n, 4)]
    x = x.clamp(-(2**31) + 1, 2**31 - 1).to(torch.int32)
    limit = (1 << target) - 1
    want = round_shift(x, shift, mode).clamp(-limit, limit).to(torch.int8)
    assert torch.equal(cpu_round.round_clip(x, shift, mode, target), want)
    assert torch.equal(fused.round_clip(x.reshape(-1, 1), shift, mode, target, torch.int8).reshape(-1), want)


def _round_python(v: int, shift: int, mode: str, limit: int) -> int:
    a = abs(v)
    q = a >> shift
    if shift and mode == "nearest":
        q += (a >> (shift - 1)) & 1
    elif shift and mode == "pseudo_stochastic":
        low, h = a % (1 << shift), shift // 2
        q += (low >> h) > ((low % (1 << h)) << (shift % 2))
    return (-1 if v < 0 else 1) * min(q, limit)


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.integers(-(2**31) + 1, 2**31 - 1), min_size=1, max_size=40), target=st.integers(1, 7),
       data=st.data(), mode=st.sampled_from(["nearest", "pseudo_stochastic", "truncate"]))
def test_c_round_clip_equals_pure_python(values: list[int], target: int, data, mode: str) -> None:  # noqa: ANN001
    from niti.kernels import cpu_round

    shift = data.draw(st.integers(0, 31 - target))
    x = torch.tensor(values, dtype=torch.int32)
    if not cpu_round.applies(x, shift, mode, target, torch.int8):
        pytest.skip("the C rounding pass is not built here")
    limit = (1 << target) - 1
    assert cpu_round.round_clip(x, shift, mode, target).tolist() == [_round_python(v, shift, mode, limit)
                                                                     for v in values]


def test_c_round_clip_takes_only_what_it_can_do_exactly() -> None:
    from niti.kernels import cpu_round

    x = torch.zeros(8, dtype=torch.int32)
    assert not cpu_round.applies(x, 25, "nearest", 7, torch.int8)  # width 32: -2**31 could be present
    assert not cpu_round.applies(x, 3, "stochastic", 7, torch.int8)  # random draws: round_clip_stochastic
    assert not cpu_round.applies_stochastic(x, 25, 7, torch.int8) and not cpu_round.applies_stochastic(x, 0, 7,
                                                                                                       torch.int8)
    assert not cpu_round.applies(x.to(torch.int64), 3, "nearest", 7, torch.int8)
    assert not cpu_round.applies(x, 3, "nearest", 15, torch.int16)
    with pytest.raises(ValueError, match="shift"):
        cpu_round.round_clip(x, 30, "nearest", 7)


@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.integers(-(2**31) + 1, 2**31 - 1), min_size=1, max_size=40), target=st.integers(1, 7),
       data=st.data(), start=st.integers(0, 2**32 - 64), seed=st.integers(0, 2**64 - 1), draw=st.integers(0, 2**40),
       avx512=st.booleans())
def test_c_stochastic_round_clip_hashes_the_words_it_rounds_with(values: list[int], target: int, data,  # noqa: ANN001
                                                                 start: int, seed: int, draw: int,
                                                                 avx512: bool) -> None:
    """Element i rounds up when the low ``shift`` bits of word ``start + i`` (``counter_bits.word_reference``)
    are below its discarded bits: pure Python against the C loop that hashes inside the rounding (either build)."""
    from niti import counter_bits
    from niti.kernels import cpu_round

    shift = data.draw(st.integers(1, 31 - target))
    x = torch.tensor(values, dtype=torch.int32)
    if not cpu_round.applies_stochastic(x, shift, target, torch.int8):
        pytest.skip("the C rounding pass is not built here")
    k1, k2 = counter_bits.draw_keys(seed, "rounding", draw)
    limit, want = (1 << target) - 1, []
    for i, v in enumerate(values):
        a, u = abs(v), counter_bits.word_reference(seed, "rounding", draw, start + i) % (1 << shift)
        q = (a >> shift) + (u < a % (1 << shift))
        want.append((-1 if v < 0 else 1) * min(q, limit))
    with _round_build(avx512):
        assert cpu_round.round_clip_stochastic(x, shift, target, start, k1, k2).tolist() == want


@pytest.mark.parametrize("world_size", [1, 2])
def test_runtime_stochastic_rescale_on_the_c_pass_equals_the_noise_path(world_size: int) -> None:
    """``Runtime.rescale`` with stochastic rounding takes the C pass on the CPU: the same bits, shift and draw
    count as drawing the noise tensor and rounding with it, on every rank's slice, at any shift (0 included)."""
    from niti.kernels import cpu_round
    from niti.numerics import RoundingPolicy
    from niti.runtime import Runtime

    if not cpu_round.applies_stochastic(torch.zeros(1, dtype=torch.int32), 3, 7, torch.int8):
        pytest.skip("the C rounding pass is not built here")
    g = torch.Generator().manual_seed(11)
    for rank in range(world_size):
        fast, slow = (Runtime(RoundingPolicy(), seed=7, rank=rank, world_size=world_size) for _ in range(2))
        for top in (2**20, 100, 2**30, 2**9, 2**31):  # 2**31: -2**31 present, a width of 32 bits (the chain)
            t = torch.randint(-top, top, (4, 3, 5, 70000 // 60), generator=g, dtype=torch.int32)
            if top == 2**31:
                t[0, 0, 0, 0] = -(2**31)
            out, shift = fast.rescale(t, 7, "error")
            mode, want_shift, noise = slow.rounding(t, 7, "error")
            assert shift == want_shift and (shift > 0) == (top > 127)
            assert torch.equal(out, fused.round_clip(t, shift, mode, 7, torch.int8, noise))
        assert fast.draws == slow.draws


# ----------------------------------------------------------------------------- the C im2col
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 20), kh=st.integers(1, 4),
       kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 3), pw=st.integers(0, 3))
def test_c_im2col_equals_the_strided_copy(n: int, h: int, w: int, c: int, kh: int, kw: int, sh: int, sw: int,
                                         ph: int, pw: int) -> None:
    """Every shape, stride and padding (window rows wholly inside, partly outside, wholly in the padding)."""
    from niti.kernels import cpu_im2col
    from niti.kernels.workspace import Workspace

    if h + 2 * ph < kh or w + 2 * pw < kw:
        return
    x = torch.randint(-128, 128, (n, h, w, c), dtype=torch.int8, generator=torch.Generator().manual_seed(h * w + c))
    if not cpu_im2col.applies(x, (ph, pw)):
        pytest.skip("the C im2col is not built here")
    want = im2col(x, (kh, kw), (sh, sw), (ph, pw))  # the PyTorch path (no workspace)
    got = im2col(x, (kh, kw), (sh, sw), (ph, pw), workspace=Workspace())
    assert torch.equal(got, want)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 40), c=st.integers(1, 5), kh=st.integers(1, 5),
       kw=st.integers(1, 5), sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 3), pw=st.integers(0, 3))
def test_c_im2col_t_equals_the_tap_copies(n: int, h: int, w: int, c: int, kh: int, kw: int, sh: int, sw: int,
                                          ph: int, pw: int) -> None:
    """The transposed columns (first layers): the C loop equals PyTorch's per-tap copies of the padded input, for
    every shape, stride and padding, output rows of 1-40 bytes (the inlined short copies and memcpy)."""
    from niti.kernels import conv, cpu_im2col

    if h + 2 * ph < kh or w + 2 * pw < kw:
        return
    x = torch.randint(-128, 128, (n, h, w, c), dtype=torch.int8, generator=torch.Generator().manual_seed(h * w + c))
    if not cpu_im2col.applies(x, (ph, pw)):
        pytest.skip("the C im2col is not built here")
    assert torch.equal(conv.im2col_t(x, (kh, kw), (sh, sw), (ph, pw)),
                       conv._im2col_t_torch(x, (kh, kw), (sh, sw), (ph, pw)))


def test_c_im2col_refuses_a_wrong_output() -> None:
    from niti.kernels import cpu_im2col

    x = torch.zeros(1, 4, 4, 1, dtype=torch.int8)
    if not cpu_im2col.applies(x, (0, 0)):
        pytest.skip("the C im2col is not built here")
    with pytest.raises(ValueError, match=r"cols must be contiguous int8 \(4, 9\)"):
        cpu_im2col.im2col_into(x, (3, 3), (1, 1), (0, 0), (2, 2), torch.zeros(9, 4, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"cols_t must be contiguous int8 \(9, 4\)"):
        cpu_im2col.im2col_t_into(x, (3, 3), (1, 1), (0, 0), (2, 2), torch.zeros(4, 9, dtype=torch.int8))


# ----------------------------------------------------------------------------- the C aligned pair sum
@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 70000), ea=st.integers(-40, 10), gap=st.integers(-25, 25))
def test_c_aligned_pair_equals_aligned_sum(n: int, ea: int, gap: int) -> None:
    """Exponent gaps up to 22 either way (the sum exact at the smaller exponent), sizes across the one-thread
    threshold, -128 included; beyond 22 the C path declines and aligned_sum decides."""
    from niti.kernels import cpu_add
    from niti.numerics import aligned_sum

    g = torch.Generator().manual_seed(n)
    a = torch.randint(-128, 128, (n,), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (n,), generator=g, dtype=torch.int8)
    a[0], b[-1] = -128, -128
    made = cpu_add.pair(a, ea, b, ea + gap)
    if abs(gap) > cpu_add.MAX_GAP or cpu_add._lib() is None:
        assert made is None
        return
    assert made is not None
    got, e = made[0].total(), made[1]
    want = aligned_sum([(a, ea, 7), (b, ea + gap, 7)])
    assert e == want[1] and got.dtype == want[0].dtype and torch.equal(got, want[0])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 70000), gap=st.integers(-22, 22), mode=st.sampled_from(["nearest", "pseudo_stochastic",
                                                                                   "truncate", "stochastic"]),
       drop=st.integers(-3, 3), small=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_c_aligned_pair_rescale_equals_the_formed_sums(n: int, gap: int, mode: str, drop: int, small: bool,
                                                       seed: int) -> None:
    """The sum's bit width and its int8 rounding from the two int8 terms (no int32 tensor) equal the C passes over
    the formed sum, for every mode (stochastic: the same counter words), shifts around the one that fits (0 clips
    only, smaller ones saturate), sizes across the one-thread threshold, -128 and small values included."""
    from niti.counter_bits import DrawKeys
    from niti.kernels import cpu_add, cpu_round

    g = torch.Generator().manual_seed(seed)
    hi = 4 if small else 128
    a = torch.randint(-hi, hi, (n,), generator=g, dtype=torch.int8)
    b = torch.randint(-hi, hi, (n,), generator=g, dtype=torch.int8)
    a[0] = -128
    made = cpu_add.pair(a, 0, b, gap)
    if made is None:
        pytest.skip("the C aligned sum is not built here")
    p, _ = made
    total = p.total()
    width = cpu_add.pair_max_abs(p).bit_length()
    assert cpu_add.pair_max_abs(p) == int(total.abs().max())
    shift = max(0, min(24, width - 7 + drop))
    keys = DrawKeys.of(seed, "rounding", 3, 17)
    got = cpu_add.pair_round_clip(p, shift, mode, 7, keys)
    if mode == "stochastic" and shift:
        want = cpu_round.round_clip_stochastic(total, shift, 7, keys.start, keys.k1, keys.k2)
    else:
        want = cpu_round.round_clip(total, shift, "nearest" if mode == "stochastic" else mode, 7)
    assert got.dtype == torch.int8 and torch.equal(got, want)
