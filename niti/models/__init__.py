"""Integer models built from shared architecture specs: LeNet and VGG-small-7/8/9."""

from __future__ import annotations

from ..numerics import RoundingPolicy
from ..optim import GbSchedule, UpdateRule
from .architectures import ARCHITECTURES, Architecture, get_architecture
from .integer import DEFAULT_MEANS, DEFAULT_SCALES, IntegerModel, check_pixel_mean

__all__ = ["ARCHITECTURES", "Architecture", "DEFAULT_MEANS", "DEFAULT_SCALES", "IntegerModel", "build",
           "check_pixel_mean", "get_architecture"]


def build(name: str, *, seed: int = 0, policy: RoundingPolicy | None = None, schedule: GbSchedule | None = None,
          accumulator_bits: int = 16, total_steps: int | None = None,
          mean: tuple[int, ...] | None = None, gb_offsets: tuple[int, ...] | None = None,
          scale: tuple[int, ...] | None = None, rule: UpdateRule | None = None, softmax: str = "precise",
          full_range_init: bool = True) -> IntegerModel:
    """An ``IntegerModel`` for a name in ``ARCHITECTURES`` (``"lenet"``, ``"vgg-small-7"``, ...).

    ``mean`` (integer pixel means, one per channel) must lie in [0, 255]; ``scale`` (``round(2**12 / std)``
    per channel) in [1, 4096]; both default to the model's data set's.
    """
    return IntegerModel(get_architecture(name), seed=seed, policy=policy, schedule=schedule,
                        accumulator_bits=accumulator_bits, total_steps=total_steps, mean=mean, gb_offsets=gb_offsets,
                        scale=scale, rule=rule, softmax=softmax, full_range_init=full_range_init)
