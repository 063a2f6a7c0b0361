"""``convert``: a ``torch.nn.Module`` traced by ``torch.fx`` becomes a graph of integer layers (docs/numerics.md §4).

The module is only read: its structure (layer types, sizes, strides,
paddings, biases, the wiring of its forward) defines the integer graph; its
float weights do not (the integer weights are initialised by niti's own
seeded integer rule).  The integer graph works in NHWC where torch works in
NCHW, so flatten orders features as (H, W, C).  Anything outside the
supported set is refused with a ``ValueError`` naming the operation and
where in the module it is.
"""

from __future__ import annotations

import gc
import operator
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn as tnn

from .. import nn

__all__ = ["SUPPORTED", "UnsupportedModule", "convert", "output_shape"]

#: What ``convert`` accepts, for error messages and the README.
SUPPORTED = ("Conv2d (groups=1, dilation=1, zero padding; bias optional)", "Linear (bias optional)",
             "ReLU / F.relu / torch.relu / .relu()",
             "BatchNorm2d (affine, running statistics; integer L1 batch norm)",
             "MaxPool2d (square, padding <= kernel/2, no dilation)",
             "AvgPool2d (stride = kernel, no padding)", "AdaptiveAvgPool2d (sizes dividing the input)",
             "global average pooling (.mean((2, 3)))", "Flatten / torch.flatten(x, 1) / .view(N, -1)",
             "Dropout (p = 0.5, or 0)", "Identity", "tensor addition (+, torch.add)")


class UnsupportedModule(ValueError):
    """The module uses an operation the integer graph does not implement (names the op and its place)."""


@contextmanager
def _quiet_rng() -> Iterator[None]:
    """Leave torch's global CPU generator as it was (tracing and shape propagation must not move it)."""
    with torch.random.fork_rng(devices=[]):
        yield


def _trace(module: tnn.Module) -> torch.fx.GraphModule:
    if not isinstance(module, tnn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    try:
        return torch.fx.symbolic_trace(module)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...) for untraceable Python
        raise UnsupportedModule(f"cannot trace {type(module).__name__} with torch.fx "
                                f"({type(exc).__name__}: {exc}); its forward must be straight-line tensor code "
                                "without data-dependent control flow") from None


def _propagate_shapes(gm: torch.fx.GraphModule, input_shape: tuple[int, int, int]) -> torch.Tensor:
    """Run the traced module once on zeros (eval mode, no grad) and record each node's output shape."""
    from torch.fx.passes.shape_prop import ShapeProp

    h, w, c = input_shape
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad(), _quiet_rng():
            ShapeProp(gm).propagate(torch.zeros(1, c, h, w))
    except Exception as exc:
        raise ValueError(f"the module does not run on a (1, {c}, {h}, {w}) NCHW input, the shape of "
                         f"input_shape {input_shape} (H, W, C): {type(exc).__name__}: {exc}") from None
    finally:
        gm.train(was_training)
    outs = [n for n in gm.graph.nodes if n.op == "output"]
    return outs[0].args[0]


def _shape(node: torch.fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise UnsupportedModule(f"node {node.name!r} does not produce one tensor")
    return tuple(meta.shape)


def output_shape(module: tnn.Module, input_shape: tuple[int, int, int]) -> tuple[int, ...]:
    """The module's output shape for one NCHW image of ``input_shape`` (H, W, C)."""
    gm = _trace(module)
    out = _propagate_shapes(gm, input_shape)
    if not isinstance(out, torch.fx.Node):
        raise UnsupportedModule("the module must return one tensor of logits")
    return _shape(out)


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _Converter:
    def __init__(self, gm: torch.fx.GraphModule, generator: torch.Generator, accumulator_bits: int,
                 full_range_init: bool) -> None:
        self.gm = gm
        self.generator = generator
        self.acc = accumulator_bits
        self.full_range_init = full_range_init
        self.nodes: list[nn.Node] = []
        self.value: dict[torch.fx.Node, int] = {}
        self.weighted_targets: set[str] = set()

    # ---------------------------------------------------------------- helpers
    def where(self, node: torch.fx.Node) -> str:
        if node.op == "call_module":
            return f"module '{node.target}' (node {node.name!r})"
        return f"node {node.name!r}"

    def refuse(self, node: torch.fx.Node, what: str, why: str = "") -> UnsupportedModule:
        tail = f": {why}" if why else f"; supported: {', '.join(SUPPORTED)}"
        return UnsupportedModule(f"unsupported operation {what} at {self.where(node)}{tail}")

    def emit(self, name: str, op: nn.Module, inputs: list[torch.fx.Node]) -> int:
        self.nodes.append(nn.Node(name, op, tuple(self.value[i] for i in inputs)))
        return len(self.nodes)

    def tensor_arg(self, node: torch.fx.Node, arg: Any, what: str) -> torch.fx.Node:
        if not isinstance(arg, torch.fx.Node) or arg not in self.value:
            raise self.refuse(node, what, f"its input {arg!r} is not a tensor computed from the model's input")
        return arg

    # --------------------------------------------------------------- per kind
    def module(self, node: torch.fx.Node) -> int | None:
        sub = self.gm.get_submodule(node.target)
        kind = type(sub).__name__
        (x,) = [self.tensor_arg(node, a, kind) for a in node.args[:1]]
        if node.kwargs or len(node.args) != 1:
            raise self.refuse(node, kind, "called with more than one argument")
        name = str(node.target)
        if isinstance(sub, (tnn.Conv2d, tnn.Linear, tnn.BatchNorm2d)):
            if name in self.weighted_targets:
                raise self.refuse(node, kind, "the module is called twice; shared weights are not supported")
            self.weighted_targets.add(name)
        if isinstance(sub, tnn.Conv2d):
            if type(sub) is not tnn.Conv2d:
                raise self.refuse(node, kind)
            if sub.groups != 1 or _pair(sub.dilation) != (1, 1) or sub.padding_mode != "zeros" \
                    or isinstance(sub.padding, str):
                raise self.refuse(node, kind, f"groups={sub.groups}, dilation={sub.dilation}, "
                                  f"padding={sub.padding!r}, padding_mode={sub.padding_mode!r}; niti supports "
                                  "groups=1, dilation=1 and numeric zero padding")
            op = nn.Conv2d(sub.in_channels, sub.out_channels, _pair(sub.kernel_size), _pair(sub.stride),
                           _pair(sub.padding), generator=self.generator, accumulator_bits=self.acc,
                           full_range_init=self.full_range_init, bias=sub.bias is not None)
        elif type(sub) is tnn.Linear:
            op = nn.Linear(sub.in_features, sub.out_features, generator=self.generator, accumulator_bits=self.acc,
                           full_range_init=self.full_range_init, bias=sub.bias is not None)
        elif type(sub) is tnn.ReLU:
            op = nn.ReLU()
        elif type(sub) is tnn.BatchNorm2d:
            if not sub.affine or not sub.track_running_stats:
                raise self.refuse(node, kind, f"affine={sub.affine}, track_running_stats={sub.track_running_stats}; "
                                  "niti normalises with learned scale and shift and keeps running statistics")
            # eps and momentum have no integer counterpart: see docs/numerics.md §13.
            op = nn.BatchNorm2d(sub.num_features, accumulator_bits=self.acc)
        elif type(sub) is tnn.MaxPool2d:
            op = self.maxpool(node, kind, {"kernel_size": sub.kernel_size, "stride": sub.stride,
                                           "padding": sub.padding, "dilation": sub.dilation,
                                           "ceil_mode": sub.ceil_mode, "return_indices": sub.return_indices})
        elif type(sub) is tnn.AvgPool2d:
            op = self.avgpool(node, sub.kernel_size, sub.stride, sub.padding, sub.ceil_mode, sub.divisor_override)
        elif type(sub) is tnn.AdaptiveAvgPool2d:
            op = self.adaptive_avgpool(node, x, sub.output_size)
        elif type(sub) is tnn.Flatten:
            if (sub.start_dim, sub.end_dim) != (1, -1):
                raise self.refuse(node, kind, f"start_dim={sub.start_dim}, end_dim={sub.end_dim}; niti flattens "
                                  "all but the batch dimension")
            return self.flatten(node, x)
        elif type(sub) is tnn.Dropout:
            return self.dropout(node, x, sub.p)
        elif type(sub) is tnn.Identity:
            return self.value[x]
        else:
            raise self.refuse(node, kind)
        return self.emit(name, op, [x])

    def maxpool(self, node: torch.fx.Node, what: str, a: dict) -> nn.Module:
        k = _pair(a.get("kernel_size"))
        stride = a.get("stride")
        st = k if stride is None or stride == [] else _pair(stride)
        p = _pair(a.get("padding", 0))
        if k[0] != k[1] or st[0] != st[1] or p[0] != p[1] or p[0] > k[0] // 2 or _pair(a.get("dilation", 1)) != (1, 1) \
                or a.get("ceil_mode") or a.get("return_indices"):
            raise self.refuse(node, what, f"kernel_size={a.get('kernel_size')}, stride={stride}, padding="
                              f"{a.get('padding', 0)}: niti pools square windows with equal strides, padding at "
                              "most half the kernel, no dilation, floor mode")
        return nn.MaxPool2d(k[0], st[0], p[0])

    def avgpool(self, node: torch.fx.Node, kernel: Any, stride: Any, padding: Any = 0, ceil_mode: bool = False,
                divisor: Any = None) -> nn.Module:
        k = _pair(kernel)
        s = k if stride is None or stride == [] else _pair(stride)
        if s != k or _pair(padding) != (0, 0) or ceil_mode or divisor is not None:
            raise self.refuse(node, "AvgPool2d", f"kernel_size={kernel}, stride={stride}, padding={padding}: niti "
                              "averages non-overlapping windows (stride = kernel_size, no padding, floor mode)")
        return nn.AvgPool2d(k)

    def adaptive_avgpool(self, node: torch.fx.Node, x: torch.fx.Node, output_size: Any) -> nn.Module:
        _, _, h, w = _shape(x)
        oh, ow = _pair(output_size) if not isinstance(output_size, int) else (output_size, output_size)
        oh, ow = oh or h, ow or w  # None keeps the input size
        if h % oh or w % ow:
            raise self.refuse(node, "AdaptiveAvgPool2d", f"output {(oh, ow)} does not divide the input {(h, w)}")
        return nn.AvgPool2d((h // oh, w // ow))

    def flatten(self, node: torch.fx.Node, x: torch.fx.Node) -> int:
        if len(_shape(x)) == 2:  # already (N, features)
            return self.value[x]
        return self.emit(_name(node), nn.Flatten(), [x])

    def dropout(self, node: torch.fx.Node, x: torch.fx.Node, p: float) -> int:
        if p == 0:
            return self.value[x]
        if p != 0.5:
            raise self.refuse(node, "Dropout", f"p={p}; the integer dropout keeps half the features (p = 0.5)")
        return self.emit(_name(node), nn.Dropout(), [x])

    def add(self, node: torch.fx.Node, what: str) -> int:
        if len(node.args) != 2 or node.kwargs:
            raise self.refuse(node, what, "only the sum of two tensors (no alpha) is supported")
        a, b = (self.tensor_arg(node, v, what) for v in node.args)
        if _shape(a) != _shape(b):
            raise self.refuse(node, what, f"operands of shapes {_shape(a)} and {_shape(b)}; niti adds tensors of "
                              "equal shape (no broadcasting)")
        return self.emit(node.name, nn.Add(), [a, b])

    def function(self, node: torch.fx.Node) -> int | None:
        fn = node.target
        name = getattr(fn, "__name__", str(fn))
        if fn in (operator.add, operator.iadd, torch.add):
            return self.add(node, name)
        x = self.tensor_arg(node, node.args[0] if node.args else node.kwargs.get("input"), name)
        rest, kw = node.args[1:], dict(node.kwargs)
        kw.pop("input", None)
        if fn in (F.relu, torch.relu):
            return self.emit(node.name, nn.ReLU(), [x])
        if fn is torch.flatten:
            start = rest[0] if rest else kw.get("start_dim", 0)
            end = rest[1] if len(rest) > 1 else kw.get("end_dim", -1)
            if (start, end) != (1, -1):
                raise self.refuse(node, name, f"start_dim={start}, end_dim={end}; use torch.flatten(x, 1)")
            return self.flatten(node, x)
        if fn is F.adaptive_avg_pool2d:
            return self.emit(node.name, self.adaptive_avgpool(node, x, rest[0] if rest else kw["output_size"]), [x])
        if fn is F.avg_pool2d:
            a = _arguments(rest, kw, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                      "divisor_override"))
            return self.emit(node.name, self.avgpool(node, a.get("kernel_size"), a.get("stride"), a.get("padding", 0),
                                                     a.get("ceil_mode", False), a.get("divisor_override")), [x])
        if fn in (F.max_pool2d, torch.max_pool2d):
            a = _arguments(rest, kw, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"))
            return self.emit(node.name, self.maxpool(node, name, a), [x])
        raise self.refuse(node, name)

    def method(self, node: torch.fx.Node) -> int | None:
        name = str(node.target)
        if name == "size":  # a static size, consumed by view/reshape below
            return None
        x = self.tensor_arg(node, node.args[0], f".{name}()")
        rest = node.args[1:]
        if name == "add":
            return self.add(node, ".add()")
        if name == "relu":
            return self.emit(node.name, nn.ReLU(), [x])
        if name in ("contiguous",):
            return self.value[x]
        if name == "flatten":
            start = rest[0] if rest else node.kwargs.get("start_dim", 0)
            if start != 1 or (len(rest) > 1 and rest[1] != -1):
                raise self.refuse(node, ".flatten()", "use x.flatten(1)")
            return self.flatten(node, x)
        if name in ("view", "reshape"):
            if len(_shape(node)) == 2 and _shape(node)[1] == _prod(_shape(x)[1:]) and _batch_preserved(rest):
                return self.flatten(node, x)
            raise self.refuse(node, f".{name}()", "only flattening to (batch, features) is supported")
        if name == "mean":
            dims = rest[0] if rest else node.kwargs.get("dim")
            dims = tuple(sorted(d % 4 for d in (dims if isinstance(dims, (tuple, list)) else (dims,))))
            keep = (rest[1] if len(rest) > 1 else node.kwargs.get("keepdim", False))
            if dims != (2, 3) or len(_shape(x)) != 4:
                raise self.refuse(node, ".mean()", "only global average pooling, x.mean((2, 3)), is supported")
            _, _, h, w = _shape(x)
            pooled = self.emit(node.name, nn.AvgPool2d((h, w)), [x])
            if keep:
                return pooled
            self.nodes.append(nn.Node(node.name + ".flatten", nn.Flatten(), (pooled,)))
            return len(self.nodes)
        raise self.refuse(node, f".{name}()")

    def run(self) -> tuple[nn.Graph, tuple[int, ...]]:
        output = None
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if self.value:
                    raise self.refuse(node, "a second input", "the model must take one image tensor")
                self.value[node] = 0
            elif node.op == "call_module":
                self.value[node] = self.module(node)
            elif node.op == "call_function":
                self.value[node] = self.function(node)
            elif node.op == "call_method":
                v = self.method(node)
                if v is not None:
                    self.value[node] = v
            elif node.op == "get_attr":
                raise self.refuse(node, f"direct use of the attribute {node.target!r}",
                                  "weights must belong to Conv2d, Linear or BatchNorm2d modules")
            elif node.op == "output":
                output = node.args[0]
        if not isinstance(output, torch.fx.Node) or output not in self.value:
            raise UnsupportedModule("the module must return one tensor computed from its input")
        shape = _shape(output)
        if len(shape) != 2:
            raise UnsupportedModule(f"the module must return (batch, classes) logits, got shape {shape}")
        if self.value[output] == 0 or not self.nodes:
            raise UnsupportedModule("the module has no layers")
        return nn.Graph(self.nodes, self.value[output]), shape


def _name(node: torch.fx.Node) -> str:
    """A node's name in the integer graph: the module's own path (``classifier.0``) or fx's name (``add_1``)."""
    return str(node.target) if node.op == "call_module" else node.name


def _arguments(args: tuple, kwargs: dict, names: tuple[str, ...]) -> dict:
    """Positional ``args`` (after the input) and ``kwargs`` as one dict by parameter name."""
    out = dict(zip(names, args))
    out.update(kwargs)
    return out


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _batch_preserved(args: tuple) -> bool:
    """``view(x.size(0), -1)`` / ``view(-1, F)`` / ``view(N, F)``: a 2-D view whose rows are the images."""
    dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
    return len(dims) == 2 and (isinstance(dims[0], torch.fx.Node) or dims[1] != -1 or dims[0] != -1)


def convert(module: tnn.Module, input_shape: tuple[int, int, int], *, generator: torch.Generator,
            accumulator_bits: int = 16, full_range_init: bool = False) -> tuple[nn.Graph, int]:
    """The integer graph of ``module`` for NHWC inputs of ``input_shape`` and its number of classes.

    Weights are drawn from ``generator`` in the order the forward first uses them.
    """
    if len(input_shape) != 3 or any(not isinstance(v, int) or v < 1 for v in input_shape):
        raise ValueError(f"input_shape must be (H, W, C) positive ints, got {input_shape!r}")
    gm = _trace(module)
    _propagate_shapes(gm, input_shape)
    graph, shape = _Converter(gm, generator, accumulator_bits, full_range_init).run()
    # The traced GraphModule and its Graph refer to each other, and the GraphModule to the module's float
    # parameters: without a collection now, that garbage (VGG-small-7: 18 MiB) lives into training and
    # counts toward its peak memory until Python's collector happens to run.
    del gm
    gc.collect()
    return graph, shape[1]
