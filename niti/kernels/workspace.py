"""Scratch buffers reused from step to step (docs/numerics.md §1; no page faults for the big temporaries).

The im2col columns, zero-padded inputs and int32 products of a VGG layer are
tens to hundreds of MB.  Allocated fresh each step they are page-faulted in
again every time; a ``Workspace`` keeps one buffer per purpose, grown to the
largest request and reused.  A buffer's contents are valid only until the
next ``take`` of the same name, so kernels use them strictly as temporaries.
"""

from __future__ import annotations

from math import prod

import torch
from torch import Tensor

__all__ = ["Workspace"]


class Workspace:
    """Named scratch buffers: ``take(name, shape, dtype, device)`` returns an uninitialised tensor view."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """A contiguous ``shape`` tensor in buffer ``name``; earlier views of that buffer are overwritten."""
        nbytes = prod(shape) * dtype.itemsize
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < nbytes or buf.device != torch.device(device):
            buf = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
            self._buffers[name] = buf
        return buf[:nbytes].view(dtype).view(shape)

    def zeroed(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """A ``shape`` tensor, the leading rows of a buffer that was all zeros when made, per ``name`` and
        ``shape[1:]``.

        For zero-padded copies: callers write only the interior of each row, so
        the borders stay zero from one step to the next without being cleared.
        """
        key = f"{name}{tuple(shape[1:])}{dtype}"
        buf = self._buffers.get(key)
        if buf is None or buf.shape[0] < shape[0] or buf.device != torch.device(device):
            buf = torch.zeros(shape, dtype=dtype, device=device)
            self._buffers[key] = buf
        return buf[:shape[0]]

    def nbytes(self) -> int:
        """Bytes held."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def clear(self) -> None:
        self._buffers.clear()

    def __repr__(self) -> str:
        return f"Workspace({len(self._buffers)} buffers, {self.nbytes()} bytes)"
