"""Integer layers of docs/numerics.md §4, NHWC, int8 in and int8 out.

A layer holds its weights and nothing about any particular call: what its
backward needs is written into the ``ctx`` dict its caller passes to
``forward`` (one dict per call, ``niti.nn.graph`` keeps them on a tape) and
read back by ``backward(err, ctx)``.  So a layer may be called twice in one
step.  Weighted layers put the integer gradient in ``weight.grad`` (and
``bias.grad``); the update (``niti.optim``) is a separate step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import kernels
from ..kernels import cpu_add, fused
from ..numerics import IntTensor, aligned_sum
from .init import xavier_int8
from .module import IntParameter, Module

__all__ = ["DROPOUT_MASKS", "Add", "AvgPool2d", "Conv2d", "Dropout", "Flatten", "Identity", "Linear", "MaxPool2d",
           "ReLU"]


def _saved(ctx: dict | None, layer: Module) -> dict:
    if not ctx:
        raise RuntimeError(f"{layer!r}.backward called without a training-mode forward (no saved context)")
    return ctx


def _zero_bias(weight: IntParameter, n: int) -> IntParameter:
    """A bias on its weight's grid (same exponent, same range and accumulator width), starting at zero."""
    return IntParameter(torch.zeros(n, dtype=torch.int8), weight.e, weight.accumulator_bits)


def _add_bias(acc: Tensor, e: int, acc_bits: int, bias: IntParameter | None) -> tuple[Tensor, int]:
    """``acc · 2**e + bias`` with the bias broadcast over the last (channel) dimension (numerics.md §4)."""
    if bias is None:
        return acc, e
    return aligned_sum([(acc, e, acc_bits), (bias.m, bias.e, 7)])


def _bias_grad(err: Tensor) -> Tensor:
    """The sum of the int8 error over every dimension but the last: int32 when it provably fits, else int64.

    Computed as the integer product ``ones(1, rows) @ err``: a column sum of a tall int8 matrix is a slow strided
    reduction in PyTorch (VGG-small-7's 131,072 × 128 error: 113 ms) and one pass of the int8 GEMM (6 ms)."""
    rows = err.numel() // max(err.shape[-1], 1)
    dtype = torch.int32 if rows * 127 < 1 << 31 else torch.int64
    flat = err.reshape(-1, err.shape[-1])
    if flat.dtype != torch.int8 or rows == 0:
        return flat.sum(dim=0, dtype=dtype)
    ones = torch.ones((1, rows), dtype=torch.int8, device=err.device)
    return kernels.int_matmul(ones, flat.contiguous()).reshape(-1).to(dtype)


class Conv2d(Module):
    """Int8 convolution, weights ``(C_out, kh, kw, C_in)``, optional bias; output rescaled to int8."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 3,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, *,
                 generator: torch.Generator, accumulator_bits: int = 8, full_range_init: bool = True,
                 bias: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = kernels.pair(kernel_size)
        self.stride = kernels.pair(stride)
        self.padding = kernels.pair(padding)
        kh, kw = self.kernel_size
        m, e = xavier_int8((out_channels, kh, kw, in_channels), in_channels * kh * kw,
                           out_channels * kh * kw, generator, full_range_init)
        self.weight = IntParameter(m, e, accumulator_bits)
        self.bias = _zero_bias(self.weight, out_channels) if bias else None
        #: Bits of the largest possible |accumulator|: K products of two int8 magnitudes.
        self.acc_bits = (kh * kw * in_channels * 127 * 127).bit_length()

    def forward(self, x: IntTensor, ctx: dict | None = None) -> IntTensor:
        # The workspace holds the columns and the int32 product only until the rescale below.
        acc, cols = kernels.conv2d(x.m, self.weight.m, self.stride, self.padding,
                                   workspace=self.runtime.workspace)
        if ctx is not None:
            ctx["cols"], ctx["hw"], ctx["x_e"] = cols, (x.m.shape[1], x.m.shape[2]), x.e
        acc, e = _add_bias(acc, x.e + self.weight.e, self.acc_bits, self.bias)
        out, shift = self.rescale_activation(acc, ctx)
        return IntTensor(out, e + shift)

    def backward(self, err: IntTensor, ctx: dict) -> IntTensor | None:
        ctx = _saved(ctx, self)
        self.weight.grad = kernels.conv2d_grad_weight(err.m, ctx["cols"], self.kernel_size)
        self.weight.grad_e = err.e + ctx["x_e"]
        if self.bias is not None:
            self.bias.grad, self.bias.grad_e = _bias_grad(err.m), err.e
        if not self.propagate_error:
            return None
        acc = kernels.conv2d_grad_input(err.m, self.weight.m, ctx["hw"], self.stride, self.padding,
                                        workspace=self.runtime.workspace)
        out, shift = self.runtime.rescale(acc, 7, "error")
        return IntTensor(out, err.e + self.weight.e + shift)

    def named_parameters(self) -> list[tuple[str, IntParameter]]:
        return [("weight", self.weight)] + ([("bias", self.bias)] if self.bias is not None else [])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class Linear(Module):
    """Int8 fully connected layer ``x · Wᵀ (+ b)``, weights ``(out, in)``."""

    def __init__(self, in_features: int, out_features: int, *, generator: torch.Generator,
                 accumulator_bits: int = 8, full_range_init: bool = True, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        m, e = xavier_int8((out_features, in_features), in_features, out_features, generator, full_range_init)
        self.weight = IntParameter(m, e, accumulator_bits)
        self.bias = _zero_bias(self.weight, out_features) if bias else None
        self.acc_bits = (in_features * 127 * 127).bit_length()

    def forward(self, x: IntTensor, ctx: dict | None = None) -> IntTensor:
        xm = x.m.contiguous()
        acc = kernels.int_matmul(xm, self.weight.m.t())
        if ctx is not None:
            ctx["x"], ctx["x_e"] = xm, x.e
        acc, e = _add_bias(acc, x.e + self.weight.e, self.acc_bits, self.bias)
        out, shift = self.rescale_activation(acc, ctx)
        return IntTensor(out, e + shift)

    def backward(self, err: IntTensor, ctx: dict) -> IntTensor | None:
        ctx = _saved(ctx, self)
        x = ctx["x"]
        em = err.m.contiguous()
        self.weight.grad, self.weight.grad_e = kernels.int_matmul(em.t(), x), err.e + ctx["x_e"]
        if self.bias is not None:
            self.bias.grad, self.bias.grad_e = _bias_grad(em), err.e
        if not self.propagate_error:
            return None
        acc = kernels.int_matmul(em, self.weight.m)
        out, shift = self.runtime.rescale(acc, 7, "error")
        return IntTensor(out, err.e + self.weight.e + shift)

    def named_parameters(self) -> list[tuple[str, IntParameter]]:
        return [("weight", self.weight)] + ([("bias", self.bias)] if self.bias is not None else [])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class ReLU(Module):
    """``max(x, 0)``; the error passes where the forward input was positive.

    It keeps its output, not a mask: the output is positive exactly where the
    input was, and the next layer usually keeps the same tensor anyway.
    """

    def forward(self, x: IntTensor, ctx: dict | None = None) -> IntTensor:
        y = x.m.clamp_min(0)  # one vectorised eager op already
        if ctx is not None:
            ctx["out"] = y
        return x.with_m(y)

    def backward(self, err: IntTensor, ctx: dict) -> IntTensor:
        return err.with_m(fused.relu_backward(err.m, _saved(ctx, self)["out"]))


class MaxPool2d(Module):
    """k×k max pooling; backward routes each window's error to its first maximum (row-major).

    Non-overlapping windows (stride = kernel, no padding) run the fused kernel and need no rescale. Other
    strides and paddings (ResNet's 3×3, stride 2, padding 1) may route several errors to one element: their
    exact int32 sum is rescaled to int8 (docs/numerics.md §4).
    """

    def __init__(self, kernel_size: int = 2, stride: int | None = None, padding: int = 0) -> None:
        super().__init__()
        stride = kernel_size if stride is None else stride
        if kernel_size < 1 or stride < 1 or not 0 <= padding <= kernel_size // 2:
            raise ValueError(f"max pool needs kernel_size, stride >= 1 and 0 <= padding <= kernel_size // 2, got "
                             f"{kernel_size}, {stride}, {padding}")
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.tiled = stride == kernel_size and padding == 0

    def forward(self, x: IntTensor, ctx: dict | None = None) -> IntTensor:
        if self.tiled:
            out, index = kernels.maxpool2d(x.m, self.kernel_size)
        else:
            out, index = kernels.maxpool2d_strided(x.m, self.kernel_size, self.stride, self.padding)
        if ctx is not None:
            ctx["index"], ctx["shape"] = index, x.m.shape
        return x.with_m(out)

    def backward(self, err: IntTensor, ctx: dict) -> IntTensor:
        ctx = _saved(ctx, self)
        if self.tiled:
            return err.with_m(kernels.maxpool2d_backward(err.m, ctx["index"], self.kernel_size, ctx["shape"]))
        total = kernels.maxpool2d_strided_backward(err.m, ctx["index"], self.kernel_size, self.stride, self.padding,
                                                   ctx["shape"])
        if self.runtime.recorder is not None:
            total = total.to(torch.int32)  # traces hold the int32 sum of docs/numerics.md, whichever loop made it
        out, shift = self.runtime.rescale(total, 7, "error")
        return IntTensor(out, err.e + shift)

    def extra_repr(self) -> str:
        if self.tiled:
            return f"kernel_size={self.kernel_size}"
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    """Non-overlapping ``kh×kw`` average pooling (docs/numerics.md §4).

    The window sum ``s`` (int32) is multiplied by ``M = round(2**q / n)`` for
    ``n = kh·kw`` window elements, ``q = 14 + bit_length(n)`` (exact when
    ``n`` is a power of two), and rescaled to int8 with exponent ``e - q +
    shift``.  Backward: the window's error times ``M``, rescaled to int8,
    goes to every position of the window.
    """

    def __init__(self, kernel_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.kernel_size = kernels.pair(kernel_size)
        n = self.kernel_size[0] * self.kernel_size[1]
        if n < 1:
            raise ValueError(f"kernel_size must be positive, got {kernel_size}")
        self.q = 14 + n.bit_length()
        self.multiplier = ((1 << (self.q + 1)) + n) // (2 * n)  # round(2**q / n), half up
        wide = n * 127 * self.multiplier >= 1 << 31
        self._dtype = torch.int64 if wide else torch.int32

    def _scaled(self, t: Tensor) -> Tensor:
        return t.to(self._dtype) * self.multiplier

    def forward(self, x: IntTensor, ctx: dict | None = None) -> IntTensor:
        s = kernels.avgpool2d_sum(x.m, self.kernel_size)
        if ctx is not None:
            ctx["shape"] = x.m.shape
        out, shift = self.rescale_activation(self._scaled(s), ctx)
        return IntTensor(out, x.e - self.q + shift)

    def backward(self, err: IntTensor, ctx: dict) -> IntTensor:
        shape = _saved(ctx, self)["shape"]
        out, shift = self.runtime.rescale(self._scaled(err.m), 7, "error")
        return IntTensor(kernels.avgpool2d_backward(out, self.kernel_size, shape), err.e - self.q + shift)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class Flatten(Module):
    """NHWC ``(N, H, W, C)`` to ``(N, H·W·C)`` in NHWC order."""

    def forward(self, x: IntTensor, ctx: dict | None = None) -> IntTensor:
        if ctx is not None:
            ctx["shape"] = x.m.shape
        return x.with_m(x.m.reshape(x.m.shape[0], -1))

    def backward(self, err: IntTensor, ctx: dict) -> IntTensor:
        return err.with_m(err.m.reshape(_saved(ctx, self)["shape"]))


class Identity(Module):
    """The input unchanged (``torch.nn.Identity``, and a dropout in evaluation)."""

    def forward(self, x: IntTensor, ctx: dict | None = None) -> IntTensor:
        if ctx is not None:
            ctx["seen"] = True
        return x

    def backward(self, err: IntTensor, ctx: dict) -> IntTensor:
        _saved(ctx, self)
        return err


#: Dropout masks: one per element, as torch's (``sample``), or one per feature shared by the batch (``batch``,
#: the NITI reference's and niti's first).
DROPOUT_MASKS = ("sample", "batch")


class Dropout(Module):
    """p = 1/2 dropout with seeded 0/1 masks, exponent + 1: a mask per element (``mask="sample"``, torch's) or one
    per feature shared by the whole batch (``"batch"``, the NITI reference's)."""

    def __init__(self, mask: str = "sample") -> None:
        super().__init__()
        if mask not in DROPOUT_MASKS:
            raise ValueError(f"dropout mask must be one of {DROPOUT_MASKS}, got {mask!r}")
        self.mask = mask

    def forward(self, x: IntTensor, ctx: dict | None = None) -> IntTensor:
        if not self.training:
            return x
        # 0/1 int8: multiplying by it is exactly where(keep, x, 0), and a vectorised eager op.
        per_sample = self.mask == "sample"
        shape = tuple(x.m.shape) if per_sample else tuple(x.m.shape[1:])
        keep = self.runtime.dropout_mask(shape, x.m.device, batched=per_sample)
        if ctx is not None:
            ctx["mask"] = keep
        self.runtime.record("mask", keep)
        return IntTensor(x.m * keep, x.e + 1)

    def backward(self, err: IntTensor, ctx: dict) -> IntTensor:
        return IntTensor(err.m * _saved(ctx, self)["mask"], err.e + 1)

    def extra_repr(self) -> str:
        return f"mask={self.mask!r}"


class Add(Module):
    """``a + b`` (a residual connection): exponents aligned by ``aligned_sum``, the sum rescaled to int8.

    Backward hands the error, unchanged, to both inputs.
    """

    def forward(self, a: IntTensor, b: IntTensor, ctx: dict | None = None) -> IntTensor:  # type: ignore[override]
        if a.m.shape != b.m.shape:
            raise ValueError(f"Add needs equal shapes, got {tuple(a.m.shape)} and {tuple(b.m.shape)}")
        total, e = cpu_add.pair(a.m, a.e, b.m, b.e) or aligned_sum([(a.m, a.e, 7), (b.m, b.e, 7)])  # see rescale
        if ctx is not None:
            ctx["seen"] = True
        out, shift = self.rescale_activation(total, ctx)
        return IntTensor(out, e + shift)

    def backward(self, err: IntTensor, ctx: dict) -> tuple[IntTensor, IntTensor]:  # type: ignore[override]
        _saved(ctx, self)
        return err, err
