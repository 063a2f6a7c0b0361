"""Integer weight initialisation (DESIGN §1.8): Xavier-like bound, integer draws."""

from __future__ import annotations

from math import isqrt

import torch

__all__ = ["xavier_exponent", "xavier_int8"]


def xavier_exponent(fan_in: int, fan_out: int) -> tuple[int, int]:
    """``(bound_m, e)``: the Xavier bound sqrt(6 / (fan_in + fan_out)) as ``bound_m · 2**e``.

    ``e`` is chosen so that ``bound_m`` fills 7 bits (64 ≤ bound_m ≤ 127);
    computed with integer square roots, no floats.
    """
    fans = fan_in + fan_out
    if fans <= 0:
        raise ValueError(f"fan_in + fan_out must be positive, got {fans}")
    e = 0
    while True:
        # floor(sqrt(6 / fans) / 2**e) for e <= 0, i.e. isqrt(6 * 4**-e // fans).
        bound_m = isqrt(6 * 4 ** (-e) // fans)
        if bound_m >= 64:
            return min(bound_m, 127), e
        e -= 1


def xavier_int8(shape: tuple[int, ...], fan_in: int, fan_out: int,
                generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """Int8 mantissas uniform in [-bound_m, bound_m] and their exponent."""
    bound_m, e = xavier_exponent(fan_in, fan_out)
    m = torch.randint(-bound_m, bound_m + 1, shape, generator=generator, dtype=torch.int8)
    return m, e
