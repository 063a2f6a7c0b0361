"""Graph execution of integer layers: forward in topological order, backward in reverse (docs/numerics.md §4).

A ``Graph`` is a list of nodes, each a layer applied to earlier values (value
0 is the graph's input, node ``i`` produces value ``i + 1``).  Forward fills a
``Tape`` (one context dict per node) that the caller keeps and hands back to
``backward``: nothing about a call lives on the layers, so a graph with skip
connections, a layer used twice, or a graph nested in another keeps its
backward chain whole.  A value used by several nodes receives the sum of their
errors (``aligned_sum``, exact unless the exponents differ by more than 22
bits, then rescaled to int8).  Nodes whose input depends on no weight run no
backward, and the first weighted layers propagate no error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..kernels import cpu_add
from ..numerics import IntTensor, aligned_sum
from .module import IntParameter, Module

__all__ = ["Graph", "Node", "Sequential", "Tape"]


@dataclass(frozen=True)
class Node:
    """``op`` applied to the values ``inputs`` (0: the graph input, ``i + 1``: node ``i``'s output)."""

    name: str
    op: Module
    inputs: tuple[int, ...]


@dataclass
class Tape:
    """What one training-mode forward saved for its backward: a context dict per node."""

    contexts: list[dict] = field(default_factory=list)


class Graph(Module):
    """Integer layers wired as a DAG; ``forward(x, tape)`` and ``backward(err, tape)``."""

    def __init__(self, nodes: list[Node], output: int | None = None) -> None:
        super().__init__()
        self.nodes = list(nodes)
        self.output = len(self.nodes) if output is None else output
        for i, node in enumerate(self.nodes):
            bad = [v for v in node.inputs if not 0 <= v <= i]
            if bad or not node.inputs:
                raise ValueError(f"node {node.name!r} reads values {node.inputs}: each must come from the input "
                                 f"or an earlier node")
        if not 0 < self.output <= len(self.nodes):
            raise ValueError(f"output value {self.output} is not a node of the graph")
        # A graph standing alone needs no error for its input; a parent graph sets this when it does.
        self.propagate_error = False
        self._wire_errors()

    # ----------------------------------------------------------------- structure
    @property
    def layers(self) -> list[Module]:
        return [node.op for node in self.nodes]

    def children(self) -> list[Module]:
        return self.layers

    def named_parameters(self) -> list[tuple[str, IntParameter]]:
        """Every parameter once, in node order, named ``<node>.<parameter>`` (``features.0.weight``)."""
        out, seen = [], set()
        for node in self.nodes:
            for name, p in node.op.named_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append((f"{node.name}.{name}", p))
        return out

    def named_buffers(self) -> list[tuple[str, Tensor]]:
        """Every node's buffers (running statistics), named ``<node>.<buffer>``."""
        return [(f"{node.name}.{name}", t) for node in self.nodes for name, t in node.op.named_buffers()]

    def load_buffers(self, state: dict[str, Tensor]) -> None:
        """Restore ``named_buffers()``; a name no node has is an error, a node not named has none."""
        mine: dict[str, dict[str, Tensor]] = {node.name: {} for node in self.nodes}
        for key, value in state.items():
            owners = [name for name in mine if key.startswith(name + ".")]
            if not owners:
                raise ValueError(f"buffer {key!r} names no layer of the model")
            owner = max(owners, key=len)  # "a.b.running_mean" belongs to node "a.b", not to a node "a"
            mine[owner][key[len(owner) + 1:]] = value
        for node in self.nodes:
            node.op.load_buffers(mine[node.name])

    def calibration_state(self) -> dict[str, int]:
        """Each calibrated node's running activation width (``numerics.calibrate``), by node name."""
        out: dict[str, int] = {}
        for node in self.nodes:
            if isinstance(node.op, Graph):
                out.update({f"{node.name}.{k}": v for k, v in node.op.calibration_state().items()})
            elif node.op.calibration is not None:
                out[node.name] = node.op.calibration
        return out

    def load_calibration(self, state: dict[str, int]) -> None:
        """Restore ``calibration_state()``; nodes it does not name are uncalibrated."""
        for node in self.nodes:
            if isinstance(node.op, Graph):
                prefix = node.name + "."
                node.op.load_calibration({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            else:
                node.op.calibration = state.get(node.name)

    def _requires_error(self) -> list[bool]:
        """Per value: does it depend on a weight (so that an error for it is needed)?"""
        needs = [self.propagate_error]
        for node in self.nodes:
            needs.append(bool(node.op.parameters()) or any(needs[v] for v in node.inputs))
        return needs

    def _wire_errors(self) -> list[bool]:
        needs = self._requires_error()
        for node in self.nodes:
            node.op.propagate_error = any(needs[v] for v in node.inputs)
        return needs

    # ------------------------------------------------------------------ compute
    def forward(self, x: IntTensor, tape: Tape | dict | None = None) -> IntTensor:  # type: ignore[override]
        """The output value; a training forward records each node's context on ``tape``."""
        if isinstance(tape, dict):  # nested in a parent graph: keep the sub-tape in the parent's context
            tape = tape.setdefault("tape", Tape())
        values: list[IntTensor | None] = [x]
        uses = [0] * (len(self.nodes) + 1)
        for node in self.nodes:
            for v in node.inputs:
                uses[v] += 1
        uses[self.output] += 1
        if tape is not None:
            tape.contexts = []
        rt = self.runtime
        for i, node in enumerate(self.nodes):
            ctx = {} if tape is not None else None
            args = [values[v] for v in node.inputs]
            if rt.recorder is not None:
                rt.scope = node.name
            out = node.op.forward(*args, ctx)
            if rt.recorder is not None:
                rt.record("out", out.m)
                rt.record("out.e", out.e)
            values.append(out)
            if tape is not None:
                tape.contexts.append(ctx)
            for v in node.inputs:  # free a value once its last reader has run
                uses[v] -= 1
                if uses[v] == 0:
                    values[v] = None
        out = values[self.output]
        assert out is not None
        return out

    def backward(self, err: IntTensor, tape: Tape | dict) -> IntTensor | None:  # type: ignore[override]
        """Errors in reverse node order; weight gradients land in ``IntParameter.grad``.

        Returns the input's error when ``propagate_error`` is set (a nested graph), else None.
        """
        if isinstance(tape, dict):
            tape = tape.get("tape")
        if not isinstance(tape, Tape) or len(tape.contexts) != len(self.nodes):
            raise RuntimeError("Graph.backward needs the tape of a training-mode forward of this graph")
        needs = self._wire_errors()
        pending: list[list[IntTensor]] = [[] for _ in range(len(self.nodes) + 1)]
        pending[self.output].append(err)
        for i in range(len(self.nodes) - 1, -1, -1):
            node, ctx = self.nodes[i], tape.contexts[i]
            tape.contexts[i] = {}  # free as we go
            if not needs[i + 1] or not pending[i + 1]:
                continue
            rt = self.runtime
            if rt.recorder is not None:
                rt.scope = f"{node.name}.err_sum"
            out_err = self._sum_errors(pending[i + 1])
            pending[i + 1] = []
            if rt.recorder is not None:
                rt.scope = node.name
                rt.record("err", out_err.m)
                rt.record("err.e", out_err.e)
            in_errs = node.op.backward(out_err, ctx)
            if in_errs is None:
                continue
            if isinstance(in_errs, IntTensor):
                in_errs = (in_errs,)
            if rt.recorder is not None:
                for k, e in enumerate(in_errs):
                    rt.record(f"err_in{k}", e.m)
                    rt.record(f"err_in{k}.e", e.e)
            for v, e in zip(node.inputs, in_errs):
                if needs[v]:
                    pending[v].append(e)
        tape.contexts = []
        return self._sum_errors(pending[0]) if self.propagate_error and pending[0] else None

    def _sum_errors(self, errs: list[IntTensor]) -> IntTensor:
        """One error from several readers of a value: their exact aligned sum, rescaled to int8."""
        if len(errs) == 1:
            return errs[0]
        pair = cpu_add.pair(errs[0].m, errs[0].e, errs[1].m, errs[1].e) if len(errs) == 2 else None  # unformed
        total, e = pair or aligned_sum([(t.m, t.e, 7) for t in errs])
        out, shift = self.runtime.rescale(total, 7, "error")
        return IntTensor(out, e + shift)

    def __getitem__(self, i: int) -> Module:
        return self.nodes[i].op

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        def arg(v: int) -> str:
            return "input" if v == 0 else self.nodes[v - 1].name

        inner = "\n".join(f"  ({node.name}): {node.op!r}" + (f" <- {', '.join(map(arg, node.inputs))}"
                                                             if node.inputs != (i,) else "")
                          for i, node in enumerate(self.nodes))
        return f"{type(self).__name__}(\n{inner}\n)"


class Sequential(Graph):
    """Layers in a chain (a ``Graph`` whose node ``i`` reads node ``i - 1``), named ``"0"``, ``"1"``, ..."""

    def __init__(self, *layers: Module) -> None:
        super().__init__([Node(str(i), layer, (i,)) for i, layer in enumerate(layers)])
