"""Integer weight initialisation (docs/numerics.md §8): Xavier-scaled exponent, full int8 range draws."""

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
                generator: torch.Generator, full_range: bool = True) -> tuple[torch.Tensor, int]:
    """Int8 mantissas uniform in [-127, 127] and the exponent ``e`` of the Xavier bound.

    As the reference's initialisation, the Xavier range is mapped onto the
    whole int8 range: the real bound ``127 · 2**e`` is 1–2x Xavier's, and one
    LSB step is as small relative to the weights as int8 allows.  With
    ``full_range=False`` the draws stay within ``bound_m`` (64..127, the real
    bound equals Xavier's): the earlier initialisation, kept for ablations.
    """
    bound_m, e = xavier_exponent(fan_in, fan_out)
    bound = 127 if full_range else bound_m
    m = torch.randint(-bound, bound + 1, shape, generator=generator, dtype=torch.int8)
    return m, e
