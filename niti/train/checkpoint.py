"""Atomic checkpoints: write a temporary file, fsync, then rename over the old one.

A crash or a signal during the write leaves the previous checkpoint intact; a
corrupt or truncated file is reported as ``CheckpointError`` and never
partially applied.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import torch

__all__ = ["CheckpointError", "CHECKPOINT_NAME", "save_checkpoint", "load_checkpoint", "atomic_write_bytes"]

CHECKPOINT_NAME = "checkpoint.pt"
_FORMAT = "niti-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or of the wrong kind."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (same-directory temp file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_checkpoint(path: Path, state: dict) -> None:
    """Serialise ``state`` (tensors, ints, strings, dicts) and write it atomically."""
    buf = io.BytesIO()
    torch.save({"format": _FORMAT, "state": state}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: Path) -> dict:
    """The state saved by ``save_checkpoint``; ``CheckpointError`` naming the problem otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        # weights_only: plain containers and tensors only, no arbitrary pickled code.
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt zips/pickles
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is not a niti checkpoint (format {payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r})")
    return payload["state"]
