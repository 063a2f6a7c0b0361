"""uint8 images to the int8 datapath (docs/numerics.md §8): integer mean and std normalisation, then rescale."""

from __future__ import annotations

import torch
from torch import Tensor

from ..numerics import INPUT_SCALE_BITS, IntTensor
from ..runtime import Runtime

__all__ = ["images_to_int8"]


def images_to_int8(images: Tensor, mean: Tensor, runtime: Runtime, scale: Tensor | None = None,
                   static_shift: int | None = None) -> IntTensor:
    """``rescale((images - mean) · scale, 7)`` with the activation rounding mode, exponent ``shift - 12``.

    ``static_shift`` replaces the batch's own shift (batch-independent inference, docs/numerics.md §12).

    The real value is ``(pixel - mean) / std``, as the float twin's normalised
    input.  ``scale=None`` means ``2**12`` (std 1: raw pixel units, the form
    of checkpoints written before the scale existed); it rounds identically.
    """
    centred = images.to(torch.int32) - mean.to(device=images.device, dtype=torch.int32)
    if scale is not None:
        centred = centred * scale.to(device=images.device, dtype=torch.int32)  # |.| <= 255 · 2**12
    else:
        centred = centred << INPUT_SCALE_BITS
    if static_shift is not None:
        return IntTensor(runtime.rescale_static(centred, 7, static_shift, "activation"),
                         static_shift - INPUT_SCALE_BITS)
    m, shift = runtime.rescale(centred, 7, "activation")
    return IntTensor(m, shift - INPUT_SCALE_BITS)
