"""Which network a run trains: a built-in name (``lenet``, ``vgg-small-7``, ...) or a user's ``MODULE:FACTORY``.

An ``Architecture`` names a factory returning a ``torch.nn.Module`` and the
input it takes.  The integer model converts that module
(``niti.models.convert``); the float twin trains it as it is; so both sides
of every comparison are the same network by construction.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import zoo

__all__ = ["Architecture", "ARCHITECTURES", "get_architecture", "import_factory", "is_factory_path"]


@dataclass(frozen=True)
class Architecture:
    """A network: ``name`` (a zoo name or ``MODULE:FACTORY``), its input ``(H, W, C)``, classes and data set."""

    name: str
    input_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int
    dataset: str | None
    factory: Callable[[], torch.nn.Module] = field(compare=False, repr=False)

    def module(self) -> torch.nn.Module:
        """A fresh module from the factory; torch's global generator is left as it was."""
        with torch.random.fork_rng(devices=[]):
            module = self.factory()
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"factory {self.name!r} returned {type(module).__name__}, not a torch.nn.Module")
        return module


def _zoo(name: str, factory: Callable[[], torch.nn.Module], input_shape: tuple[int, int, int],
         dataset: str | None, classes: int = 10) -> Architecture:
    return Architecture(name, input_shape, classes, dataset, factory)


ARCHITECTURES: dict[str, Architecture] = {
    "lenet": _zoo("lenet", zoo.lenet, (28, 28, 1), "mnist"),
    "vgg-small-7": _zoo("vgg-small-7", zoo.vgg_small_7, (32, 32, 3), "cifar10"),
    "vgg-small-8": _zoo("vgg-small-8", zoo.vgg_small_8, (32, 32, 3), "cifar10"),
    "vgg-small-7-quarter": _zoo("vgg-small-7-quarter", zoo.vgg_small_7_quarter, (32, 32, 3), "cifar10"),
    "vgg-small-9": _zoo("vgg-small-9", zoo.vgg_small_9, (32, 32, 3), "cifar10"),
    "resnet-20": _zoo("resnet-20", zoo.resnet_20, (32, 32, 3), "cifar10"),
    # ImageNet: no default data set (an ImageFolder directory is given with --dataset).
    "resnet-18": _zoo("resnet-18", zoo.resnet_18, (224, 224, 3), None, 1000),
}


def is_factory_path(name: str) -> bool:
    """``"pkg.mod:factory"`` (a user model) rather than a built-in name."""
    return ":" in name


def import_factory(path: str) -> Callable[[], torch.nn.Module]:
    """The callable at ``MODULE:FACTORY`` (the current directory is importable, as for ``python -m``)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"a model path must be MODULE:FACTORY (e.g. mynets:small_cnn), got {path!r}")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for model {path!r}: {exc}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model {path!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"model {path!r}: {attr!r} is not callable (a factory returning a torch.nn.Module)")
    return obj


def get_architecture(name: str, input_shape: tuple[int, int, int] | None = None) -> Architecture:
    """The built-in ``name``, or the user model at ``MODULE:FACTORY`` for images of ``input_shape`` (H, W, C).

    A user model's class count is read from its output shape.
    """
    if not is_factory_path(name):
        try:
            arch = ARCHITECTURES[name]
        except KeyError:
            raise ValueError(f"unknown model {name!r}; choose one of {sorted(ARCHITECTURES)} or give "
                             "MODULE:FACTORY (a Python path to a function returning a torch.nn.Module)") from None
        if input_shape is not None and tuple(input_shape) != arch.input_shape:
            raise ValueError(f"model {name} takes {arch.input_shape} images, not {tuple(input_shape)}")
        return arch
    if input_shape is None:
        raise ValueError(f"model {name!r} is a user module: its input shape (H, W, C) must be given "
                         "(the CLI takes it from the data set)")
    from .convert import output_shape

    factory = import_factory(name)
    arch = Architecture(name, tuple(int(v) for v in input_shape), 0, None, factory)  # type: ignore[arg-type]
    shape = output_shape(arch.module(), arch.input_shape)
    if len(shape) != 2 or shape[1] < 2:
        raise ValueError(f"model {name!r} must return (batch, classes) logits with >= 2 classes, got {shape}")
    return Architecture(name, arch.input_shape, shape[1], None, factory)
