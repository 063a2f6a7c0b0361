"""``load_dataset``: find a data set by name or path, in a data folder, the cache, or a verified download.

Where data lives, first match wins: the ``data_dir`` argument, else ``$NITI_DATA``,
then the cache (``$XDG_CACHE_HOME/niti``, by default ``~/.cache/niti``), which is
also where downloads go. In each folder the reader takes ``<name>.npz`` first,
then the original distribution files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .cifar import CIFAR10_ARCHIVE, CIFAR10_FOLDER, find_cifar10, read_cifar10
from .dataset import DataNotFoundError, Dataset
from .folder import is_image_folder, read_image_folder
from .download import CIFAR10_REMOTES, MNIST_REMOTES, Remote, fetch
from .idx import MNIST_FILES, find_mnist, read_mnist
from .npz import read_npz

__all__ = ["DATASETS", "cache_dir", "load_dataset"]


@dataclass(frozen=True)
class _Known:
    """A named data set: the image shape it must have, and how to find and read its original files."""

    image_shape: tuple[int, int, int]
    originals: str  # for messages: what to place in a data folder
    locate: Callable[[Path], Path | None]  # the path to read the originals from, if present in a folder
    read: Callable[[Path], Dataset]
    remotes: tuple[Remote, ...]


DATASETS = {
    "mnist": _Known((28, 28, 1), ", ".join(MNIST_FILES.values()),
                    lambda d: d if find_mnist(d) else None, read_mnist, MNIST_REMOTES),
    "cifar10": _Known((32, 32, 3), f"{CIFAR10_ARCHIVE} (or its extracted {CIFAR10_FOLDER}/)",
                      find_cifar10, read_cifar10, CIFAR10_REMOTES),
}


def cache_dir() -> Path:
    """Where downloads go and the last place searched: ``$XDG_CACHE_HOME/niti`` or ``~/.cache/niti``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "niti"


def _search_dirs(data_dir: str | Path | None) -> list[Path]:
    first = data_dir if data_dir is not None else os.environ.get("NITI_DATA")
    dirs = [Path(first).expanduser()] if first else []
    if cache_dir() not in dirs:
        dirs.append(cache_dir())
    return dirs


def _read_from(directory: Path, name: str, known: _Known) -> Dataset | None:
    npz = directory / f"{name}.npz"
    if npz.is_file():
        ds = read_npz(npz, name=name)
    elif (found := known.locate(directory)) is not None:
        ds = known.read(found)
    else:
        return None
    if ds.image_shape != known.image_shape:
        raise ValueError(f"{directory}: {name} images are {ds.image_shape}, expected {known.image_shape}")
    return ds


def _not_found(name: str, known: _Known, dirs: list[Path], download_error: str | None) -> DataNotFoundError:
    looked = "\n".join(f"  {d}{'' if d.is_dir() else ' (does not exist)'}" for d in dirs)
    tail = (f"Download into {cache_dir()} failed: {download_error}\n" if download_error
            else "Downloading was disabled.\n")
    return DataNotFoundError(
        f"data set {name!r} not found. Looked for {name}.npz, then {known.originals}, in:\n{looked}\n{tail}"
        f"Provide it with --data-dir DIR (or data_dir=DIR) or by setting $NITI_DATA=DIR, where DIR holds "
        f"{name}.npz or {known.originals}; or place those files in {cache_dir()}.")


def load_dataset(name: str | os.PathLike, data_dir: str | Path | None = None, *, download: bool = True,
                 image_shape: tuple[int, int, int] = (224, 224, 3), workers: int | None = None) -> Dataset:
    """The data set ``name`` ("mnist", "cifar10", a path to an ``.npz``, or an image folder), found as the module
    docstring says.  An image folder (``DIR/train/<class>/*``, ``DIR/val/<class>/*``) is decoded on demand at
    ``image_shape`` by ``workers`` processes (``niti.data.folder``).

    Raises ``DataNotFoundError`` saying where it looked when no copy exists and
    the originals cannot be downloaded; ``ValueError`` for a corrupt copy.
    """
    path = Path(name)
    if str(name) not in DATASETS:
        if is_image_folder(path):
            return read_image_folder(path, image_shape, workers=workers)
        if path.suffix == ".npz":
            if not path.is_file():
                raise DataNotFoundError(f"{path}: no such .npz file")
            return read_npz(path)
        if path.is_dir():
            raise DataNotFoundError(f"{path} is a directory but not an image folder: it needs train/<class>/ and "
                                    "val/<class>/ sub-folders of JPEG or PNG files")
        raise ValueError(f"unknown data set {str(name)!r}: use one of {sorted(DATASETS)}, a path to an .npz file "
                         "or an image folder (DIR/train/<class>/*, DIR/val/<class>/*)")
    name = str(name)
    known = DATASETS[name]
    dirs = _search_dirs(data_dir)
    for directory in dirs:
        if (ds := _read_from(directory, name, known)) is not None:
            return ds
    if not download:
        raise _not_found(name, known, dirs, None)
    try:
        for remote in known.remotes:
            if not (cache_dir() / remote.filename).is_file():
                fetch(remote, cache_dir())
    except OSError as exc:
        raise _not_found(name, known, dirs, str(exc)) from exc
    ds = _read_from(cache_dir(), name, known)
    assert ds is not None, "every original file was just downloaded"
    return ds
