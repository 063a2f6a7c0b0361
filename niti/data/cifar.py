"""CIFAR-10 in its original python form: ``cifar-10-python.tar.gz`` or its extracted folder.

The batches are pickles, and unpickling can run arbitrary code, so they are
read with an Unpickler that resolves only the few numpy globals an array needs
and refuses every other one.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from .dataset import Dataset

__all__ = ["CIFAR10_ARCHIVE", "CIFAR10_FOLDER", "find_cifar10", "read_cifar10", "safe_unpickle"]

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST = ("test_batch",)
_SIDE, _CHANNELS = 32, 3
#: Largest batch file read (a CIFAR-10 batch is 31 MB): a larger archive member (a decompression
#: bomb, say) is refused before it is read into memory.
MAX_BATCH_BYTES = 128 * 2**20

# numpy's own array reconstructor, whatever module this numpy version keeps it in.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # pickles written by numpy < 2 (the official files)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # pickles written by numpy >= 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _Refused(ValueError):
    """A pickle asked for a global outside the allow-list."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{self.source}: refusing to unpickle global {module}.{name}; only numpy array "
                           f"reconstruction is allowed in a CIFAR-10 batch") from None


def safe_unpickle(data: bytes, source: str) -> object:
    """Unpickle ``data`` (bytes-encoded, as CIFAR's Python 2 pickles need) allowing only numpy array globals."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), source).load()
    except _Refused:
        raise
    except Exception as exc:  # a broken pickle stream raises almost anything
        raise ValueError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


def _parse_batch(data: bytes, source: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle(data, source)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = list(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{source}: expected a dict with b'data' and b'labels', got {keys}")
    x, labels = batch[b"data"], batch[b"labels"]
    row = _CHANNELS * _SIDE * _SIDE
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != row:
        raise ValueError(f"{source}: b'data' must be a uint8 array (N, {row}), got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{source}: b'labels' is not a list of integers ({exc})") from exc
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{source}: {len(x)} images but b'labels' has shape {y.shape}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{source}: labels span [{int(y.min())}, {int(y.max())}], outside [0, {num_classes})")
    # Each row is the R plane, then G, then B (row-major 32 x 32 each): to NHWC.
    images = x.reshape(len(x), _CHANNELS, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), y


def _archive_batches(path: Path) -> Iterator[tuple[str, bytes, str]]:
    wanted = {f"{CIFAR10_FOLDER}/{name}": name for name in _TRAIN + _TEST}
    try:
        # One pass in archive order (a .tar.gz cannot seek back cheaply); members are read
        # in memory, nothing is written to disk.
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = wanted.pop(member.name.removeprefix("./"), None)
                if name is None:
                    continue
                _check_batch_size(f"{path}:{member.name}", member.size)
                f = tar.extractfile(member)
                if f is None:
                    raise ValueError(f"{path}: archive member {member.name} is not a regular file")
                data = f.read(MAX_BATCH_BYTES + 1)
                _check_batch_size(f"{path}:{member.name}", len(data))
                yield name, data, f"{path}:{member.name}"
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from exc
    if wanted:
        raise ValueError(f"{path}: archive has no member {', '.join(sorted(wanted))}")


def _folder_batches(path: Path) -> Iterator[tuple[str, bytes, str]]:
    for name in _TRAIN + _TEST:
        file = path / name
        if not file.is_file():
            raise ValueError(f"{path}: batch file {name} is missing")
        _check_batch_size(str(file), file.stat().st_size)
        yield name, file.read_bytes(), str(file)


def _check_batch_size(source: str, size: int) -> None:
    if size > MAX_BATCH_BYTES:
        raise ValueError(f"{source}: {size} bytes exceeds the {MAX_BATCH_BYTES} byte cap on a CIFAR-10 batch "
                         f"(MAX_BATCH_BYTES)")


def find_cifar10(directory: Path) -> Path | None:
    """The CIFAR-10 archive or extracted folder in ``directory`` (archive first), or None."""
    for candidate in (directory / CIFAR10_ARCHIVE, directory / CIFAR10_FOLDER):
        if candidate.exists():
            return candidate
    return None


def read_cifar10(path: str | Path, num_classes: int = 10) -> Dataset:
    """CIFAR-10 from ``cifar-10-python.tar.gz`` or the ``cifar-10-batches-py`` folder: images ``(N, 32, 32, 3)`` RGB."""
    path = Path(path)
    batches = _folder_batches(path) if path.is_dir() else _archive_batches(path)
    # Parse each batch as it is read so only one raw batch is held at a time.
    parsed = {name: _parse_batch(data, source, num_classes) for name, data, source in batches}
    train = [parsed[n] for n in _TRAIN]
    test = [parsed[n] for n in _TEST]
    return Dataset(
        x_train=np.concatenate([x for x, _ in train]), y_train=np.concatenate([y for _, y in train]),
        x_test=np.concatenate([x for x, _ in test]), y_test=np.concatenate([y for _, y in test]),
        name="cifar10", num_classes=num_classes)
