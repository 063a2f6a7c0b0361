"""ImageNet mode: an image-folder data set (``DIR/train/<class>/*``, ``DIR/val/<class>/*``), decoded lazily.

The layout is torchvision's ImageFolder: one sub-folder per class, JPEG or
PNG files inside.  ``DIR/val`` is the test split (ImageNet's own validation
set); niti's validation split is, as for every data set, the last
``--val-size`` training images, and the training files are put in a fixed
seed-free order (by a hash of their path) so that those are a mix of classes.

Images are decoded (Pillow) outside the integer step, in worker processes,
and turned into uint8 HWC arrays at the model's input size:

- evaluation: resize so the shorter side is ``size · 8 / 7`` (256 for 224), centre crop;
- training: an integer random-resized crop (area 8–100 %, aspect ratio 3/4–4/3, drawn as integers from the
  batch's seeded generator, so a resumed run sees the same crops) resized to the input size, and a coin-flip mirror.

A file that cannot be decoded raises ``ValueError`` naming it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
import os
from math import isqrt
from pathlib import Path

import numpy as np
import torch

from .dataset import DataNotFoundError

__all__ = ["FolderImages", "IMAGE_SUFFIXES", "is_image_folder", "read_image_folder"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: Random-resized-crop tries per image (torchvision's count); each try takes two draws.
_TRIES = 10
#: Draws per training image: the tries' (area, ratio), top, left, flip.
_DRAWS = 2 * _TRIES + 3
_AREA_MIN, _AREA_MAX = 80, 1000  # per mille of the image
_RATIO_MIN, _RATIO_MAX = 768, 1365  # width / height in units of 1/1024 (3/4 .. 4/3)


def is_image_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory with a ``train`` sub-folder (an image-folder data set)."""
    p = Path(path)
    return p.is_dir() and (p / "train").is_dir()


def _open_rgb(path: str):  # noqa: ANN202 - a PIL image
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise ValueError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None


def _resize(im, w: int, h: int):  # noqa: ANN001, ANN202
    from PIL import Image

    return im.resize((w, h), Image.Resampling.BILINEAR)


def decode_eval(path: str, size: tuple[int, int]) -> np.ndarray:
    """Resize the shorter side to ``size · 8/7`` (integer), centre crop ``size``: uint8 (H, W, 3)."""
    th, tw = size
    im = _open_rgb(path)
    w, h = im.size
    short = max(th, tw) * 8 // 7
    if w <= h:
        nw, nh = short, max(th, (h * short + w // 2) // w)
    else:
        nw, nh = max(tw, (w * short + h // 2) // h), short
    im = _resize(im, nw, nh)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return np.asarray(im.crop((left, top, left + tw, top + th)), dtype=np.uint8)


def crop_box(w: int, h: int, draws: list[int]) -> tuple[int, int, int, int, bool]:
    """The random-resized crop ``(left, top, width, height, flip)`` of a ``w × h`` image from ``_DRAWS`` integer
    draws (each in [0, 2**31)): integer arithmetic only, the first fitting try wins, else the whole image."""
    area = w * h
    for t in range(_TRIES):
        a = _AREA_MIN + draws[2 * t] % (_AREA_MAX - _AREA_MIN + 1)
        r = _RATIO_MIN + draws[2 * t + 1] % (_RATIO_MAX - _RATIO_MIN + 1)
        cw = isqrt(area * a * r // (1000 * 1024))
        ch = isqrt(area * a * 1024 // (1000 * r))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw, ch = w, h
    top = draws[2 * _TRIES] % (h - ch + 1)
    left = draws[2 * _TRIES + 1] % (w - cw + 1)
    return left, top, cw, ch, bool(draws[2 * _TRIES + 2] & 1)


def decode_train(path: str, size: tuple[int, int], draws: list[int]) -> np.ndarray:
    """The integer random-resized crop of ``draws``, resized to ``size``, mirrored on a coin flip: uint8 (H, W, 3)."""
    from PIL import Image

    im = _open_rgb(path)
    left, top, cw, ch, flip = crop_box(*im.size, draws)
    im = _resize(im.crop((left, top, left + cw, top + ch)), size[1], size[0])
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(im, dtype=np.uint8)


def _decode_chunk(jobs: list[tuple]) -> list[np.ndarray]:
    return [decode_train(p, s, d) if d is not None else decode_eval(p, s) for p, s, d in jobs]


class _Pool:
    """Worker processes shared by every view of one folder data set (created on first use)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.executor: concurrent.futures.ProcessPoolExecutor | None = None

    def map(self, jobs: list[tuple]) -> list[np.ndarray]:
        if self.workers == 0 or len(jobs) < 2:
            return _decode_chunk(jobs)
        if self.executor is None:
            # spawn: the workers import numpy and Pillow, never a copy of the training process's threads.
            self.executor = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"))
        per = -(-len(jobs) // self.workers)
        chunks = [jobs[i:i + per] for i in range(0, len(jobs), per)]
        out: list[np.ndarray] = []
        for part in self.executor.map(_decode_chunk, chunks):
            out.extend(part)
        return out

    def __del__(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)


class FolderImages:
    """The images of one split, array-like: ``len``, ``shape`` ``(N, H, W, 3)``, ``dtype`` uint8, slicing
    (a view) and integer-array indexing (decoded for evaluation); ``load_augmented`` decodes for training."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, files: list[str], size: tuple[int, int], pool: _Pool) -> None:
        self.files, self.size, self.pool = files, size, pool

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), self.size[0], self.size[1], 3)

    def __len__(self) -> int:
        return len(self.files)

    def _stack(self, arrays: list[np.ndarray]) -> np.ndarray:
        if not arrays:
            return np.zeros((0, *self.shape[1:]), dtype=np.uint8)
        return np.stack(arrays)

    def __getitem__(self, key: slice | np.ndarray | list[int]) -> "FolderImages | np.ndarray":
        if isinstance(key, slice):
            return FolderImages(self.files[key], self.size, self.pool)
        rows = np.asarray(key).reshape(-1).tolist()
        return self._stack(self.pool.map([(self.files[i], self.size, None) for i in rows]))

    def load_augmented(self, rows: np.ndarray, generator: torch.Generator) -> np.ndarray:
        """Training images ``rows`` with random-resized crops and flips drawn from ``generator`` (fixed order:
        ``_DRAWS`` integers per image, image by image)."""
        draws = torch.randint(0, 1 << 31, (len(rows), _DRAWS), generator=generator, dtype=torch.int64).tolist()
        return self._stack(self.pool.map([(self.files[i], self.size, d) for i, d in zip(np.asarray(rows).tolist(),
                                                                                        draws)]))

    def stats_sample(self, limit: int = 1000) -> np.ndarray:
        """Up to ``limit`` evenly spaced images (evaluation transform), for the input mean and scale."""
        n = len(self.files)
        step = max(1, -(-n // limit))
        return self[np.arange(0, n, step)]

    def tensors(self) -> "FolderTensors":
        return FolderTensors(self)


class FolderTensors:
    """``FolderImages`` for evaluation loops: slicing decodes and returns a uint8 torch tensor."""

    def __init__(self, images: FolderImages) -> None:
        self.images = images
        self.shape = torch.Size(images.shape)

    def __getitem__(self, key: slice) -> torch.Tensor:
        part = self.images[key]
        assert isinstance(part, FolderImages)
        return torch.from_numpy(part[np.arange(len(part))])


def _order(files: list[Path], root: Path) -> list[Path]:
    """A fixed, seed-free, class-mixed order: by a hash of each file's path relative to ``root``."""
    return sorted(files, key=lambda f: hashlib.blake2b(str(f.relative_to(root)).encode(), digest_size=8).digest())


def _split(root: Path, split: str, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    d = root / split
    if not d.is_dir():
        raise DataNotFoundError(f"{root}: an image-folder data set needs {d} with one sub-folder per class")
    found = sorted(c.name for c in d.iterdir() if c.is_dir())
    if classes is None:
        classes = found
        if not classes:
            raise DataNotFoundError(f"{d} has no class sub-folders")
    elif set(found) - set(classes):
        raise ValueError(f"{d} has classes that {root / 'train'} lacks: {sorted(set(found) - set(classes))[:5]}")
    files, labels = [], []
    for k, name in enumerate(classes):
        if not (d / name).is_dir():
            continue
        for f in sorted((d / name).iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(k)
    if not files:
        raise DataNotFoundError(f"{d} holds no {'/'.join(IMAGE_SUFFIXES)} files in its class folders")
    return files, labels, classes


def read_image_folder(root: str | os.PathLike, image_shape: tuple[int, int, int], *,
                      workers: int | None = None):  # noqa: ANN201 - a Dataset
    """The data set at ``root`` for images of ``image_shape`` (H, W, 3); ``workers`` decoding processes
    (default: the CPU count, at most 8; 0 decodes in this process)."""
    from .dataset import Dataset

    root = Path(root)
    h, w, c = image_shape
    if c != 3:
        raise ValueError(f"image folders hold RGB images; the model takes {c} channels")
    train_files, train_labels, classes = _split(root, "train", None)
    label_of = dict(zip(train_files, train_labels))
    train_files = _order(train_files, root)
    train_labels = [label_of[f] for f in train_files]
    test_files, test_labels, _ = _split(root, "val", classes)
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    pool = _Pool(workers)
    return Dataset(FolderImages([str(f) for f in train_files], (h, w), pool), np.array(train_labels, dtype=np.int64),
                   FolderImages([str(f) for f in test_files], (h, w), pool), np.array(test_labels, dtype=np.int64),
                   root.name or str(root), len(classes))
