"""The built-in networks as ordinary ``torch.nn`` modules: LeNet and the NITI paper's VGG-small family.

They go through ``niti.models.convert`` like any user model (the integer
side) and are trained as they are (the float side).  This file imports
torch only, so the float benchmark can load it in an interpreter that never
imports niti.  No biases, as in the NITI paper.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

__all__ = ["lenet", "vgg_small", "vgg_small_7", "vgg_small_7_quarter", "vgg_small_8", "vgg_small_9"]


def lenet() -> nn.Module:
    """LeNet-5 for 28×28 grey images: two 5×5 convolutions with max pooling, then 500 and 10 units."""
    features = nn.Sequential(nn.Conv2d(1, 20, 5, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(20, 50, 5, bias=False), nn.ReLU(), nn.MaxPool2d(2))
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 50, 500, bias=False), nn.ReLU(),
                               nn.Linear(500, 10, bias=False))
    return nn.Sequential(OrderedDict(features=features, classifier=classifier))


def vgg_small(widths: list, image_size: int = 32, in_channels: int = 3, classes: int = 10) -> nn.Module:
    """3×3 convolutions (``widths``; ``"M"`` is a 2×2 max pool), then dropout and one linear classifier."""
    layers: list[nn.Module] = []
    c, size = in_channels, image_size
    for w in widths:
        if w == "M":
            layers.append(nn.MaxPool2d(2))
            size //= 2
        else:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.ReLU()]
            c = w
    classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(size * size * c, classes, bias=False))
    return nn.Sequential(OrderedDict(features=nn.Sequential(*layers), classifier=classifier))


def vgg_small_7() -> nn.Module:
    """The NITI paper's VGG-small (the reference's widths)."""
    return vgg_small([128, 128, "M", 256, 256, "M", 512, 512, "M"])


def vgg_small_8() -> nn.Module:
    return vgg_small([128, 128, 128, "M", 256, 256, "M", 512, 512, "M"])


def vgg_small_9() -> nn.Module:
    return vgg_small([128, 128, 128, "M", 256, 256, 256, "M", 512, 512, "M"])


def vgg_small_7_quarter() -> nn.Module:
    """VGG-small-7's shape with a quarter of the channels: a CIFAR-10 model that converges on a 2-core CPU."""
    return vgg_small([32, 32, "M", 64, 64, "M", 128, 128, "M"])
