"""Integer augmentation for CIFAR-10 (docs/numerics.md §8): random crop with zero padding and horizontal flip.

Both are index operations on uint8 images: pad once, then gather every image's
window with index tensors computed for the whole batch. No float, no per-image loop.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["crop_flip", "random_crop_flip"]


def _check_images(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"augmentation needs uint8 images (N, H, W, C), got {images.dtype} {tuple(images.shape)}")


def crop_flip(images: Tensor, top: Tensor, left: Tensor, flip: Tensor, padding: int) -> Tensor:
    """Image i is the ``H x W`` window at ``(top[i], left[i])`` of the zero-padded batch, mirrored where ``flip[i]``.

    Offsets lie in ``[0, 2 * padding]``; ``top = left = padding`` with no flip is the identity.
    """
    _check_images(images)
    n, h, w, c = images.shape
    span = 2 * padding
    for label, off in (("top", top), ("left", left)):
        if off.shape != (n,) or (n and (int(off.min()) < 0 or int(off.max()) > span)):
            raise ValueError(f"{label} offsets must be {n} integers in [0, {span}]")
    if flip.shape != (n,):
        raise ValueError(f"flip must hold {n} booleans, got shape {tuple(flip.shape)}")
    device = images.device
    padded = images.new_zeros(n, h + span, w + span, c)
    padded[:, padding:padding + h, padding:padding + w] = images
    top, left, flip = top.to(device), left.to(device), flip.to(device=device, dtype=torch.bool)
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    rows = top[:, None] + ys                                                  # (N, H)
    cols = left[:, None] + torch.where(flip[:, None], w - 1 - xs, xs)         # (N, W)
    batch = torch.arange(n, device=device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]                  # (N, H, W, C)


def random_crop_flip(images: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """A random ``padding``-pixel zero-padded crop and a coin-flip mirror per image, drawn from ``generator``.

    Draw order (fixed, so a seed fixes the result): row offsets, column offsets, flips.
    """
    _check_images(images)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n = images.shape[0]
    on = generator.device
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=on)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=on)
    flip = torch.randint(0, 2, (n,), generator=generator, device=on).bool()
    return crop_flip(images, top, left, flip, padding)
