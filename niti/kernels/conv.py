"""Exact int8 NHWC convolution as im2col + ``int_matmul`` (DESIGN §1.4, §2).

Activations are NHWC int8, weights ``(C_out, kh, kw, C_in)`` int8, so the
im2col matrix ``(N·Ho·Wo, kh·kw·C_in)`` multiplies the reshaped weight
directly and the product comes out NHWC.  Grad-input is a stride-1
convolution of the zero-dilated, padded error with the flipped, transposed
weight; grad-weight reuses the forward's columns.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .matmul import int_matmul

__all__ = ["pair", "conv_output_size", "im2col", "conv2d", "conv2d_grad_input", "conv2d_grad_weight"]


def pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _pad_nhwc(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Zero-pad (or crop, for negative amounts) the H and W dimensions of NHWC ``x``."""
    n, h, w, c = x.shape
    ct, cb, cl, cr = (max(0, -v) for v in (top, bottom, left, right))
    x = x[:, ct:h - cb, cl:w - cr]
    top, bottom, left, right = (max(0, v) for v in (top, bottom, left, right))
    if top == bottom == left == right == 0:
        return x
    out = x.new_zeros((n, x.shape[1] + top + bottom, x.shape[2] + left + right, c))
    out[:, top:top + x.shape[1], left:left + x.shape[2]] = x
    return out


def im2col(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """Columns ``(N·Ho·Wo, kh·kw·C)`` of NHWC ``x``, row order (n, ho, wo), column order (i, j, c)."""
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    xp = _pad_nhwc(x, ph, ph, pw, pw).contiguous()
    n, hp, wp, c = xp.shape
    ho = (hp - kh) // sh + 1
    wo = (wp - kw) // sw + 1
    if ho <= 0 or wo <= 0:
        raise ValueError(f"kernel {kernel} larger than padded input {(hp, wp)}")
    s_n, s_h, s_w, s_c = xp.stride()
    windows = xp.as_strided((n, ho, wo, kh, kw, c), (s_n, s_h * sh, s_w * sw, s_h, s_w, s_c))
    return windows.reshape(n * ho * wo, kh * kw * c)


def conv2d(x: Tensor, weight: Tensor, stride: tuple[int, int], padding: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """NHWC int8 convolution: returns (int32/int64 NHWC output, the im2col columns for grad-weight)."""
    if x.is_cuda:  # Triton implicit GEMM when available; its "cols" stand-in computes grad-weight itself
        from .cuda import triton_conv2d
        if (done := triton_conv2d(x, weight, stride, padding)) is not None:
            return done
    n, h, w, _ = x.shape
    c_out, kh, kw, _ = weight.shape
    ho = conv_output_size(h, kh, stride[0], padding[0])
    wo = conv_output_size(w, kw, stride[1], padding[1])
    cols = im2col(x, (kh, kw), stride, padding)
    acc = int_matmul(cols, weight.reshape(c_out, -1).t())
    return acc.view(n, ho, wo, c_out), cols


def conv2d_grad_input(err: Tensor, weight: Tensor, input_hw: tuple[int, int], stride: tuple[int, int],
                      padding: tuple[int, int]) -> Tensor:
    """Error w.r.t. the input: the transposed convolution of NHWC int8 ``err``."""
    n, ho, wo, c_out = err.shape
    _, kh, kw, c_in = weight.shape
    h, w = input_hw
    sh, sw = stride
    ph, pw = padding
    if sh > 1 or sw > 1:
        dilated = err.new_zeros((n, (ho - 1) * sh + 1, (wo - 1) * sw + 1, c_out))
        dilated[:, ::sh, ::sw] = err
        err = dilated
    extra_h = h + 2 * ph - kh - (ho - 1) * sh
    extra_w = w + 2 * pw - kw - (wo - 1) * sw
    padded = _pad_nhwc(err, kh - 1 - ph, kh - 1 - ph + extra_h, kw - 1 - pw, kw - 1 - pw + extra_w)
    flipped = weight.flip(1, 2).permute(3, 1, 2, 0).contiguous()  # (C_in, kh, kw, C_out)
    out, _ = conv2d(padded, flipped, (1, 1), (0, 0))
    return out


def conv2d_grad_weight(err: Tensor, cols: Tensor, kernel: tuple[int, int]) -> Tensor:
    """Weight gradient ``errᵀ · cols`` as ``(C_out, kh, kw, C_in)``, int32 or int64 when split."""
    if not isinstance(cols, Tensor):  # triton_conv.ImplicitColumns from the CUDA path
        return cols.grad_weight(err, kernel)
    c_out = err.shape[-1]
    g = int_matmul(err.reshape(-1, c_out).t(), cols)
    return g.view(c_out, kernel[0], kernel[1], -1)
