"""Atomic, digest-checked checkpoints: write a temporary file, fsync, then rename over the old one.

A crash or a signal during the write leaves the previous checkpoint intact.
The file is a one-line header holding the SHA-256 of the serialised payload,
then the payload (``torch.save`` bytes); ``load_checkpoint`` verifies the
digest before unpickling anything, so a truncated or bit-flipped file is
reported as ``CheckpointError`` and never partially applied.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import torch

__all__ = ["CheckpointError", "CHECKPOINT_NAME", "save_checkpoint", "load_checkpoint", "atomic_write_bytes"]

CHECKPOINT_NAME = "checkpoint.pt"
_FORMAT = "niti-checkpoint-v1"  # the payload's marker (unchanged since digests were added)
_MAGIC = b"niti-checkpoint-v2 sha256="  # header: _MAGIC + 64 hex digits + newline, then the payload
_HEADER_LEN = len(_MAGIC) + 64 + 1


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
    """Serialise ``state`` (tensors, ints, strings, dicts), prefix its SHA-256 and write it atomically."""
    buf = io.BytesIO()
    torch.save({"format": _FORMAT, "state": state}, buf)
    payload = buf.getvalue()
    header = _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    atomic_write_bytes(Path(path), header + payload)


def _verified_payload(path: Path, data: bytes) -> bytes:
    """The payload after the header, if its SHA-256 matches the header's; ``CheckpointError`` otherwise."""
    if not data.startswith(_MAGIC):
        if data.startswith(b"PK"):  # a bare torch.save zip: an older niti or not niti at all
            raise CheckpointError(f"{path} is not a niti checkpoint with an integrity digest (a bare torch.save "
                                  f"file, e.g. from an older niti); refusing to load it unverified")
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (no niti checkpoint header)")
    expected = data[len(_MAGIC):_HEADER_LEN - 1]
    payload = data[_HEADER_LEN:]
    if data[_HEADER_LEN - 1:_HEADER_LEN] != b"\n" or hashlib.sha256(payload).hexdigest().encode() != expected:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (SHA-256 of its {len(payload)} payload "
                              f"bytes does not match the digest in its header)")
    return payload


def load_checkpoint(path: Path) -> dict:
    """The state saved by ``save_checkpoint``, digest verified; ``CheckpointError`` naming the problem otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({exc})") from None
    payload = _verified_payload(path, data)
    try:
        # weights_only: plain containers and tensors only, no arbitrary pickled code.
        loaded = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt zips/pickles
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, dict) or loaded.get("format") != _FORMAT or not isinstance(loaded.get("state"), dict):
        found = loaded.get("format") if isinstance(loaded, dict) else type(loaded).__name__
        raise CheckpointError(f"{path} is not a niti checkpoint (format {found!r})")
    return loaded["state"]
