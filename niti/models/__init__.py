"""Integer models converted from torch modules: the built-in zoo (LeNet, VGG-small-7/8/9) and any user CNN."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..numerics import DEFAULT_ACT_CLIP_BITS, DEFAULT_ACT_CLIP_SHARE, RoundingPolicy
from ..optim import GbSchedule, UpdateRule
from .architectures import ARCHITECTURES, Architecture, get_architecture, import_factory, is_factory_path
from .convert import SUPPORTED, UnsupportedModule, convert
from .integer import DEFAULT_MEANS, DEFAULT_SCALES, IntegerModel, check_pixel_mean

__all__ = ["ARCHITECTURES", "Architecture", "DEFAULT_MEANS", "DEFAULT_SCALES", "IntegerModel", "SUPPORTED",
           "UnsupportedModule", "build", "check_pixel_mean", "convert", "from_torch", "get_architecture",
           "import_factory", "is_factory_path"]


def build(name: str, *, seed: int = 0, policy: RoundingPolicy | None = None, schedule: GbSchedule | None = None,
          accumulator_bits: int = 16, total_steps: int | None = None,
          mean: tuple[int, ...] | None = None, gb_offsets: tuple[int, ...] | Mapping[str, int] | None = None,
          scale: tuple[int, ...] | None = None, rule: UpdateRule | None = None, softmax: str = "precise",
          full_range_init: bool = False, input_shape: tuple[int, int, int] | None = None,
          inference: str = "static", random_bits: str = "counter", weight_headroom: int = 0,
          dropout: str = "sample", act_clip_bits: int = DEFAULT_ACT_CLIP_BITS,
          act_clip_share: int = DEFAULT_ACT_CLIP_SHARE, end_headroom: int = 0) -> IntegerModel:
    """An ``IntegerModel`` for a name in ``ARCHITECTURES`` (``"lenet"``, ``"vgg-small-7"``, ...) or a
    ``MODULE:FACTORY`` path (then ``input_shape`` (H, W, C) is required).

    ``mean`` (integer pixel means, one per channel) must lie in [0, 255]; ``scale`` (``round(2**12 / std)``
    per channel) in [1, 4096]; both default to the model's data set's.  ``gb_offsets``: one per parameter
    tensor, or a mapping from parameter or layer names.  ``inference``: ``"static"`` (calibrated shifts, a
    prediction depends on its image only) or ``"batch"`` (each batch's own shifts, as in training).
    ``random_bits``: ``"counter"`` (hashed, device-independent) or ``"generator"`` (the first version's).
    ``weight_headroom``: bits of room the convolution and linear int16 masters get above their initial range;
    ``end_headroom``: bits more for the first and the last of them (docs/numerics.md §6).
    ``dropout``: ``"sample"`` (a mask per element, as torch's) or ``"batch"`` (one per feature for the whole batch,
    the NITI reference's).  ``act_clip_bits``: bits of resolution every activation rescale but the logits' gains
    by saturating its batch's largest values; ``act_clip_share`` k > 0 clips each batch only as far as saturates at
    most 2**-k of its values (docs/numerics.md §2).
    """
    return IntegerModel(get_architecture(name, input_shape), seed=seed, policy=policy, schedule=schedule,
                        accumulator_bits=accumulator_bits, total_steps=total_steps, mean=mean, gb_offsets=gb_offsets,
                        scale=scale, rule=rule, softmax=softmax, full_range_init=full_range_init,
                        inference=inference, random_bits=random_bits, weight_headroom=weight_headroom,
                        dropout=dropout, act_clip_bits=act_clip_bits, act_clip_share=act_clip_share,
                        end_headroom=end_headroom)


def from_torch(module: torch.nn.Module, input_shape: tuple[int, int, int], *, seed: int = 0,
               name: str | None = None, **options: object) -> IntegerModel:
    """The integer twin of ``module`` (traced with ``torch.fx``) for uint8 NHWC images of ``input_shape`` (H, W, C).

    ``options`` are ``IntegerModel``'s (``policy``, ``schedule``, ``accumulator_bits``, ``total_steps``,
    ``mean``, ``scale``, ``gb_offsets``, ``rule``, ``softmax``, ``full_range_init``, ``dropout``).  The module
    itself is not changed and stays usable as the float twin.  Unsupported operations raise ``UnsupportedModule``
    (a ``ValueError``) naming the operation and where it is.
    """
    from .convert import output_shape

    shape = tuple(int(v) for v in input_shape)
    logits = output_shape(module, shape)  # type: ignore[arg-type]
    arch = Architecture(name or type(module).__name__, shape, logits[1] if len(logits) == 2 else 0,  # type: ignore[arg-type]
                        None, lambda: module)
    return IntegerModel(arch, seed=seed, **options)  # type: ignore[arg-type]
