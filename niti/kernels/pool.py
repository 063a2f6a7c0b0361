"""Integer max pooling on NHWC tensors with first-maximum routing (docs/numerics.md §4).

On the CPU every pool runs as C loops (``csrc/maxpool_strided.c``, built like
the AVX2 GEMM): overlapping (strided, padded) windows, as ResNet's stem pool,
and non-overlapping ones (stride k).  Elsewhere, where the loops cannot be
built, and under ``niti.audit.integer_only()``, non-overlapping windows run the
fused chain ``kernels.fused.maxpool`` / ``maxpool_backward`` (its eager twin, or
compiled) and overlapping ones a PyTorch loop over the window's taps: the same
bits.
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from . import fused
from .cpu_gemm import INT, LONG, PTR, bind_library, csrc

__all__ = ["avgpool2d_backward", "avgpool2d_sum", "maxpool2d", "maxpool2d_backward", "maxpool2d_strided",
           "maxpool2d_strided_backward"]


def maxpool2d(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping k×k max pool of NHWC ``x``: (output, index of the first max in each window).

    The index counts row-major within the window (int8, or int32 for k·k ≥ 128); trailing
    rows/columns that fill no whole window are dropped.
    """
    n, h, w, c = x.shape
    ho, wo = h // k, w // k
    if fused.c_loops_allowed() and (lib := _c_pool(k, x)) is not None:  # the strided loop with stride k
        x = x.contiguous()
        out, index = (torch.empty((n, ho, wo, c), dtype=torch.int8) for _ in range(2))
        lib.niti_maxpool_strided(x.data_ptr(), n, h, w, c, k, k, 0, ho, wo, out.data_ptr(), index.data_ptr(),
                                 torch.get_num_threads())
        return out, index
    return fused.maxpool(x[:, :ho * k, :wo * k], k)


def maxpool2d_backward(err: Tensor, index: Tensor, k: int, input_shape: torch.Size) -> Tensor:
    """Route each error to its window's first maximum; zero elsewhere (and in cropped rows/cols)."""
    n, h, w, c = input_shape
    ho, wo = err.shape[1], err.shape[2]
    if fused.c_loops_allowed() and (lib := _c_pool(k, err, index)) is not None:
        err, index = err.contiguous(), index.contiguous()
        out = torch.empty((n, h, w, c), dtype=torch.int8)
        lib.niti_maxpool_route_i8(err.data_ptr(), index.data_ptr(), n, h, w, c, k, ho, wo, out.data_ptr(),
                                  torch.get_num_threads())
        return out
    routed = fused.maxpool_backward(err, index, k)
    if ho * k == h and wo * k == w:
        return routed
    out = err.new_zeros((n, h, w, c))
    out[:, :ho * k, :wo * k] = routed
    return out


def avgpool2d_sum(x: Tensor, kernel: tuple[int, int]) -> Tensor:
    """Int32 sums of non-overlapping ``kh×kw`` windows of NHWC ``x`` (trailing rows/columns dropped)."""
    n, h, w, c = x.shape
    kh, kw = kernel
    ho, wo = h // kh, w // kw
    windows = x[:, :ho * kh, :wo * kw].reshape(n, ho, kh, wo, kw, c)
    return windows.sum(dim=(2, 4), dtype=torch.int32)


def avgpool2d_backward(err: Tensor, kernel: tuple[int, int], input_shape: torch.Size) -> Tensor:
    """Every input position of a window receives that window's error (zero in cropped rows/columns)."""
    n, h, w, c = input_shape
    kh, kw = kernel
    ho, wo = err.shape[1], err.shape[2]
    spread = err.repeat_interleave(kh, dim=1).repeat_interleave(kw, dim=2)
    if ho * kh == h and wo * kw == w:
        return spread
    out = err.new_zeros((n, h, w, c))
    out[:, :ho * kh, :wo * kw] = spread
    return out


def _taps(h: int, w: int, k: int, stride: int, padding: int) -> tuple[int, int, list[tuple[int, int]]]:
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"a {k}x{k} pool with padding {padding} does not fit a {h}x{w} input")
    return ho, wo, [(i, j) for i in range(k) for j in range(k)]


_POOL_SOURCE = csrc("maxpool_strided.c")


@functools.lru_cache(maxsize=1)
def _pool_library() -> ctypes.CDLL | None:
    i = INT
    return bind_library(_POOL_SOURCE, {
        "niti_maxpool_strided": (None, [PTR, LONG, LONG, LONG, LONG, i, i, i, LONG, LONG, PTR, PTR, i]),
        "niti_maxpool_strided_backward": (None, [PTR, PTR, LONG, LONG, LONG, LONG, i, i, i, LONG, LONG, PTR, i]),
        "niti_maxpool_route_i8": (None, [PTR, PTR, LONG, LONG, LONG, LONG, i, LONG, LONG, PTR, i]),
    })


def _c_pool(k: int, *tensors: Tensor) -> ctypes.CDLL | None:
    """The C loops of ``csrc/maxpool_strided.c`` for a k×k pool of CPU int8 tensors, or None (the PyTorch taps
    loop): the int8 index holds taps below 127, and the backward's int16 sums ``|sum| ≤ k²·128`` then fit."""
    if k * k > 127 or any(t.device.type != "cpu" or t.dtype != torch.int8 for t in tensors):
        return None
    return _pool_library()


def maxpool2d_strided(x: Tensor, k: int, stride: int, padding: int) -> tuple[Tensor, Tensor]:
    """k×k max pool of NHWC int8 ``x`` with any stride and padding (windows may overlap, as ResNet's 3×3/2 stem
    pool): (output, row-major index of each window's first maximum, int8).  Padding never wins a window: every
    window holds at least one input element, and padded cells read -128 (below any clipped int8)."""
    n, h, w, c = x.shape
    ho, wo, taps = _taps(h, w, k, stride, padding)
    if (lib := _c_pool(k, x)) is not None:
        x = x.contiguous()
        out = torch.empty((n, ho, wo, c), dtype=torch.int8)
        index = torch.empty((n, ho, wo, c), dtype=torch.int8)
        lib.niti_maxpool_strided(x.data_ptr(), n, h, w, c, k, stride, padding, ho, wo, out.data_ptr(),
                                 index.data_ptr(), torch.get_num_threads())
        return out, index
    xp = torch.constant_pad_nd(x, (0, 0, padding, padding, padding, padding), -128) if padding else x
    best = index = None
    for t, (i, j) in enumerate(taps):
        tap = xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
        if best is None:
            best, index = tap.clone(), torch.zeros(tap.shape, dtype=torch.int8, device=x.device)
        else:
            better = tap > best  # strictly greater: ties keep the first maximum
            best = torch.where(better, tap, best)
            index = torch.where(better, torch.full_like(index, t), index)
    assert best is not None and index is not None
    return best, index


def maxpool2d_strided_backward(err: Tensor, index: Tensor, k: int, stride: int, padding: int,
                               input_shape: torch.Size) -> Tensor:
    """The sum, per input element, of the errors of the windows whose first maximum it is (overlapping
    windows can route several errors to one element): int32, or int16 from the C loops (exact: ``|sum| ≤ k²·128``);
    the caller narrows it to int8."""
    n, h, w, c = input_shape
    ho, wo, taps = _taps(h, w, k, stride, padding)
    if (lib := _c_pool(k, err, index)) is not None:
        err, index = err.contiguous(), index.contiguous()
        total = torch.empty((n, h, w, c), dtype=torch.int16)  # |sum| <= k·k·128: exact, half the memory
        lib.niti_maxpool_strided_backward(err.data_ptr(), index.data_ptr(), n, h, w, c, k, stride, padding, ho, wo,
                                          total.data_ptr(), torch.get_num_threads())
        return total
    out = torch.zeros((n, h + 2 * padding, w + 2 * padding, c), dtype=torch.int32, device=err.device)
    e32 = err.to(torch.int32)
    zero = torch.zeros((), dtype=torch.int32, device=err.device)
    for t, (i, j) in enumerate(taps):
        out[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride] += torch.where(index == t, e32, zero)
    return out[:, padding:padding + h, padding:padding + w]
