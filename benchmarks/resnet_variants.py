"""ResNet-20 variants for the `resnet-norm` suite of train_suites.py (issue 14's normalisation comparison).

``resnet20_no_norm`` is niti's built-in ResNet-20 with every BatchNorm2d replaced by Identity: what the
integer model's own per-layer power-of-two rescaling does without any normalisation layer.
"""

from torch import nn

from niti.models.zoo import resnet_20


def _strip_norm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        else:
            _strip_norm(child)
    return module


def resnet20_no_norm() -> nn.Module:
    return _strip_norm(resnet_20())
