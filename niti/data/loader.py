"""Mini-batches over one epoch in a seeded order that any epoch, and any batch within it, can recompute.

The shuffle of epoch ``e`` comes from a generator seeded by ``(seed, "shuffle", e)``;
the augmentation of batch ``b`` from one seeded by ``(seed, "augment", e, b)``.
Nothing depends on what ran before, so a run resumed at ``(epoch, batch)``
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from .folder import FolderImages

__all__ = ["BatchIterator", "derived_generator"]

Augment = Callable[[Tensor, torch.Generator], Tensor]


def derived_generator(seed: int, purpose: str, *indices: int) -> torch.Generator:
    """A CPU generator whose stream is a fixed function of ``(seed, purpose, *indices)``, stable across processes."""
    key = ":".join(map(str, (seed, purpose, *indices))).encode()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1)
    return g


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


class BatchIterator:
    """``(images uint8 NHWC, labels int64)`` torch batches of one epoch, from batch ``start_batch`` on.

    ``len()`` is the number of batches this iterator yields; ``batches_per_epoch``
    the number in a whole epoch. With ``drop_last`` a final short batch is skipped.
    ``augment(images, generator)`` (e.g. ``random_crop_flip``) is applied per batch.
    ``prefetch`` prepares up to two batches ahead on a background thread; the
    batches are identical either way.
    """

    def __init__(self, images: np.ndarray | Tensor | FolderImages, labels: np.ndarray | Tensor, batch_size: int, *,
                 seed: int = 0, epoch: int = 0, shuffle: bool = True, drop_last: bool = False,
                 augment: Augment | None = None, start_batch: int = 0, prefetch: bool = False) -> None:
        if isinstance(images, Tensor):
            images = images.detach().cpu().numpy()
        if isinstance(labels, Tensor):
            labels = labels.detach().cpu().numpy()
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
            raise ValueError(f"labels must be {len(images)} integers, got {labels.dtype} {labels.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.labels = images, labels.astype(np.int64, copy=False)
        self.batch_size, self.seed, self.epoch = batch_size, seed, epoch
        self.augment, self.prefetch = augment, prefetch
        n = len(images)
        self.batches_per_epoch = n // batch_size if drop_last else -(-n // batch_size)
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch must be in [0, {self.batches_per_epoch}], got {start_batch}")
        self.start_batch = start_batch
        self.order = (torch.randperm(n, generator=derived_generator(seed, "shuffle", epoch)) if shuffle
                      else torch.arange(n))

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def batch(self, index: int) -> tuple[Tensor, Tensor]:
        """Batch ``index`` of this epoch, computed from scratch (the same whenever it is asked for)."""
        if not 0 <= index < self.batches_per_epoch:
            raise IndexError(f"batch {index} outside [0, {self.batches_per_epoch})")
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size].numpy()
        y = torch.from_numpy(self.labels[rows])
        if self.augment is not None and hasattr(self.images, "load_augmented"):
            # An image folder crops while it decodes (random-resized crop from the full-size image).
            generator = derived_generator(self.seed, "augment", self.epoch, index)
            return torch.from_numpy(self.images.load_augmented(rows, generator)), y
        x = torch.from_numpy(self.images[rows])  # fancy indexing copies: a fresh, writable array
        if self.augment is not None:
            x = self.augment(x, derived_generator(self.seed, "augment", self.epoch, index))
        return x, y

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        indices = range(self.start_batch, self.batches_per_epoch)
        if not self.prefetch:
            return (self.batch(i) for i in indices)
        return self._prefetched(indices)

    def _prefetched(self, indices: range) -> Iterator[tuple[Tensor, Tensor]]:
        q: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        def work() -> None:
            try:
                for i in indices:
                    if not put(self.batch(i)):
                        return
                put(_END)
            except BaseException as exc:  # handed to the consumer, raised there
                put(_Failure(exc))

        worker = threading.Thread(target=work, name="niti-prefetch", daemon=True)
        worker.start()
        try:
            while (item := q.get()) is not _END:
                if isinstance(item, _Failure):
                    raise item.exc
                yield item
        finally:  # also runs when the consumer stops early: release the worker
            stop.set()
            worker.join()
