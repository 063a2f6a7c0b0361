"""Integer layers of docs/numerics.md §4, NHWC, int8 in and int8 out.

Each layer keeps what its backward needs for exactly one step (``_saved_*``)
and frees it in ``backward``.  Weighted layers put the integer gradient in
``weight.grad``; the update (``niti.optim``) is a separate step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import kernels
from ..kernels import fused
from ..numerics import IntTensor
from .init import xavier_int8
from .module import IntParameter, Module

__all__ = ["Conv2d", "Linear", "ReLU", "MaxPool2d", "Flatten", "Dropout", "Sequential"]


def _need_saved(saved: object, layer: Module) -> None:
    if saved is None:
        raise RuntimeError(f"{layer!r}.backward called without a training-mode forward")


class Conv2d(Module):
    """Int8 convolution, weights ``(C_out, kh, kw, C_in)``, no bias; output rescaled to int8."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 3,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, *,
                 generator: torch.Generator, accumulator_bits: int = 8, full_range_init: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = kernels.pair(kernel_size)
        self.stride = kernels.pair(stride)
        self.padding = kernels.pair(padding)
        kh, kw = self.kernel_size
        m, e = xavier_int8((out_channels, kh, kw, in_channels), in_channels * kh * kw,
                           out_channels * kh * kw, generator, full_range_init)
        self.weight = IntParameter(m, e, accumulator_bits)
        self._saved_cols: object | None = None  # the columns, or a stand-in that rebuilds them
        self._saved_hw: tuple[int, int] | None = None

    def forward(self, x: IntTensor) -> IntTensor:
        # The workspace holds the columns and the int32 product only until the rescale below.
        acc, cols = kernels.conv2d(x.m, self.weight.m, self.stride, self.padding,
                                   workspace=self.runtime.workspace)
        if self.training:
            self._saved_cols, self._saved_hw = cols, (x.m.shape[1], x.m.shape[2])
        out, shift = self.runtime.rescale(acc, 7, "activation")
        return IntTensor(out, x.e + self.weight.e + shift)

    def backward(self, err: IntTensor) -> IntTensor | None:
        _need_saved(self._saved_cols, self)
        cols, hw = self._saved_cols, self._saved_hw
        self._saved_cols = self._saved_hw = None
        self.weight.grad = kernels.conv2d_grad_weight(err.m, cols, self.kernel_size)
        if not self.propagate_error:
            return None
        acc = kernels.conv2d_grad_input(err.m, self.weight.m, hw, self.stride, self.padding,
                                        workspace=self.runtime.workspace)
        out, shift = self.runtime.rescale(acc, 7, "error")
        return IntTensor(out, err.e + self.weight.e + shift)

    def parameters(self) -> list[IntParameter]:
        return [self.weight]

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class Linear(Module):
    """Int8 fully connected layer ``x · Wᵀ``, weights ``(out, in)``, no bias."""

    def __init__(self, in_features: int, out_features: int, *, generator: torch.Generator,
                 accumulator_bits: int = 8, full_range_init: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        m, e = xavier_int8((out_features, in_features), in_features, out_features, generator, full_range_init)
        self.weight = IntParameter(m, e, accumulator_bits)
        self._saved_x: Tensor | None = None

    def forward(self, x: IntTensor) -> IntTensor:
        xm = x.m.contiguous()
        acc = kernels.int_matmul(xm, self.weight.m.t())
        if self.training:
            self._saved_x = xm
        out, shift = self.runtime.rescale(acc, 7, "activation")
        return IntTensor(out, x.e + self.weight.e + shift)

    def backward(self, err: IntTensor) -> IntTensor | None:
        _need_saved(self._saved_x, self)
        x, self._saved_x = self._saved_x, None
        em = err.m.contiguous()
        self.weight.grad = kernels.int_matmul(em.t(), x)
        if not self.propagate_error:
            return None
        acc = kernels.int_matmul(em, self.weight.m)
        out, shift = self.runtime.rescale(acc, 7, "error")
        return IntTensor(out, err.e + self.weight.e + shift)

    def parameters(self) -> list[IntParameter]:
        return [self.weight]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class ReLU(Module):
    """``max(x, 0)``; the error passes where the forward input was positive.

    It keeps its output, not a mask: the output is positive exactly where the
    input was, and the next layer usually keeps the same tensor anyway.
    """

    def __init__(self) -> None:
        super().__init__()
        self._saved_out: Tensor | None = None

    def forward(self, x: IntTensor) -> IntTensor:
        y = x.m.clamp_min(0)  # one vectorised eager op already
        if self.training:
            self._saved_out = y
        return x.with_m(y)

    def backward(self, err: IntTensor) -> IntTensor:
        _need_saved(self._saved_out, self)
        y, self._saved_out = self._saved_out, None
        return err.with_m(fused.relu_backward(err.m, y))


class MaxPool2d(Module):
    """Non-overlapping k×k max pooling; backward routes to the first maximum (row-major)."""

    def __init__(self, kernel_size: int = 2, stride: int | None = None) -> None:
        super().__init__()
        if stride is not None and stride != kernel_size:
            raise ValueError("only non-overlapping pooling (stride == kernel_size) is supported")
        self.kernel_size = kernel_size
        self._saved_index: Tensor | None = None
        self._saved_shape: torch.Size | None = None

    def forward(self, x: IntTensor) -> IntTensor:
        out, index = kernels.maxpool2d(x.m, self.kernel_size)
        if self.training:
            self._saved_index, self._saved_shape = index, x.m.shape
        return x.with_m(out)

    def backward(self, err: IntTensor) -> IntTensor:
        _need_saved(self._saved_index, self)
        index, shape = self._saved_index, self._saved_shape
        self._saved_index = self._saved_shape = None
        return err.with_m(kernels.maxpool2d_backward(err.m, index, self.kernel_size, shape))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class Flatten(Module):
    """NHWC ``(N, H, W, C)`` to ``(N, H·W·C)`` in NHWC order."""

    def __init__(self) -> None:
        super().__init__()
        self._saved_shape: torch.Size | None = None

    def forward(self, x: IntTensor) -> IntTensor:
        if self.training:
            self._saved_shape = x.m.shape
        return x.with_m(x.m.reshape(x.m.shape[0], -1))

    def backward(self, err: IntTensor) -> IntTensor:
        _need_saved(self._saved_shape, self)
        shape, self._saved_shape = self._saved_shape, None
        return err.with_m(err.m.reshape(shape))


class Dropout(Module):
    """p = 1/2 dropout: one seeded 0/1 mask per feature for the whole batch, exponent + 1."""

    def __init__(self) -> None:
        super().__init__()
        self._saved_mask: Tensor | None = None

    def forward(self, x: IntTensor) -> IntTensor:
        if not self.training:
            return x
        # 0/1 int8: multiplying by it is exactly where(keep, x, 0), and a vectorised eager op.
        keep = torch.randint(0, 2, tuple(x.m.shape[1:]), generator=self.runtime.dropout_generator,
                             dtype=torch.int8).to(x.m.device)
        self._saved_mask = keep
        return IntTensor(x.m * keep, x.e + 1)

    def backward(self, err: IntTensor) -> IntTensor:
        _need_saved(self._saved_mask, self)
        keep, self._saved_mask = self._saved_mask, None
        return IntTensor(err.m * keep, err.e + 1)


class Sequential(Module):
    """Layers in order; backward runs in reverse and stops at the first weighted layer."""

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        self.layers = list(layers)
        weighted = [i for i, layer in enumerate(self.layers) if layer.parameters()]
        self._first_weighted = weighted[0] if weighted else 0
        for i, layer in enumerate(self.layers):
            layer.propagate_error = i > self._first_weighted

    def children(self) -> list[Module]:
        return self.layers

    def parameters(self) -> list[IntParameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def forward(self, x: IntTensor) -> IntTensor:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, err: IntTensor) -> IntTensor | None:
        for layer in reversed(self.layers[self._first_weighted:]):
            err = layer.backward(err)
        return err

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"
