"""Integer models built from shared architecture specs: LeNet and VGG-small-7/8/9."""

from __future__ import annotations

from ..numerics import RoundingPolicy
from ..optim import GbSchedule
from .architectures import ARCHITECTURES, Architecture, get_architecture
from .integer import DEFAULT_MEANS, IntegerModel

__all__ = ["ARCHITECTURES", "Architecture", "DEFAULT_MEANS", "IntegerModel", "build", "check_pixel_mean",
           "get_architecture"]


def check_pixel_mean(mean: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless ``mean`` is integers in [0, 255] (a mean of uint8 pixels)."""
    bad = [m for m in mean if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m <= 255]
    if bad:
        raise ValueError(f"input mean must be integers in [0, 255] (uint8 pixel means), got {tuple(mean)}")


def build(name: str, *, seed: int = 0, policy: RoundingPolicy | None = None, schedule: GbSchedule | None = None,
          accumulator_bits: int = 8, total_steps: int | None = None,
          mean: tuple[int, ...] | None = None, gb_offsets: tuple[int, ...] | None = None) -> IntegerModel:
    """An ``IntegerModel`` for ``"lenet"``, ``"vgg-small-7"``, ``"vgg-small-8"`` or ``"vgg-small-9"``.

    ``mean`` (integer pixel means, one per channel) must lie in [0, 255]: the input subtracts it in int16.
    """
    if mean is not None:
        check_pixel_mean(mean)
    return IntegerModel(get_architecture(name), seed=seed, policy=policy, schedule=schedule,
                        accumulator_bits=accumulator_bits, total_steps=total_steps, mean=mean, gb_offsets=gb_offsets)
