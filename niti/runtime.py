"""The per-model execution context: rounding policy, seeded generators, reductions.

Layers never read global state.  Each holds a reference to one ``Runtime``
which says how to round each role, where random bits come from (one
``torch.Generator`` per purpose), and how whole-batch quantities are formed.
On one process the reductions are identities; the distributed trainer swaps in
all-reduces so that every rank computes the bits a single process would.
It also owns the scratch ``Workspace`` its layers' kernels reuse step after step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .kernels import fused
from .kernels.workspace import Workspace
from .numerics import RoundingPolicy, int_dtype_for_bits

__all__ = ["Recorder", "Runtime"]


class Recorder:
    """Collects named integer tensors of one training step (``niti trace``), in the order they were made."""

    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}

    def add(self, name: str, value: Tensor | int) -> str:
        """Keep a copy of ``value`` (a Python int becomes an int64 scalar) under a unique ``name``; returns it."""
        unique, i = name, 1
        while unique in self.tensors:
            unique, i = f"{name}.{i}", i + 1
        if isinstance(value, Tensor):
            self.tensors[unique] = value.detach().to("cpu", copy=True)
        else:
            self.tensors[unique] = torch.tensor(int(value), dtype=torch.int64)
        return unique


def _identity_int(x: int) -> int:
    return x


def _identity_tensor(t: Tensor) -> Tensor:
    return t


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


@dataclass
class Runtime:
    """How a model rounds, draws random bits and reduces across data-parallel ranks.

    Random draws are always made on the CPU for the *global* batch and then
    sliced, so results depend neither on the device nor on the number of ranks.
    """

    policy: RoundingPolicy = field(default_factory=RoundingPolicy)
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    reduce_max: Callable[[int], int] = _identity_int
    reduce_sum: Callable[[Tensor], Tensor] = _identity_tensor
    rounding_generator: torch.Generator = field(init=False)
    dropout_generator: torch.Generator = field(init=False)
    workspace: Workspace = field(init=False, repr=False, compare=False)
    #: Set by ``niti trace``: every rescale, random draw and tensor handed to ``record`` is kept.
    recorder: Recorder | None = field(default=None, repr=False, compare=False)
    #: Where in the step the next records come from (a layer's name, ``input``, ``loss``, a parameter's name).
    scope: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        # Distinct, fixed streams per purpose: call order in one cannot shift the other.
        self.rounding_generator = _generator(self.seed * 2 + 1)
        self.dropout_generator = _generator(self.seed * 2 + 2)
        self.workspace = Workspace()

    def mode(self, role: str) -> str:
        return getattr(self.policy, role)

    def record(self, name: str, value: Tensor | int) -> None:
        """Hand ``value`` to the recorder as ``<scope>.<name>`` (nothing without a recorder)."""
        if self.recorder is not None:
            self.recorder.add(f"{self.scope}.{name}" if self.scope else name, value)

    def uniform(self, high: int, shape: tuple[int, ...], *, batched: bool, device: torch.device) -> Tensor:
        """Integers uniform in ``[0, high)`` for a tensor of local ``shape``.

        With ``batched`` the first dimension is this rank's shard of the global
        batch: the draw covers the whole batch and this rank keeps its slice.
        """
        if batched and self.world_size > 1:
            n = shape[0]
            full = torch.randint(0, high, (n * self.world_size, *shape[1:]), generator=self.rounding_generator,
                                 dtype=torch.int64)
            local = full[self.rank * n:(self.rank + 1) * n]
        else:
            local = torch.randint(0, high, shape, generator=self.rounding_generator, dtype=torch.int64)
        self.record("noise", local)
        return local.to(device)

    def shift_for_width(self, width: int, target_bits: int, *, batched: bool = True) -> int:
        """The rescale shift of a tensor whose local largest magnitude has ``width`` bits: ``width`` is the
        whole batch's (the largest over the ranks) when ``batched``."""
        if batched:
            width = self.reduce_max(width)
        return max(0, width - target_bits)

    def rounding(self, t: Tensor, target_bits: int, role: str, *,
                 batched: bool = True) -> tuple[str, int, Tensor | None]:
        """``(mode, shift, noise)`` for rescaling ``t`` to ``target_bits``: the whole-batch shift and, for
        stochastic rounding, its draws (made here, in the same order as ``numerics.rescale`` would)."""
        if target_bits < 1:
            raise ValueError(f"target_bits must be >= 1, got {target_bits}")
        mode = self.mode(role)
        shift = self.shift_for_width(fused.max_abs(t).bit_length(), target_bits, batched=batched)
        if self.recorder is not None:
            self.record(f"{role}.acc", t)
            self.record(f"{role}.shift", shift)
        noise = None
        if mode == "stochastic" and shift > 0:
            noise = self.uniform(1 << shift, tuple(t.shape), batched=batched, device=t.device)
        return mode, shift, noise

    def rescale(self, t: Tensor, target_bits: int, role: str, *, batched: bool = True) -> tuple[Tensor, int]:
        """``numerics.rescale`` with this runtime's mode for ``role`` and whole-batch bit width.

        Bit-identical to ``numerics.rescale(t, target_bits, mode, bit_width=..., noise=...)``;
        runs as one fused pass for the bit width and one for rounding and clipping.
        """
        mode, shift, noise = self.rounding(t, target_bits, role, batched=batched)
        return fused.round_clip(t, shift, mode, target_bits, int_dtype_for_bits(target_bits), noise), shift

    def rescale_static(self, t: Tensor, target_bits: int, shift: int, role: str) -> Tensor:
        """``t`` shifted right by a fixed ``shift`` (batch-independent inference, docs/numerics.md §12).

        The role's rounding mode, except that ``stochastic`` becomes ``nearest``: inference draws nothing,
        so a prediction depends on its image only.
        """
        mode = self.mode(role)
        if mode == "stochastic":
            mode = "nearest"
        return fused.round_clip(t, shift, mode, target_bits, int_dtype_for_bits(target_bits))

    def state_dict(self) -> dict:
        return {
            "rounding_generator": self.rounding_generator.get_state(),
            "dropout_generator": self.dropout_generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rounding_generator.set_state(state["rounding_generator"])
        self.dropout_generator.set_state(state["dropout_generator"])
