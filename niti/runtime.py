"""The per-model execution context: rounding policy, random bits, reductions.

Layers never read global state.  Each holds a reference to one ``Runtime``
which says how to round each role, where random bits come from (counter-based
hashes, one stream per purpose, docs/numerics.md §14), and how whole-batch
quantities are formed.
On one process the reductions are identities; the distributed trainer swaps in
all-reduces so that every rank computes the bits a single process would.
It also owns the scratch ``Workspace`` its layers' kernels reuse step after step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from . import counter_bits
from .kernels import cpu_add, cpu_round, fused
from .kernels.workspace import Workspace
from .numerics import RoundingPolicy, clip_for_share, clip_thresholds, int_dtype_for_bits

__all__ = ["RANDOM_BITS", "Recorder", "Runtime"]

#: Where random bits come from: ``counter`` hashes (seed, stream, draw, index) on the tensor's device
#: (docs/numerics.md §14); ``generator`` is the first scheme, CPU ``torch.Generator`` streams, kept so that
#: checkpoints written with it resume with the same bits.
RANDOM_BITS = ("counter", "generator")


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
    g.manual_seed(seed % (1 << 64))  # the same for every seed below 2**63; any larger one is accepted
    return g


@dataclass
class Runtime:
    """How a model rounds, draws random bits and reduces across data-parallel ranks.

    A draw's bits are a function of the element's index in the *global* batch,
    so results depend neither on the device nor on the number of ranks.  With
    ``random_bits="counter"`` each rank hashes its own slice on its own device;
    the ``generator`` scheme draws the whole batch on the CPU and slices it.
    """

    policy: RoundingPolicy = field(default_factory=RoundingPolicy)
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    reduce_max: Callable[[int], int] = _identity_int
    reduce_sum: Callable[[Tensor], Tensor] = _identity_tensor
    random_bits: str = "counter"
    #: Draws made so far per stream (``counter`` scheme): the next draw's number.
    draws: dict[str, int] = field(init=False)
    #: The seed the counter streams hash (``seed`` mod 2**64; a loaded state brings its own).
    stream_seed: int = field(init=False)
    rounding_generator: torch.Generator = field(init=False)
    dropout_generator: torch.Generator = field(init=False)
    workspace: Workspace = field(init=False, repr=False, compare=False)
    #: Set by ``niti trace``: every rescale, random draw and tensor handed to ``record`` is kept.
    recorder: Recorder | None = field(default=None, repr=False, compare=False)
    #: Where in the step the next records come from (a layer's name, ``input``, ``loss``, a parameter's name).
    scope: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.random_bits not in RANDOM_BITS:
            raise ValueError(f"random_bits must be one of {RANDOM_BITS}, got {self.random_bits!r}")
        self.draws = {stream: 0 for stream in counter_bits.STREAMS}
        self.stream_seed = self.seed % (1 << 64)
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

    def _counter_draw(self, stream: str, bits: int, shape: tuple[int, ...], batched: bool,
                      device: torch.device | str) -> Tensor:
        """The next draw of ``stream``: this rank's slice (rows ``rank·n ..``) of the global batch when ``batched``."""
        draw, start = self.draws[stream], self._draw_start(shape, batched)
        local = counter_bits.uniform_bits(self.stream_seed, stream, draw, bits, shape, start=start, device=device)
        self.draws[stream] = draw + 1
        return local

    def _draw_start(self, shape: tuple[int, ...], batched: bool) -> int:
        """The global index of this rank's first element in a draw over a tensor of local ``shape``."""
        count = 1
        for n in shape:
            count *= n
        return self.rank * count if batched and self.world_size > 1 else 0

    def counter_keys(self, stream: str, shape: tuple[int, ...], *, batched: bool) -> counter_bits.DrawKeys:
        """The keys and start index of the next draw of ``stream`` (counted as made): what ``_counter_draw``
        would hash, for a kernel that computes the words itself."""
        draw = self.draws[stream]
        self.draws[stream] = draw + 1
        return counter_bits.DrawKeys.of(self.stream_seed, stream, draw, self._draw_start(shape, batched))

    def uniform(self, high: int, shape: tuple[int, ...], *, batched: bool, device: torch.device) -> Tensor:
        """Integers uniform in ``[0, high)`` (a power of two) for a tensor of local ``shape``, on ``device``.

        With ``batched`` the first dimension is this rank's shard of the global
        batch: the draw covers the whole batch and this rank gets its slice.
        """
        if high < 1 or high & (high - 1):
            raise ValueError(f"uniform draws need a power-of-two range, got {high}")
        if self.random_bits == "counter":
            local = self._counter_draw("rounding", high.bit_length() - 1, shape, batched, device)
            self.record("noise", local)
            return local
        if batched and self.world_size > 1:
            n = shape[0]
            full = torch.randint(0, high, (n * self.world_size, *shape[1:]), generator=self.rounding_generator,
                                 dtype=torch.int64)
            local = full[self.rank * n:(self.rank + 1) * n]
        else:
            local = torch.randint(0, high, shape, generator=self.rounding_generator, dtype=torch.int64)
        self.record("noise", local)
        return local.to(device)

    def dropout_mask(self, shape: tuple[int, ...], device: torch.device | str, *, batched: bool = False) -> Tensor:
        """A 0/1 int8 keep-mask of ``shape`` on ``device``: one per feature, shared by the batch; with ``batched``
        one per element, ``shape[0]`` being this rank's shard of the global batch (the draw covers the whole
        batch and this rank gets its slice, so 1 and N processes draw the same mask)."""
        if self.random_bits == "counter":
            return self._counter_draw("dropout", 1, shape, batched, device).to(torch.int8)
        if batched and self.world_size > 1:
            n = shape[0]
            full = torch.randint(0, 2, (n * self.world_size, *shape[1:]), generator=self.dropout_generator,
                                 dtype=torch.int8)
            return full[self.rank * n:(self.rank + 1) * n].to(device)
        return torch.randint(0, 2, shape, generator=self.dropout_generator, dtype=torch.int8).to(device)

    def shift_for_width(self, width: int, target_bits: int, *, batched: bool = True) -> int:
        """The rescale shift of a tensor whose local largest magnitude has ``width`` bits: ``width`` is the
        whole batch's (the largest over the ranks) when ``batched``."""
        if batched:
            width = self.reduce_max(width)
        return max(0, width - target_bits)

    def _rescale_shift(self, t: Tensor, target_bits: int, role: str, clip_bits: int, clip_share: int,
                       batched: bool) -> int:
        """The whole-batch shift that fits ``t`` in ``target_bits``, less the clip (see ``rounding``)."""
        if clip_bits < 0 or clip_share < 0:
            raise ValueError(f"clip_bits and clip_share must be >= 0, got {clip_bits} and {clip_share}")
        width = fused.max_abs(t).bit_length()
        if clip_bits == 0 or clip_share == 0:
            return self.shift_for_width(width, target_bits + clip_bits, batched=batched)
        if batched:
            width = self.reduce_max(width)
        counts = [t.numel(), *fused.count_at_least(t, clip_thresholds(width, target_bits, clip_bits))]
        if batched and self.world_size > 1:
            counts = self.reduce_sum(torch.tensor(counts, dtype=torch.int64)).tolist()
        clip = clip_for_share(counts[1:], counts[0], clip_bits, clip_share)
        self.record(f"{role}.clip", clip)
        return max(0, width - target_bits - clip)

    def rounding(self, t: Tensor, target_bits: int, role: str, *, batched: bool = True,
                 clip_bits: int = 0, clip_share: int = 0) -> tuple[str, int, Tensor | None]:
        """``(mode, shift, noise)`` for rescaling ``t`` to ``target_bits``: the whole-batch shift and, for
        stochastic rounding, its draws (made here, in the same order as ``numerics.rescale`` would).

        ``clip_bits`` c: the shift is c smaller than the one that fits the largest magnitude, so the values
        keep c more bits of resolution and the few above ``2**(width - c)`` saturate (docs/numerics.md §2).
        ``clip_share`` k > 0 bounds the saturated share: c is the largest clip up to ``clip_bits`` that saturates
        at most 2**-k of the whole batch's values (counted over all ranks).
        """
        if target_bits < 1:
            raise ValueError(f"target_bits must be >= 1, got {target_bits}")
        mode = self.mode(role)
        shift = self._rescale_shift(t, target_bits, role, clip_bits, clip_share, batched)
        if self.recorder is not None:
            self.record(f"{role}.acc", t)
            self.record(f"{role}.shift", shift)
        noise = None
        if mode == "stochastic" and shift > 0:
            noise = self.uniform(1 << shift, tuple(t.shape), batched=batched, device=t.device)
        return mode, shift, noise

    def rescale(self, t: Tensor | cpu_add.AlignedPair, target_bits: int, role: str, *, batched: bool = True,
                clip_bits: int = 0, clip_share: int = 0) -> tuple[Tensor, int]:
        """``numerics.rescale`` with this runtime's mode for ``role`` and whole-batch bit width.

        Bit-identical to ``numerics.rescale(t, target_bits, mode, bit_width=..., noise=...)`` (with
        ``bit_width`` lowered by ``clip_bits``, see ``rounding``); runs as one fused pass for the bit width and
        one for rounding and clipping.  ``t`` may be an ``AlignedPair`` (a sum of two int8 tensors not yet
        formed): the C passes then read its terms, or where they do not apply the sum is formed first.
        """
        if isinstance(t, cpu_add.AlignedPair):
            if (done := self._rescale_pair(t, target_bits, role, batched, clip_bits, clip_share)) is not None:
                return done
            t = t.total()
        out_dtype = int_dtype_for_bits(target_bits)
        if self.mode(role) == "stochastic" and self.random_bits == "counter" and self.recorder is None \
                and fused.c_loops_allowed() and cpu_round.applies_stochastic(t, 1, target_bits, out_dtype):
            # The CPU's C pass hashes each element's word in the rounding loop: the same draw, no noise tensor.
            shift = self._rescale_shift(t, target_bits, role, clip_bits, clip_share, batched)
            if cpu_round.applies_stochastic(t, shift, target_bits, out_dtype):
                keys = self.counter_keys("rounding", tuple(t.shape), batched=batched)
                return cpu_round.round_clip_stochastic(t, shift, target_bits, keys.start, keys.k1, keys.k2), shift
            # Shift 0 (no draw) or a width of 32 bits (-2**31 present): the compiled chain, the same draw.
            noise = self.uniform(1 << shift, tuple(t.shape), batched=batched, device=t.device) if shift else None
            return fused.round_clip(t, shift, "stochastic", target_bits, out_dtype, noise), shift
        mode, shift, noise = self.rounding(t, target_bits, role, batched=batched, clip_bits=clip_bits,
                                           clip_share=clip_share)
        return fused.round_clip(t, shift, mode, target_bits, out_dtype, noise), shift

    def _rescale_pair(self, t: cpu_add.AlignedPair, target_bits: int, role: str, batched: bool, clip_bits: int,
                      clip_share: int) -> tuple[Tensor, int] | None:
        """``rescale`` of an aligned pair by the C passes over its int8 terms, or None where they do not apply (a
        trace, the share-bounded clip's counts, a generator's draws, the integer-only audit): the same shift, the
        same draw (made in the same order) and the same bits as the int32 sum's rescale."""
        mode = self.mode(role)
        if (self.recorder is not None or (clip_bits and clip_share) or mode not in cpu_add.MODES
                or (mode == "stochastic" and self.random_bits != "counter") or not 1 <= target_bits <= 7
                or not fused.c_loops_allowed()):
            return None
        if clip_bits < 0 or clip_share < 0:
            raise ValueError(f"clip_bits and clip_share must be >= 0, got {clip_bits} and {clip_share}")
        shift = self.shift_for_width(cpu_add.pair_max_abs(t).bit_length(), target_bits + clip_bits, batched=batched)
        keys = self.counter_keys("rounding", tuple(t.shape), batched=batched) if mode == "stochastic" and shift \
            else None
        return cpu_add.pair_round_clip(t, shift, mode, target_bits, keys), shift

    def rescale_static(self, t: Tensor | cpu_add.AlignedPair, target_bits: int, shift: int, role: str) -> Tensor:
        """``t`` shifted right by a fixed ``shift`` (batch-independent inference, docs/numerics.md §12).

        The role's rounding mode, except that ``stochastic`` becomes ``nearest``: inference draws nothing,
        so a prediction depends on its image only.
        """
        mode = self.mode(role)
        if mode == "stochastic":
            mode = "nearest"
        if isinstance(t, cpu_add.AlignedPair):
            t = t.total()
        return fused.round_clip(t, shift, mode, target_bits, int_dtype_for_bits(target_bits))

    def state_dict(self) -> dict[str, Tensor]:
        """Where the random streams stand: their seed (32-bit words, int64) and draw counts (``<stream>_draws``,
        int64), or generator states."""
        if self.random_bits == "counter":
            state = {"stream_seed": torch.tensor([self.stream_seed & 0xFFFFFFFF, self.stream_seed >> 32])}
            state.update({f"{stream}_draws": torch.tensor(n, dtype=torch.int64) for stream, n in self.draws.items()})
            return state
        return {
            "rounding_generator": self.rounding_generator.get_state(),
            "dropout_generator": self.dropout_generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict``; its keys say the scheme, which this runtime takes on (checkpoints written
        with generator streams resume with them)."""
        if "rounding_generator" in state:
            self.rounding_generator.set_state(state["rounding_generator"])
            self.dropout_generator.set_state(state["dropout_generator"])
            self.random_bits = "generator"
            return
        draws = {stream: int(state[f"{stream}_draws"]) for stream in counter_bits.STREAMS}
        lo, hi = (int(w) for w in state["stream_seed"])
        if any(n < 0 for n in draws.values()) or not (0 <= lo < 1 << 32 and 0 <= hi < 1 << 32):
            raise ValueError(f"draw counts must be >= 0 and the seed two 32-bit words, got {draws}, {lo}, {hi}")
        self.draws, self.stream_seed = draws, lo | hi << 32
        self.random_bits = "counter"
