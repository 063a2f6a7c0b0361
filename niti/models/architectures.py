"""Architecture specs shared by the integer models and their float twins.

A spec is a tuple of layer descriptions; ``niti.models.integer`` and
``niti.baseline`` each turn it into their own layers, so both sides of every
comparison have exactly the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Architecture", "ARCHITECTURES", "get_architecture"]

#: ("conv", out_channels, kernel, padding) | ("pool", k) | ("relu",) | ("flatten",) | ("dropout",) | ("linear", out)
LayerSpec = tuple


@dataclass(frozen=True)
class Architecture:
    name: str
    input_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int
    layers: tuple[LayerSpec, ...]
    dataset: str


def _vgg_small(widths: list) -> tuple[LayerSpec, ...]:
    layers: list[LayerSpec] = []
    for w in widths:
        layers += [("pool", 2)] if w == "M" else [("conv", w, 3, 1), ("relu",)]
    return tuple(layers) + (("flatten",), ("dropout",), ("linear", 10))


ARCHITECTURES: dict[str, Architecture] = {
    "lenet": Architecture(
        "lenet", (28, 28, 1), 10,
        (("conv", 20, 5, 0), ("relu",), ("pool", 2), ("conv", 50, 5, 0), ("relu",), ("pool", 2),
         ("flatten",), ("linear", 500), ("relu",), ("linear", 10)),
        "mnist"),
    # The reference's VGG-small widths (the NITI paper's VGG-small).
    "vgg-small-7": Architecture("vgg-small-7", (32, 32, 3), 10,
                                _vgg_small([128, 128, "M", 256, 256, "M", 512, 512, "M"]), "cifar10"),
    "vgg-small-8": Architecture("vgg-small-8", (32, 32, 3), 10,
                                _vgg_small([128, 128, 128, "M", 256, 256, "M", 512, 512, "M"]), "cifar10"),
    # VGG-small-7's shape with a quarter of the channels: a CIFAR-10 model that converges on a 2-core CPU.
    "vgg-small-7-quarter": Architecture("vgg-small-7-quarter", (32, 32, 3), 10,
                                        _vgg_small([32, 32, "M", 64, 64, "M", 128, 128, "M"]), "cifar10"),
    "vgg-small-9": Architecture("vgg-small-9", (32, 32, 3), 10,
                                _vgg_small([128, 128, 128, "M", 256, 256, 256, "M", 512, 512, "M"]), "cifar10"),
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(ARCHITECTURES)}") from None


def trace_shapes(arch: Architecture) -> list[tuple[LayerSpec, tuple[int, ...]]]:
    """Each layer with its input shape (H, W, C) or (features,), for builders that need fan-in."""
    h, w, c = arch.input_shape
    shape: tuple[int, ...] = (h, w, c)
    out = []
    for spec in arch.layers:
        out.append((spec, shape))
        kind = spec[0]
        if kind == "conv":
            _, oc, k, p = spec
            shape = (shape[0] + 2 * p - k + 1, shape[1] + 2 * p - k + 1, oc)
        elif kind == "pool":
            shape = (shape[0] // spec[1], shape[1] // spec[1], shape[2])
        elif kind == "flatten":
            shape = (shape[0] * shape[1] * shape[2],)
        elif kind == "linear":
            shape = (spec[1],)
    return out
