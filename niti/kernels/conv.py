"""Exact int8 NHWC convolution as im2col + ``int_matmul`` (DESIGN §1.4, §2).

Activations are NHWC int8, weights ``(C_out, kh, kw, C_in)`` int8, so the
im2col matrix ``(N·Ho·Wo, kh·kw·C_in)`` multiplies the reshaped weight
directly and the product comes out NHWC.  Grad-input is a stride-1
convolution of the zero-dilated, padded error with the flipped, transposed
weight; grad-weight reuses the forward's columns.

Given a ``Workspace`` (the layers pass one), the CPU path builds padded
inputs, columns and int32 products in reused buffers, and ``conv2d`` returns
``Im2colColumns`` instead of the columns: backward rebuilds them from the
saved int8 input (one extra copy) rather than keeping kh·kw times the input
alive between forward and backward.  The returned product then lives in the
workspace: it is valid until the next kernel call with that workspace.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .matmul import int_matmul
from .workspace import Workspace

__all__ = ["pair", "conv_output_size", "im2col", "conv2d", "conv2d_grad_input", "conv2d_grad_weight",
           "Im2colColumns"]


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


def _pad_into(x: Tensor, top: int, bottom: int, left: int, right: int, workspace: Workspace) -> Tensor:
    """``_pad_nhwc`` into a workspace buffer kept per padding geometry: only the interior is written."""
    n, h, w, c = x.shape
    ct, cb, cl, cr = (max(0, -v) for v in (top, bottom, left, right))
    x = x[:, ct:h - cb, cl:w - cr]
    top, bottom, left, right = (max(0, v) for v in (top, bottom, left, right))
    if top == bottom == left == right == 0:
        return x.contiguous()
    h, w = x.shape[1], x.shape[2]
    out = workspace.zeroed(f"pad{(top, bottom, left, right)}", (n, h + top + bottom, w + left + right, c),
                           x.dtype, x.device)
    out[:, top:top + h, left:left + w].copy_(x)
    return out


def im2col(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], *,
           workspace: Workspace | None = None) -> Tensor:
    """Columns ``(N·Ho·Wo, kh·kw·C)`` of NHWC ``x``, row order (n, ho, wo), column order (i, j, c).

    With ``workspace`` the padded input and the columns live in its buffers (columns: "cols").
    """
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    if workspace is not None:
        xp = _pad_into(x, ph, ph, pw, pw, workspace)
    else:
        xp = _pad_nhwc(x, ph, ph, pw, pw).contiguous()
    n, hp, wp, c = xp.shape
    ho = (hp - kh) // sh + 1
    wo = (wp - kw) // sw + 1
    if ho <= 0 or wo <= 0:
        raise ValueError(f"kernel {kernel} larger than padded input {(hp, wp)}")
    s_n, s_h, s_w, s_c = xp.stride()
    windows = xp.as_strided((n, ho, wo, kh, kw, c), (s_n, s_h * sh, s_w * sw, s_h, s_w, s_c))
    if workspace is None:
        return windows.reshape(n * ho * wo, kh * kw * c)
    if kh == kw == sh == sw == 1:
        return xp.view(n * ho * wo, c)  # 1×1 stride-1 columns are the input itself
    cols = workspace.take("cols", (n * ho * wo, kh * kw * c), xp.dtype, xp.device)
    cols.view(n, ho, wo, kh, kw, c).copy_(windows)
    return cols


class Im2colColumns:
    """Stand-in for the forward's columns: keeps the int8 input and rebuilds them for grad-weight."""

    def __init__(self, x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                 workspace: Workspace) -> None:
        self.x, self.kernel, self.stride, self.padding, self.workspace = x, kernel, stride, padding, workspace

    def grad_weight(self, err: Tensor, kernel: tuple[int, int]) -> Tensor:
        cols = im2col(self.x, self.kernel, self.stride, self.padding, workspace=self.workspace)
        c_out = err.shape[-1]
        g = int_matmul(err.reshape(-1, c_out).t(), cols)
        return g.view(c_out, kernel[0], kernel[1], -1)


def conv2d(x: Tensor, weight: Tensor, stride: tuple[int, int], padding: tuple[int, int], *,
           workspace: Workspace | None = None) -> tuple[Tensor, Tensor | Im2colColumns]:
    """NHWC int8 convolution: returns (int32/int64 NHWC output, the im2col columns for grad-weight).

    With ``workspace`` (CPU) the output is a workspace view and the columns an ``Im2colColumns``.
    """
    if x.is_cuda:  # Triton implicit GEMM when available; its "cols" stand-in computes grad-weight itself
        from .cuda import triton_conv2d
        if (done := triton_conv2d(x, weight, stride, padding)) is not None:
            return done
    n, h, w, _ = x.shape
    c_out, kh, kw, _ = weight.shape
    ho = conv_output_size(h, kh, stride[0], padding[0])
    wo = conv_output_size(w, kw, stride[1], padding[1])
    if workspace is not None and x.device.type == "cpu":
        cols = im2col(x, (kh, kw), stride, padding, workspace=workspace)
        acc = int_matmul(cols, weight.reshape(c_out, -1).t(),
                         out=workspace.take("acc", (cols.shape[0], c_out), torch.int32, x.device))
        return acc.view(n, ho, wo, c_out), Im2colColumns(x, (kh, kw), stride, padding, workspace)
    cols = im2col(x, (kh, kw), stride, padding)
    acc = int_matmul(cols, weight.reshape(c_out, -1).t())
    return acc.view(n, ho, wo, c_out), cols


def conv2d_grad_input(err: Tensor, weight: Tensor, input_hw: tuple[int, int], stride: tuple[int, int],
                      padding: tuple[int, int], *, workspace: Workspace | None = None) -> Tensor:
    """Error w.r.t. the input: the transposed convolution of NHWC int8 ``err``.

    With ``workspace`` (CPU) the result is a view of its "acc" buffer.
    """
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
    pads = (kh - 1 - ph, kh - 1 - ph + extra_h, kw - 1 - pw, kw - 1 - pw + extra_w)
    if workspace is not None and err.device.type == "cpu":
        padded = _pad_into(err, *pads, workspace)
        # Rows (i, j, c_out) of the flipped weight, row-major: the layout _int_mm reads fastest.
        flipped_kn = weight.flip(1, 2).permute(1, 2, 0, 3).reshape(kh * kw * c_out, c_in)
        cols = im2col(padded, (kh, kw), (1, 1), (0, 0), workspace=workspace)
        hi, wi = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
        acc = int_matmul(cols, flipped_kn, out=workspace.take("acc", (cols.shape[0], c_in), torch.int32,
                                                              err.device))
        return acc.view(n, hi, wi, c_in)
    padded = _pad_nhwc(err, *pads)
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
