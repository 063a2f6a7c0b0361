"""Integer max pooling on NHWC tensors with first-maximum routing (DESIGN §1.4)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["maxpool2d", "maxpool2d_backward"]


def _windows(x: Tensor, k: int) -> Tensor:
    n, h, w, c = x.shape
    ho, wo = h // k, w // k
    x = x[:, :ho * k, :wo * k]
    # (n, ho, wo, c, k*k) with the window flattened row-major.
    return x.reshape(n, ho, k, wo, k, c).permute(0, 1, 3, 5, 2, 4).reshape(n, ho, wo, c, k * k)


def maxpool2d(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping k×k max pool of NHWC ``x``: (output, index of the first max in each window)."""
    win = _windows(x, k)
    out = win.amax(dim=-1)
    is_max = win == out.unsqueeze(-1)
    # First maximum in row-major order: the smallest position holding the max.
    positions = torch.arange(k * k, device=x.device, dtype=torch.int8 if k * k < 128 else torch.int32)
    big = torch.full((), k * k, device=x.device, dtype=positions.dtype)
    index = torch.where(is_max, positions, big).amin(dim=-1)
    return out, index


def maxpool2d_backward(err: Tensor, index: Tensor, k: int, input_shape: torch.Size) -> Tensor:
    """Route each error to its window's first maximum; zero elsewhere (and in cropped rows/cols)."""
    n, h, w, c = input_shape
    ho, wo = err.shape[1], err.shape[2]
    positions = torch.arange(k * k, device=err.device, dtype=index.dtype)
    mask = index.unsqueeze(-1) == positions  # (n, ho, wo, c, k*k)
    routed = torch.where(mask, err.unsqueeze(-1), torch.zeros((), dtype=err.dtype, device=err.device))
    routed = routed.reshape(n, ho, wo, c, k, k).permute(0, 1, 4, 2, 5, 3).reshape(n, ho * k, wo * k, c)
    if ho * k == h and wo * k == w:
        return routed
    out = err.new_zeros((n, h, w, c))
    out[:, :ho * k, :wo * k] = routed
    return out
