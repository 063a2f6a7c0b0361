"""The in-memory data set: uint8 NHWC images and int64 labels, checked once where they enter."""

from __future__ import annotations

from dataclasses import dataclass

from math import isqrt

import numpy as np
import torch

from ..numerics import INPUT_SCALE_BITS

__all__ = ["DataNotFoundError", "Dataset", "channel_means", "split_validation"]


class DataNotFoundError(ValueError):
    """No copy of a data set was found (and none could be downloaded); the message says where it looked."""


def _frozen(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


def _is_images(x: object) -> bool:
    from .folder import FolderImages

    return isinstance(x, (np.ndarray, FolderImages))


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A train/test split: images uint8 ``(N, H, W, C)``, labels int64 ``(N,)`` in ``[0, num_classes)``.

    Images are numpy arrays, or ``FolderImages`` (an image folder, decoded on demand) in ImageNet mode.

    The arrays are read-only views, so a loaded data set cannot be changed by accident.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int

    def __post_init__(self) -> None:
        where = f"data set {self.name!r}"
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not _is_images(x) or x.dtype != np.uint8 or x.ndim != 4:
                raise ValueError(f"{where}: x_{split} must be a uint8 array (N, H, W, C), got "
                                 f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
            if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.ndim != 1:
                raise ValueError(f"{where}: y_{split} must be an int64 array (N,), got "
                                 f"{getattr(y, 'dtype', type(y).__name__)} {getattr(y, 'shape', '')}")
            if len(x) != len(y):
                raise ValueError(f"{where}: {len(x)} {split} images but {len(y)} {split} labels")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(f"{where}: {split} labels span [{int(y.min())}, {int(y.max())}], "
                                 f"outside [0, {self.num_classes})")
            if isinstance(x, np.ndarray):  # folder images are decoded on demand: nothing to freeze
                object.__setattr__(self, f"x_{split}", _frozen(x))
            object.__setattr__(self, f"y_{split}", _frozen(y))
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{where}: train images are {self.x_train.shape[1:]} but test images are "
                             f"{self.x_test.shape[1:]}")
        if len(self.x_train) == 0:
            raise ValueError(f"{where}: the training split is empty")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, num_classes={self.num_classes}, train={self.x_train.shape}, "
                f"test={self.x_test.shape})")


def split_validation(ds: Dataset, n_val: int = 5000) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_x, train_y, val_x, val_y)``: the LAST ``n_val`` training images are the validation split.

    Deterministic and seed-free, so every run and every rank holds out the same
    images; ``n_val=0`` gives empty validation arrays. The results are views.
    """
    n = len(ds.x_train)
    if not 0 <= n_val < n:
        raise ValueError(f"n_val must be in [0, {n}) for the {n} training images of {ds.name!r}, got {n_val}")
    cut = n - n_val
    return ds.x_train[:cut], ds.y_train[:cut], ds.x_train[cut:], ds.y_train[cut:]


def _stats_array(x: object) -> np.ndarray:
    """The images input statistics are computed from: all of an array, an evenly spaced sample of a folder."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if hasattr(x, "stats_sample"):
        return x.stats_sample()
    return x  # type: ignore[return-value]


def channel_means(x: np.ndarray | torch.Tensor) -> tuple[int, ...]:
    """Per-channel mean of uint8 ``(N, H, W, C)`` images, rounded half up, from exact integer sums (docs/numerics.md §8)."""
    x = _stats_array(x)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"channel_means needs uint8 images (N, H, W, C), got {x.dtype} {x.shape}")
    count = x.shape[0] * x.shape[1] * x.shape[2]
    if count == 0:
        raise ValueError(f"channel_means needs at least one pixel, got images of shape {x.shape}")
    # One strided sum per channel: ~10x faster in numpy than a reduction over axes (0, 1, 2).
    # uint64 holds 255 * count exactly for any data set that fits in memory.
    sums = [int(x[..., c].sum(dtype=np.uint64)) for c in range(x.shape[3])]
    return tuple((2 * s + count) // (2 * count) for s in sums)  # floor(s / count + 1/2), integers only


def channel_scales(x: np.ndarray | torch.Tensor, mean: tuple[int, ...]) -> tuple[int, ...]:
    """Per-channel ``round(2**INPUT_SCALE_BITS / std)`` of uint8 images about the integer ``mean``.

    ``std`` is the root mean square of ``pixel - mean`` in pixel units, from exact
    integer sums and an integer square root (no floats).  It is floored at one
    pixel unit, so a constant channel gets the identity scale ``2**INPUT_SCALE_BITS``.
    """
    x = _stats_array(x)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != len(mean):
        raise ValueError(f"channel_scales needs uint8 images (N, H, W, {len(mean)}), got {x.dtype} {x.shape}")
    count = x.shape[0] * x.shape[1] * x.shape[2]
    if count == 0:
        raise ValueError(f"channel_scales needs at least one pixel, got images of shape {x.shape}")
    scales = []
    for c, mu in enumerate(mean):
        counts = np.bincount(x[..., c].reshape(-1), minlength=256)  # exact: how many pixels take each value
        ss = sum(int(n) * (v - mu) ** 2 for v, n in enumerate(counts.tolist()))  # sum of (pixel - mean)**2
        ss = max(ss, count)  # std >= 1 pixel unit
        # round(2**B · sqrt(count / ss)) = round(sqrt(2**2B · count / ss)), via isqrt with one extra bit.
        scales.append((isqrt((count << (2 * INPUT_SCALE_BITS + 2)) // ss) + 1) // 2)
    return tuple(scales)
