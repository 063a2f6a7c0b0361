"""MNIST in its original form: the four IDX files, gzip-compressed or not."""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np

from .dataset import Dataset

__all__ = ["MNIST_FILES", "find_mnist", "read_idx", "read_mnist"]

# Role -> file name as distributed (each may also sit uncompressed, without ".gz").
MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
_IMAGES_MAGIC, _LABELS_MAGIC = 0x803, 0x801  # 0x08 = unsigned byte, then the number of dimensions


#: Largest IDX file read, compressed or decompressed: MNIST's largest is 47 MB; a larger one (a
#: decompression bomb, say) is refused before it fills memory.
MAX_IDX_BYTES = 256 * 2**20


def _too_large(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: {what} exceeds the {MAX_IDX_BYTES} byte cap on an IDX file (MAX_IDX_BYTES)")


def _read_bytes(path: Path) -> bytes:
    if path.stat().st_size > MAX_IDX_BYTES:
        raise _too_large(path, f"file size {path.stat().st_size}")
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":  # not gzip: an uncompressed IDX file
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            data = f.read(MAX_IDX_BYTES + 1)  # never decompress more than the cap
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt gzip stream ({exc})") from exc
    if len(data) > MAX_IDX_BYTES:
        raise _too_large(path, "decompressed size")
    return data


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """The uint8 array stored in one IDX file, after checking its magic number, dimensions and length."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes, too short for an IDX header")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise ValueError(f"{path}: magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: {len(data)} bytes, too short for the {ndim}-dimension IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if ndim > 1 and 0 in dims[1:]:
        raise ValueError(f"{path}: image dimensions {dims[1:]} contain a zero")
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes but dimensions {dims} need {expected} "
                         f"({'truncated' if len(data) < expected else 'trailing bytes'})")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def find_mnist(directory: Path) -> dict[str, Path] | None:
    """Paths of the four IDX files in ``directory`` (``.gz`` preferred), or None unless all four are there."""
    found = {}
    for role, name in MNIST_FILES.items():
        for candidate in (directory / name, directory / name.removesuffix(".gz")):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            return None
    return found


def read_mnist(directory: str | Path, num_classes: int = 10) -> Dataset:
    """MNIST from the four IDX files in ``directory``: images ``(N, 28, 28, 1)``, labels int64."""
    directory = Path(directory)
    paths = find_mnist(directory)
    if paths is None:
        missing = [n for n in MNIST_FILES.values()
                   if not (directory / n).is_file() and not (directory / n.removesuffix(".gz")).is_file()]
        raise ValueError(f"{directory}: MNIST IDX files missing: {', '.join(missing)}")
    arrays = {}
    for split in ("train", "test"):
        x = read_idx(paths[f"x_{split}"], _IMAGES_MAGIC)
        y = read_idx(paths[f"y_{split}"], _LABELS_MAGIC)
        if len(x) != len(y):
            raise ValueError(f"{paths[f'x_{split}']} holds {len(x)} images but {paths[f'y_{split}']} holds "
                             f"{len(y)} labels")
        if len(y) and int(y.max()) >= num_classes:
            raise ValueError(f"{paths[f'y_{split}']}: label {int(y.max())} out of range [0, {num_classes})")
        arrays[f"x_{split}"] = x[..., None]
        arrays[f"y_{split}"] = y.astype(np.int64)
    return Dataset(**arrays, name="mnist", num_classes=num_classes)
