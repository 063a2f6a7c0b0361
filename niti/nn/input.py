"""uint8 images to the int8 datapath (DESIGN §1.8): integer mean subtraction, then rescale."""

from __future__ import annotations

import torch
from torch import Tensor

from ..numerics import IntTensor
from ..runtime import Runtime

__all__ = ["images_to_int8"]


def images_to_int8(images: Tensor, mean: Tensor, runtime: Runtime) -> IntTensor:
    """``rescale(images - mean, 7)`` with the activation rounding mode; exponent 0 = pixel units."""
    centred = images.to(torch.int16) - mean.to(device=images.device, dtype=torch.int16)
    m, shift = runtime.rescale(centred, 7, "activation")
    return IntTensor(m, shift)
