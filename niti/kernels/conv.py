"""Exact int8 NHWC convolution as im2col + ``int_matmul`` (docs/numerics.md §4, §2).

Activations are NHWC int8, weights ``(C_out, kh, kw, C_in)`` int8, so the
im2col matrix ``(N·Ho·Wo, kh·kw·C_in)`` multiplies the reshaped weight
directly and the product comes out NHWC.  Grad-input is a stride-1
convolution of the zero-dilated, padded error with the flipped, transposed
weight; grad-weight reuses the forward's columns.

Given a ``Workspace`` (the layers pass one), the CPU path builds padded
inputs, columns and int32 products in reused buffers, and ``conv2d`` returns
``Im2colColumns`` instead of the columns: backward rebuilds them from the
saved int8 input (one extra copy) rather than keeping kh·kw times the input
alive between forward and backward.  Layers with few input channels (the
first) build their columns transposed, which copies much faster there, and
keep them (``TransposedColumns``).  The returned product then lives in the
workspace: it is valid until the next kernel call with that workspace.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import cpu_im2col, fused
from .matmul import MAX_K_INT32, int_matmul
from .workspace import Workspace

__all__ = ["pair", "conv_output_size", "im2col", "im2col_t", "conv2d", "conv2d_grad_input", "conv2d_grad_weight",
           "Im2colColumns", "TransposedColumns"]


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
    if workspace is not None and not (kh == kw == sh == sw == 1) and cpu_im2col.applies(x, padding):
        n, h, w, c = x.shape
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if ho <= 0 or wo <= 0:
            raise ValueError(f"kernel {kernel} larger than padded input {(h + 2 * ph, w + 2 * pw)}")
        cols = workspace.take("cols", (n * ho * wo, kh * kw * c), x.dtype, x.device)
        return cpu_im2col.im2col_into(x, kernel, stride, padding, (ho, wo), cols)
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


#: Below this many contiguous bytes per window row (kw·C_in), columns are built transposed and kept.
#: Measured on a 2-core AVX2 EPYC (one thread): at 16 ≤ kw·C_in < 64 (C_in 16 at 3×3, 6 at 5×5) the row-major
#: columns are now faster forward plus weight gradient (ResNet-20's 16-channel layer: 53 vs 74 ms), so only
#: first layers (C_in ≤ 5 at 3×3) stay transposed.
_SHORT_ROW = 16
#: Columns are built and multiplied a group of images at a time, at most about this many bytes of columns
#: each, so the workspace stays a fraction of the columns of a whole batch (VGG-small-7: 151 MB).  Fewer,
#: larger chunks mean fewer fork-joins of the thread pool, which mattered on the EPYC's busy cores (one VGG
#: layer, 2 threads: 918 ms with 16 MB chunks, 688 ms with 48 MB, 585 ms whole; on one thread all within 5 %);
#: smaller ones less memory (VGG-small-7 batch 128 step peak: 248 / 271 / 295 MiB for 16 / 32 / 48 MB).  On the
#: Xeon with AMX, 16 MB against 32 MB, in turn over 5 rounds: the VGG-small-7 step 1.05x faster (every round
#: 1.01-1.07x) and its peak 12 MiB lower (results/bench-xeon-amx-v2/ab-chunk16.md): 16 MB.
_CHUNK_BYTES = 16 * 2**20
#: col2im's int32 products are summed while still in cache: chunks of about this many bytes, half of them per
#: thread on 2 threads (LeNet's second layer: one thread on the EPYC, 12.4 ms with 4 MB against 17.7 ms
#: unchunked; 2 threads on the Xeon with 2 MB of L2 per core, 2.9 ms with 2 MB against 3.9 ms with 4 MB).
_COL2IM_CHUNK_BYTES = 2 * 2**20


def _image_chunks(n: int, bytes_per_image: int, budget: int | None = None) -> list[tuple[int, int]]:
    """``(n0, n1)`` ranges of images, about ``budget`` bytes each, as equal as possible."""
    step = max(1, min(n, (budget or _CHUNK_BYTES) // max(1, bytes_per_image)))
    step = -(-n // -(-n // step))  # same number of chunks, sizes balanced
    return [(n0, min(n, n0 + step)) for n0 in range(0, n, step)]


def _conv_into(x: Tensor, wmat: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
               padding: tuple[int, int], workspace: Workspace, out: Tensor) -> Tensor:
    """``out`` (N·Ho·Wo, C_out) int32 = ``im2col(x) @ wmat``, built and multiplied chunk by chunk."""
    n = x.shape[0]
    rows = out.shape[0] // n
    for n0, n1 in _image_chunks(n, rows * wmat.shape[0]):
        cols = im2col(x[n0:n1], kernel, stride, padding, workspace=workspace)
        int_matmul(cols, wmat, out=out[n0 * rows:n1 * rows])
    return out


def im2col_t(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """The im2col matrix transposed, ``(kh·kw·C, N·Ho·Wo)`` contiguous: ``im2col(...).t()``.

    For small C (first layers) the row-major columns copy a few bytes at a
    time; transposed, each kernel tap is one copy with contiguous runs of Wo.
    On the CPU a C loop builds them (``cpu_im2col.im2col_t_into``: padding read
    as zeros, no padded copy; LeNet's first layer 1.0 -> 0.2 ms on one core);
    ``_im2col_t_torch`` is the reference and the fallback.
    """
    if cpu_im2col.applies(x, padding):
        n, h, w, c = x.shape
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if ho <= 0 or wo <= 0:
            raise ValueError(f"kernel {kernel} larger than padded input {(h + 2 * ph, w + 2 * pw)}")
        cols_t = x.new_empty((kh * kw * c, n * ho * wo))
        return cpu_im2col.im2col_t_into(x, kernel, stride, padding, (ho, wo), cols_t)
    return _im2col_t_torch(x, kernel, stride, padding)


def _im2col_t_torch(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """``im2col_t`` by PyTorch copies of a padded input, one per kernel tap (the reference)."""
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    xp = _pad_nhwc(x, ph, ph, pw, pw)
    n, hp, wp, c = xp.shape
    ho = (hp - kh) // sh + 1
    wo = (wp - kw) // sw + 1
    if ho <= 0 or wo <= 0:
        raise ValueError(f"kernel {kernel} larger than padded input {(hp, wp)}")
    cols_t = xp.new_empty((kh, kw, c, n, ho, wo))
    for i in range(kh):
        for j in range(kw):
            cols_t[i, j].copy_(xp[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw].permute(3, 0, 1, 2))
    return cols_t.view(kh * kw * c, n * ho * wo)


class TransposedColumns:
    """Stand-in for the forward's columns of a small-C layer: keeps them transposed (see ``im2col_t``)."""

    def __init__(self, cols_t: Tensor) -> None:
        self.cols_t = cols_t

    def grad_weight(self, err: Tensor, kernel: tuple[int, int]) -> Tensor:
        c_out = err.shape[-1]
        g_t = int_matmul(self.cols_t, err.reshape(-1, c_out))  # (kh·kw·C_in, C_out): Gᵀ, row-major operands
        return g_t.t().reshape(c_out, kernel[0], kernel[1], -1)


class Im2colColumns:
    """Stand-in for the forward's columns: keeps the int8 input and rebuilds them for grad-weight."""

    def __init__(self, x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                 workspace: Workspace) -> None:
        self.x, self.kernel, self.stride, self.padding, self.workspace = x, kernel, stride, padding, workspace

    def grad_weight(self, err: Tensor, kernel: tuple[int, int]) -> Tensor:
        """``errᵀ · cols`` summed over chunks of images: int32 when all N·Ho·Wo terms fit it, else int64,
        exactly as ``int_matmul`` of the whole."""
        x, c_out = self.x, err.shape[-1]
        e = err.reshape(-1, c_out)
        rows = e.shape[0] // x.shape[0]
        k = self.kernel[0] * self.kernel[1] * x.shape[3]
        g: Tensor | None = None
        for n0, n1 in _image_chunks(x.shape[0], rows * k):
            cols = im2col(x[n0:n1], self.kernel, self.stride, self.padding, workspace=self.workspace)
            part = int_matmul(e[n0 * rows:n1 * rows].t(), cols)
            if g is None:
                g = part.to(torch.int64) if e.shape[0] > MAX_K_INT32 else part
            else:
                g += part  # int32 only while the whole sum is bounded by MAX_K_INT32 · 127²
        assert g is not None
        return g.view(c_out, kernel[0], kernel[1], -1)


def conv2d(x: Tensor, weight: Tensor, stride: tuple[int, int], padding: tuple[int, int], *,
           workspace: Workspace | None = None) -> tuple[Tensor, Tensor | Im2colColumns | TransposedColumns]:
    """NHWC int8 convolution: returns (int32/int64 NHWC output, the im2col columns for grad-weight).

    With ``workspace`` (CPU) the output is a workspace view and the columns a stand-in
    (``Im2colColumns`` or ``TransposedColumns``) that ``conv2d_grad_weight`` accepts.
    """
    if x.is_cuda:  # Triton implicit GEMM when available; its "cols" stand-in computes grad-weight itself
        from .cuda import triton_conv2d
        if (done := triton_conv2d(x, weight, stride, padding)) is not None:
            return done
    n, h, w, _ = x.shape
    c_out, kh, kw, _ = weight.shape
    ho = conv_output_size(h, kh, stride[0], padding[0])
    wo = conv_output_size(w, kw, stride[1], padding[1])
    if workspace is not None and x.device.type == "cpu" and kh * kw * x.shape[3] <= MAX_K_INT32:
        if kw * x.shape[3] < _SHORT_ROW:  # first layers: transposed columns, small enough to keep
            cols_t = im2col_t(x, (kh, kw), stride, padding)
            acc = int_matmul(cols_t.t(), weight.reshape(c_out, -1).t(),
                             out=workspace.take("acc", (cols_t.shape[1], c_out), torch.int32, x.device))
            return acc.view(n, ho, wo, c_out), TransposedColumns(cols_t)
        acc = _conv_into(x, weight.reshape(c_out, -1).t(), (kh, kw), stride, padding, workspace,
                         workspace.take("acc", (n * ho * wo, c_out), torch.int32, x.device))
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
    if workspace is not None and err.device.type == "cpu" and _col2im_pays(err.shape, weight.shape, input_hw, stride):
        # err · W gives each output's contribution to its kh·kw input taps; col2im sums them in place.
        # Every input value is a sum of at most kh·kw·C_out products: the int32 bound of the im2col path.
        e, wmat = err.reshape(n * ho * wo, c_out), weight.reshape(c_out, kh * kw * c_in)
        out = workspace.take("acc", (n, h, w, c_in), torch.int32, err.device)
        rows = ho * wo
        for n0, n1 in _image_chunks(n, rows * kh * kw * c_in * 4, _COL2IM_CHUNK_BYTES):
            contrib = int_matmul(e[n0 * rows:n1 * rows], wmat,
                                 out=workspace.take("contrib", ((n1 - n0) * rows, wmat.shape[1]), torch.int32,
                                                    err.device))
            fused.col2im(contrib.view(n1 - n0, ho, wo, kh, kw, c_in), kernel=(kh, kw), padding=(ph, pw),
                         out=out[n0:n1])
        return out
    if workspace is not None and err.device.type == "cpu" and kh * kw * c_out <= MAX_K_INT32:
        # Rows (i, j, c_out) of the flipped weight, row-major: the layout _int_mm reads fastest.
        flipped_kn = weight.flip(1, 2).permute(1, 2, 0, 3).reshape(kh * kw * c_out, c_in)
        hi = err.shape[1] + pads[0] + pads[1] - kh + 1
        wi = err.shape[2] + pads[2] + pads[3] - kw + 1
        acc = workspace.take("acc", (n * hi * wi, c_in), torch.int32, err.device)
        for n0, n1 in _image_chunks(n, hi * wi * kh * kw * c_out):
            cols = im2col(_pad_into(err[n0:n1], *pads, workspace), (kh, kw), (1, 1), (0, 0), workspace=workspace)
            int_matmul(cols, flipped_kn, out=acc[n0 * hi * wi:n1 * hi * wi])
        return acc.view(n, hi, wi, c_in)
    padded = _pad_nhwc(err, *pads)
    flipped = weight.flip(1, 2).permute(3, 1, 2, 0).contiguous()  # (C_in, kh, kw, C_out)
    out, _ = conv2d(padded, flipped, (1, 1), (0, 0))
    return out


def _col2im_pays(err_shape: torch.Size, weight_shape: torch.Size, input_hw: tuple[int, int],
                 stride: tuple[int, int]) -> bool:
    """Grad-input by col2im moves fewer bytes than by im2col: its int32 products (4 bytes each) are
    smaller than the int8 columns of the padded error, i.e. 4·(N·Ho·Wo)·C_in < (N·H·W)·C_out.
    That holds where a layer widens a small input a lot (LeNet's second convolution), never in VGG."""
    n, ho, wo, c_out = err_shape
    _, kh, kw, c_in = weight_shape
    if stride != (1, 1) or kh * kw * c_out > MAX_K_INT32:
        return False
    return 4 * ho * wo * c_in < input_hw[0] * input_hw[1] * c_out


def conv2d_grad_weight(err: Tensor, cols: Tensor, kernel: tuple[int, int]) -> Tensor:
    """Weight gradient ``errᵀ · cols`` as ``(C_out, kh, kw, C_in)``, int32 or int64 when split."""
    if not isinstance(cols, Tensor):  # triton_conv.ImplicitColumns from the CUDA path
        return cols.grad_weight(err, kernel)
    c_out = err.shape[-1]
    g = int_matmul(err.reshape(-1, c_out).t(), cols)
    return g.view(c_out, kernel[0], kernel[1], -1)
