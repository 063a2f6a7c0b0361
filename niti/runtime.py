"""The per-model execution context: rounding policy, seeded generators, reductions.

Layers never read global state.  Each holds a reference to one ``Runtime``
which says how to round each role, where random bits come from (one
``torch.Generator`` per purpose), and how whole-batch quantities are formed.
On one process the reductions are identities; the distributed trainer swaps in
all-reduces so that every rank computes the bits a single process would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .numerics import RoundingPolicy, bits, rescale

__all__ = ["Runtime"]


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

    def __post_init__(self) -> None:
        # Distinct, fixed streams per purpose: call order in one cannot shift the other.
        self.rounding_generator = _generator(self.seed * 2 + 1)
        self.dropout_generator = _generator(self.seed * 2 + 2)

    def mode(self, role: str) -> str:
        return getattr(self.policy, role)

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
        return local.to(device)

    def rescale(self, t: Tensor, target_bits: int, role: str, *, batched: bool = True) -> tuple[Tensor, int]:
        """``numerics.rescale`` with this runtime's mode for ``role`` and whole-batch bit width."""
        mode = self.mode(role)
        width = bits(t)
        if batched:
            width = self.reduce_max(width)
        shift = max(0, width - target_bits)
        noise = None
        if mode == "stochastic" and shift > 0:
            noise = self.uniform(1 << shift, tuple(t.shape), batched=batched, device=t.device)
        return rescale(t, target_bits, mode, bit_width=width, noise=noise)

    def state_dict(self) -> dict:
        return {
            "rounding_generator": self.rounding_generator.get_state(),
            "dropout_generator": self.dropout_generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rounding_generator.set_state(state["rounding_generator"])
        self.dropout_generator.set_state(state["dropout_generator"])
