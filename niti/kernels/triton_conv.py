"""Exact int8 NHWC convolution as a Triton implicit GEMM (docs/numerics.md §1, CUDA backend).

The same product as ``conv.conv2d`` — rows ``(n, ho, wo)``, reduction
``(i, j, c)`` against weights ``(C_out, kh, kw, C_in)`` — but each program
gathers its input tile straight from the NHWC activation (zero outside the
image), so no im2col buffer is ever written.  ``tl.dot`` multiplies int8 by
int8 into an int32 accumulator.  On tensor cores an out-of-range int32 sum
saturates rather than wraps (docs/numerics.md §1): silently wrong either way, so the
host code only launches where every partial sum provably fits:
``K · 127² ≤ 2**31 - 1`` for the forward (``supports``), and at most
``MAX_ROWS_PER_SPLIT`` reduction rows per program for the weight gradient,
whose int32 partials are then added in int64.

The weight gradient ``errᵀ · cols`` is an implicit GEMM too (``ImplicitColumns``
keeps the input instead of its columns), so the Triton path never
materialises ``cols`` in training either.

With ``TRITON_INTERPRET=1`` set before this module is imported, the kernels
run on CPU tensors in Triton's interpreter (the tests use that).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["INTERPRETED", "MAX_ROWS_PER_SPLIT", "ImplicitColumns", "WgradPlan", "conv2d", "conv2d_grad_weight",
           "conv2d_nhwc", "supports", "wgrad_plan"]

_INT32_MAX = 2**31 - 1
#: Largest reduction length whose worst case (±127 · ±127 per term) fits int32.
_MAX_K_INT32 = _INT32_MAX // (127 * 127)
#: Reduction rows per weight-gradient program: 65536 · 128² = 2**30, safe even for -128 operands.
MAX_ROWS_PER_SPLIT = 65536


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


#: Whether the kernels below were built for Triton's CPU interpreter (decided at import, as Triton does).
INTERPRETED = _interpret_requested()


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, out_ptr, M, H, W, HO, WO, COUT, SH, SW, PH, PW,
                     C: tl.constexpr, K: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                     TAPS: tl.constexpr, CB: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """out[m, co] = Σ_(i,j,c) x[n, ho·SH-PH+i, wo·SW-PW+j, c] · w[co, i, j, c], m = (n, ho, wo)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    m_ok = rm < M
    n_ok = rn < COUT
    img = rm // (HO * WO)
    rem = rm % (HO * WO)
    h0 = (rem // WO) * SH - PH
    w0 = (rem % WO) * SW - PW
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    if TAPS:
        # Wide channels: (tap, channel block) pairs in one flat loop (one long pipelined loop on the GPU);
        # each step loads contiguous channels of one (i, j) tap.  CB = ceil(C / BK), from the host.
        for step in range(KH * KW * CB):
            t = step // CB
            rc = (step % CB) * BK + tl.arange(0, BK)
            c_ok = rc < C
            h = h0 + t // KW
            w = w0 + t % KW
            ok = m_ok & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            base = ((img * H + h) * W + w) * C
            a = tl.load(x_ptr + base[:, None] + rc[None, :], mask=ok[:, None] & c_ok[None, :], other=0)
            b = tl.load(w_ptr + rn[None, :] * K + (t * C + rc)[:, None], mask=c_ok[:, None] & n_ok[None, :],
                        other=0)
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    else:
        # Narrow channels (the first layer): decode the flat reduction index (i, j, c).
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            k_ok = rk < K
            c = rk % C
            h = h0[:, None] + (rk // (KW * C))[None, :]
            w = w0[:, None] + ((rk // C) % KW)[None, :]
            ok = m_ok[:, None] & k_ok[None, :] & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            a = tl.load(x_ptr + ((img[:, None] * H + h) * W + w) * C + c[None, :], mask=ok, other=0)
            b = tl.load(w_ptr + rn[None, :] * K + rk[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0)
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    tl.store(out_ptr + rm[:, None] * COUT + rn[None, :], acc, mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _conv_wgrad_kernel(e_ptr, x_ptr, out_ptr, R, H, W, C, HO, WO, COUT, K, SH, SW, PH, PW,
                       KW: tl.constexpr, ITERS: tl.constexpr, BCO: tl.constexpr, BKK: tl.constexpr,
                       BR: tl.constexpr):
    """out[s, co, k] = Σ_(r in split s) err[r, co] · x_col[r, k]: int32 partials of errᵀ · cols."""
    pid_co = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_s = tl.program_id(2)
    rco = pid_co * BCO + tl.arange(0, BCO)
    rk = pid_k * BKK + tl.arange(0, BKK)
    co_ok = rco < COUT
    k_ok = rk < K
    ki = rk // (KW * C)
    kj = (rk // C) % KW
    kc = rk % C
    acc = tl.zeros((BCO, BKK), dtype=tl.int32)
    for it in range(ITERS):
        rr = (pid_s * ITERS + it) * BR + tl.arange(0, BR)
        r_ok = rr < R
        img = rr // (HO * WO)
        rem = rr % (HO * WO)
        h = ((rem // WO) * SH - PH)[:, None] + ki[None, :]
        w = ((rem % WO) * SW - PW)[:, None] + kj[None, :]
        ok = r_ok[:, None] & k_ok[None, :] & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        xb = tl.load(x_ptr + ((img[:, None] * H + h) * W + w) * C + kc[None, :], mask=ok, other=0)
        eb = tl.load(e_ptr + rr[None, :] * COUT + rco[:, None], mask=co_ok[:, None] & r_ok[None, :], other=0)
        acc = tl.dot(eb, xb, acc, out_dtype=tl.int32)
    tl.store(out_ptr + pid_s * COUT * K + rco[:, None] * K + rk[None, :], acc,
             mask=co_ok[:, None] & k_ok[None, :])


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _block(n: int, lo: int, hi: int) -> int:
    """The power of two ≥ n clamped to [lo, hi] (tl.dot needs every tile side ≥ 16)."""
    return max(lo, min(hi, triton.next_power_of_2(max(1, n))))


def supports(x: Tensor, weight: Tensor, stride: tuple[int, int], padding: tuple[int, int]) -> bool:
    """True where the Triton kernels give the exact result of ``conv.conv2d`` for these operands."""
    if x.dtype != torch.int8 or weight.dtype != torch.int8 or x.dim() != 4 or weight.dim() != 4:
        return False
    if x.device != weight.device or (x.device.type != "cuda" and not INTERPRETED):
        return False
    n, h, w, c = x.shape
    c_out, kh, kw, c_in = weight.shape
    if c != c_in or min(stride) < 1 or min(padding) < 0 or 0 in (n, h, w, c, c_out, kh, kw):
        return False
    ho, wo = _out_size(h, kh, stride[0], padding[0]), _out_size(w, kw, stride[1], padding[1])
    if ho <= 0 or wo <= 0:
        return False
    # int32 accumulator never saturates; int32 element offsets never overflow.
    return kh * kw * c <= _MAX_K_INT32 and max(x.numel(), n * ho * wo * c_out, weight.numel()) < _INT32_MAX


def _launch_options() -> dict:
    return {} if INTERPRETED else {"num_warps": 8, "num_stages": 3}


def conv2d_nhwc(x: Tensor, weight: Tensor, stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """The int32 NHWC output ``(N, Ho, Wo, C_out)`` of the implicit-GEMM convolution."""
    if not supports(x, weight, stride, padding):
        raise ValueError(f"Triton conv does not support x {tuple(x.shape)} {x.dtype} on {x.device}, weight "
                         f"{tuple(weight.shape)} {weight.dtype}, stride {stride}, padding {padding}")
    x = x.contiguous()
    n, h, w, c = x.shape
    c_out, kh, kw, _ = weight.shape
    ho, wo = _out_size(h, kh, stride[0], padding[0]), _out_size(w, kw, stride[1], padding[1])
    w2 = weight.reshape(c_out, -1).contiguous()
    k = w2.shape[1]
    m = n * ho * wo
    out = torch.empty((m, c_out), dtype=torch.int32, device=x.device)
    taps = c >= 32
    bk = (64 if c >= 64 else 32) if taps else 32
    bm, bn = 128, _block(c_out, 32, 128)
    grid = (triton.cdiv(m, bm), triton.cdiv(c_out, bn))
    _conv_fwd_kernel[grid](x, w2, out, m, h, w, ho, wo, c_out, stride[0], stride[1], padding[0], padding[1],
                           C=c, K=k, KH=kh, KW=kw, TAPS=taps, CB=triton.cdiv(c, bk), BM=bm, BN=bn, BK=bk,
                           **_launch_options())
    return out.view(n, ho, wo, c_out)


@dataclass(frozen=True)
class WgradPlan:
    """Tiles of the weight-gradient kernel: output blocks, row block, rows per split and the split count."""

    block_co: int
    block_k: int
    block_r: int
    rows_per_split: int
    splits: int

    def __iter__(self):  # noqa: ANN204 - unpacking convenience
        return iter((self.block_co, self.block_k, self.block_r, self.rows_per_split, self.splits))


def wgrad_plan(r: int, c_out: int, k: int) -> WgradPlan:
    """How ``conv2d_grad_weight`` tiles an ``(r rows) × (c_out, k)`` reduction.

    The reduction is split for parallelism (first layers have few output
    tiles) and so that no int32 partial can overflow (≤ ``MAX_ROWS_PER_SPLIT``
    rows each).  Rows per split are a power of two: a compile-time trip count
    with few distinct values, hence few recompiles.  The interpreter's cost is
    per loop step, not per element, so it takes longer row blocks.
    """
    bco, bkk, br = _block(c_out, 32, 128), _block(k, 32, 64), (512 if INTERPRETED else 64)
    tiles = triton.cdiv(c_out, bco) * triton.cdiv(k, bkk)
    target = 4 if INTERPRETED else 264  # programs: about two waves on a 132-SM H100/H200
    rows = _block(triton.cdiv(r, triton.cdiv(target, tiles)), br, MAX_ROWS_PER_SPLIT)
    return WgradPlan(bco, bkk, br, rows, triton.cdiv(r, rows))


def conv2d_grad_weight(err: Tensor, x: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                       padding: tuple[int, int]) -> Tensor:
    """``errᵀ · im2col(x)`` as ``(C_out, kh, kw, C_in)``: int32, or int64 past ``MAX_K_INT32`` rows.

    The dtype rule is ``int_matmul``'s, so the result equals ``conv.conv2d_grad_weight`` bit for bit.
    """
    x = x.contiguous()
    n, h, w, c = x.shape
    kh, kw = kernel
    ho, wo = _out_size(h, kh, stride[0], padding[0]), _out_size(w, kw, stride[1], padding[1])
    c_out = err.shape[-1]
    if tuple(err.shape) != (n, ho, wo, c_out) or err.dtype != torch.int8 or x.dtype != torch.int8:
        raise ValueError(f"error must be int8 {(n, ho, wo, c_out)} for int8 input {tuple(x.shape)}, "
                         f"got {err.dtype} {tuple(err.shape)} and {x.dtype} input")
    if max(x.numel(), err.numel()) >= _INT32_MAX:
        raise ValueError(f"tensors too large for int32 element offsets: input {tuple(x.shape)}, error "
                         f"{tuple(err.shape)}")
    e = err.contiguous()
    k = kh * kw * c
    r = n * ho * wo
    bco, bkk, br, rows, splits = wgrad_plan(r, c_out, k)
    if splits * c_out * k >= _INT32_MAX:
        raise ValueError(f"weight-gradient partials too large for int32 offsets: {splits} × {c_out} × {k}")
    part = torch.empty((splits, c_out, k), dtype=torch.int32, device=x.device)
    grid = (triton.cdiv(c_out, bco), triton.cdiv(k, bkk), splits)
    _conv_wgrad_kernel[grid](e, x, part, r, h, w, c, ho, wo, c_out, k, stride[0], stride[1], padding[0], padding[1],
                             KW=kw, ITERS=rows // br, BCO=bco, BKK=bkk, BR=br, **_launch_options())
    if splits == 1:
        g = part[0]
    else:
        g = part.sum(dim=0, dtype=torch.int64)
        if r <= _MAX_K_INT32:  # |g| ≤ r · 127² fits int32: the dtype int_matmul returns
            g = g.to(torch.int32)
    return g.view(c_out, kh, kw, c)


@dataclass(frozen=True)
class ImplicitColumns:
    """Stands in for the im2col columns on the Triton path: the input and the geometry that define them."""

    x: Tensor
    stride: tuple[int, int]
    padding: tuple[int, int]

    def grad_weight(self, err: Tensor, kernel: tuple[int, int]) -> Tensor:
        return conv2d_grad_weight(err, self.x, kernel, self.stride, self.padding)


def conv2d(x: Tensor, weight: Tensor, stride: tuple[int, int],
           padding: tuple[int, int]) -> tuple[Tensor, ImplicitColumns]:
    """``conv.conv2d``'s contract on the Triton path: (int32 NHWC output, columns stand-in for grad-weight)."""
    x = x.contiguous()
    return conv2d_nhwc(x, weight, stride, padding), ImplicitColumns(x, tuple(stride), tuple(padding))
