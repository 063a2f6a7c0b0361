"""The integer weight update and the gradient-bit-width schedule (DESIGN §1.5–1.6).

There is no multiplicative learning rate: the gradient is rescaled to ``gb``
bits and subtracted, so ``gb`` is the step size.  The schedule is expressed
as fractions of all training steps and applied per step.

With 16-bit weight accumulators the gradient is rescaled to ``gb + 8`` bits
of the int16 master weight, so ``gb`` may go down to -7: ``gb <= 0`` is a
step smaller than one int8 weight LSB, which only the accumulator can hold.
That lets a schedule decay by more than a factor of two per phase (e.g.
``3,0,-3``: steps 8x and 64x smaller, close to a float lr decayed x0.1, x0.01).
"""

from __future__ import annotations

from dataclasses import dataclass

from .kernels import fused
from .nn.module import IntParameter
from .runtime import Runtime

__all__ = ["GB_RANGE", "GbSchedule", "apply_update"]

#: The gb values a schedule may hold; values below 1 need 16-bit weight accumulators.
GB_RANGE = range(-7, 8)


@dataclass(frozen=True)
class GbSchedule:
    """``gb = values[i]`` from fraction ``boundaries[i-1]`` of all steps on (reference: 5, 4, 3 at 50 %, 75 %)."""

    values: tuple[int, ...] = (5, 4, 3)
    boundaries: tuple[float, ...] = (0.5, 0.75)

    def __post_init__(self) -> None:
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError("a gb schedule needs exactly one more value than boundaries")
        if any(v not in GB_RANGE for v in self.values):
            raise ValueError(f"gradient bit widths must be in -7..7 (below 1 only with 16-bit weight accumulators), "
                             f"got {self.values}")
        if any(a >= b for a, b in zip(self.boundaries, self.boundaries[1:])) or any(not 0 < b < 1 for b in self.boundaries):
            raise ValueError(f"boundaries must be increasing fractions in (0, 1), got {self.boundaries}")

    def check_accumulator_bits(self, accumulator_bits: int, offsets: tuple[int, ...] = ()) -> None:
        """Raise unless every gb (plus each per-layer offset) fits ``accumulator_bits``.

        int8 weights cannot take a step below one LSB (gb >= 1); the int16
        accumulator takes gb down to -7; nothing takes more than 7.
        """
        for offset in set(offsets) or {0}:
            values = [v + offset for v in self.values]
            where = f"gb schedule {self}" + (f" with layer offset {offset:+d}" if offset else "")
            if any(v not in GB_RANGE for v in values):
                raise ValueError(f"{where} gives gb {values}, outside -7..7")
            if accumulator_bits == 8 and min(values) < 1:
                raise ValueError(f"{where} has gb <= 0 (a step below one int8 weight LSB), which needs "
                                 f"16-bit weight accumulators (--accumulator-bits 16)")

    @staticmethod
    def parse_offsets(text: str) -> tuple[int, ...]:
        """``"0,0,0,0,0,0,2"``: one gb offset per weight layer, input to output (``""``: none)."""
        text = text.strip()
        if not text:
            return ()
        try:
            return tuple(int(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"gb offsets must be comma-separated integers, one per weight layer, got {text!r}") from None

    @classmethod
    def constant(cls, gb: int) -> "GbSchedule":
        return cls((gb,), ())

    @classmethod
    def parse(cls, text: str) -> "GbSchedule":
        """``"5,4,3@0.5,0.75"`` or a single ``"5"``."""
        values, _, bounds = text.partition("@")
        return cls(tuple(int(v) for v in values.split(",")),
                   tuple(float(b) for b in bounds.split(",")) if bounds else ())

    def gb_at(self, step: int, total_steps: int | None) -> int:
        """The gradient bit width for 0-based ``step`` of ``total_steps`` (first value if unknown)."""
        if not total_steps:
            return self.values[0]
        # step / total >= b, in integers: boundaries are compared as step * 10**6 >= b * 10**6 * total.
        index = sum(step * 1_000_000 >= round(b * 1_000_000) * total_steps for b in self.boundaries)
        return self.values[index]

    def __str__(self) -> str:
        if not self.boundaries:
            return str(self.values[0])
        return ",".join(map(str, self.values)) + "@" + ",".join(f"{b:g}" for b in self.boundaries)


def apply_update(param: IntParameter, gb: int, runtime: Runtime) -> None:
    """``W = clip(W - rescale(G, gb))`` (8-bit) or the int16 accumulate-and-refresh of §1.6.

    Rescale, subtraction and clip run as one fused pass (``kernels.fused.update``).
    """
    if param.grad is None:
        raise RuntimeError(f"{param!r} has no gradient to apply")
    if param.accumulator_bits == 8:
        if gb < 1:
            raise ValueError(f"gb {gb} < 1 needs a 16-bit weight accumulator; {param!r} has 8 bits")
        mode, shift, noise = runtime.rounding(param.grad, gb, "gradient", batched=False)
        param.m = fused.update(param.m, param.grad, shift, mode, gb, 127, noise)
    else:
        assert param.master is not None
        if gb + 8 < 1:
            raise ValueError(f"gb must be >= -7 with 16-bit weight accumulators, got {gb}")
        mode, shift, noise = runtime.rounding(param.grad, gb + 8, "gradient", batched=False)
        param.master = fused.update(param.master, param.grad, shift, mode, gb + 8, 32767, noise)
        param.refresh_datapath()
    param.grad = None
