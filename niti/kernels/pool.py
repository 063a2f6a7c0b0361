"""Integer max pooling on NHWC tensors with first-maximum routing (docs/numerics.md §4).

The window arithmetic is the fused chain ``kernels.fused.maxpool`` /
``maxpool_backward`` (compiled on the CPU, its eager twin elsewhere).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import fused

__all__ = ["avgpool2d_backward", "avgpool2d_sum", "maxpool2d", "maxpool2d_backward"]


def maxpool2d(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping k×k max pool of NHWC ``x``: (output, index of the first max in each window).

    The index counts row-major within the window (int8, or int32 for k·k ≥ 128); trailing
    rows/columns that fill no whole window are dropped.
    """
    n, h, w, c = x.shape
    ho, wo = h // k, w // k
    return fused.maxpool(x[:, :ho * k, :wo * k], k)


def maxpool2d_backward(err: Tensor, index: Tensor, k: int, input_shape: torch.Size) -> Tensor:
    """Route each error to its window's first maximum; zero elsewhere (and in cropped rows/cols)."""
    n, h, w, c = input_shape
    ho, wo = err.shape[1], err.shape[2]
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
