"""Any data set stored as ``.npz`` with ``x_train, y_train, x_test, y_test``."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .dataset import Dataset

__all__ = ["NPZ_KEYS", "read_npz"]

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_MAX_CLASSES = 2**31  # a larger label is corrupt data, and would wrap in int32 consumers


#: Largest array read from an npz (CIFAR-10's x_train is 154 MB): a larger member, by its zip
#: entry or its .npy header, is refused before anything is decompressed (a decompression bomb).
MAX_NPZ_MEMBER_BYTES = 2**31


def _npy_header(f: BinaryIO) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header (format 1.0 or 2.0, as ``np.savez`` writes)."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = read(f, max_header_size=10_000)
    return shape, dtype


def _check_member_sizes(path: Path) -> None:
    """Refuse an npz whose members declare (zip size or .npy shape) more than ``MAX_NPZ_MEMBER_BYTES``."""
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            size = info.file_size
            if info.filename.endswith(".npy") and size <= MAX_NPZ_MEMBER_BYTES:
                with z.open(info) as f:
                    shape, dtype = _npy_header(f)
                size = max(size, int(np.prod(shape, dtype=object)) * dtype.itemsize)
            if size > MAX_NPZ_MEMBER_BYTES:
                raise ValueError(f"{path}: member {info.filename} holds {size} bytes, above the "
                                 f"{MAX_NPZ_MEMBER_BYTES} byte cap (MAX_NPZ_MEMBER_BYTES)")


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        _check_member_sizes(path)
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise ValueError(f"{path}: missing arrays {', '.join(missing)} (has {', '.join(f.files) or 'none'})")
            return {k: f[k] for k in NPZ_KEYS}
    except ValueError as exc:
        if str(exc).startswith(f"{path}:"):
            raise
        raise ValueError(f"{path}: unreadable array ({exc})") from exc
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from exc


def read_npz(path: str | Path, name: str | None = None) -> Dataset:
    """The data set in ``path``: uint8 images ``(N, H, W)`` or ``(N, H, W, C)``, integer labels.

    ``num_classes`` is the largest label + 1 (over both splits); grayscale images gain ``C = 1``.
    """
    path = Path(path)
    arrays = _load_arrays(path)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim not in (3, 4):
            raise ValueError(f"{path}: x_{split} must be uint8 (N, H, W) or (N, H, W, C), got {x.dtype} {x.shape}")
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise ValueError(f"{path}: y_{split} must be a 1-D integer array, got {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise ValueError(f"{path}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        if len(y) and int(y.min()) < 0:
            raise ValueError(f"{path}: y_{split} has a negative label {int(y.min())}")
        if len(y) and int(y.max()) >= _MAX_CLASSES:
            raise ValueError(f"{path}: y_{split} has label {int(y.max())}, not below {_MAX_CLASSES}")
        arrays[f"x_{split}"] = x[..., None] if x.ndim == 3 else x
        arrays[f"y_{split}"] = y.astype(np.int64)
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise ValueError(f"{path}: train images are {arrays['x_train'].shape[1:]} but test images are "
                         f"{arrays['x_test'].shape[1:]}")
    if len(arrays["y_train"]) == 0:
        raise ValueError(f"{path}: y_train is empty")
    num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max(initial=0))) + 1
    return Dataset(**arrays, name=name or path.stem, num_classes=num_classes)
