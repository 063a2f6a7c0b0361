"""The built-in networks as ordinary ``torch.nn`` modules: LeNet, the NITI paper's VGG-small family, ResNets.

They go through ``niti.models.convert`` like any user model (the integer
side) and are trained as they are (the float side).  This file imports
torch only, so the float benchmark can load it in an interpreter that never
imports niti.  LeNet and VGG have no biases, as in the NITI paper; the ResNets are He et al.'s
(batch norm after every convolution, a biased linear classifier).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

__all__ = ["BasicBlock", "lenet", "resnet", "resnet_18", "resnet_20", "vgg_small", "vgg_small_7",
           "vgg_small_7_quarter", "vgg_small_8", "vgg_small_9"]


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


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm, added to the input (a 1×1 strided projection with batch norm
    when the shape changes: He et al.'s option B), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU()

    def forward(self, x):  # noqa: ANN001, ANN201 - traced by torch.fx
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def resnet(stem: nn.Module, widths: list, blocks: list, classes: int) -> nn.Module:
    """``stem``, then stages of ``blocks[i]`` basic blocks of ``widths[i]`` channels (stride 2 from the second
    stage on), global average pooling and a linear classifier."""
    layers, cin = OrderedDict(stem=stem), widths[0]
    for i, (w, b) in enumerate(zip(widths, blocks)):
        stage = [BasicBlock(cin, w, 1 if i == 0 else 2)] + [BasicBlock(w, w) for _ in range(b - 1)]
        layers[f"layer{i + 1}"] = nn.Sequential(*stage)
        cin = w
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(cin, classes)
    return nn.Sequential(layers)


def resnet_20() -> nn.Module:
    """He et al. (2016) ResNet-20 for 32×32 CIFAR images: 3 stages × 3 blocks of 16, 32, 64 channels."""
    stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
    return resnet(stem, [16, 32, 64], [3, 3, 3], 10)


def resnet_18() -> nn.Module:
    """He et al. (2016) ResNet-18 for 224×224 ImageNet images (1000 classes), torchvision's layout."""
    stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.MaxPool2d(3, 2, 1))
    return resnet(stem, [64, 128, 256, 512], [2, 2, 2, 2], 1000)
