"""Integer models built from shared architecture specs: LeNet and VGG-small-7/8/9."""

from __future__ import annotations

from ..numerics import RoundingPolicy
from ..optim import GbSchedule, UpdateRule
from .architectures import ARCHITECTURES, Architecture, get_architecture
from .integer import DEFAULT_MEANS, DEFAULT_SCALES, IntegerModel

__all__ = ["ARCHITECTURES", "Architecture", "DEFAULT_MEANS", "DEFAULT_SCALES", "IntegerModel", "build",
           "get_architecture"]


def build(name: str, *, seed: int = 0, policy: RoundingPolicy | None = None, schedule: GbSchedule | None = None,
          accumulator_bits: int = 16, total_steps: int | None = None,
          mean: tuple[int, ...] | None = None, gb_offsets: tuple[int, ...] | None = None,
          scale: tuple[int, ...] | None = None, rule: UpdateRule | None = None, softmax: str = "precise",
          full_range_init: bool = True) -> IntegerModel:
    """An ``IntegerModel`` for a name in ``ARCHITECTURES`` (``"lenet"``, ``"vgg-small-7"``, ...)."""
    return IntegerModel(get_architecture(name), seed=seed, policy=policy, schedule=schedule,
                        accumulator_bits=accumulator_bits, total_steps=total_steps, mean=mean, gb_offsets=gb_offsets,
                        scale=scale, rule=rule, softmax=softmax, full_range_init=full_range_init)
