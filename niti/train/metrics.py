"""Metrics shown to people: accuracy counts and the float loss value (outside the integer step)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..numerics import IntTensor

__all__ = ["logits_to_float", "loss_sum", "correct_count", "evaluate", "write_jsonl"]


def logits_to_float(logits: IntTensor | Tensor) -> Tensor:
    """Float logits for display: ``m · 2**e`` for integer models, unchanged for float ones."""
    if isinstance(logits, IntTensor):
        return torch.ldexp(logits.m.float(), torch.tensor(float(logits.e)))
    return logits.detach().float()


def loss_sum(logits: IntTensor | Tensor, labels: Tensor) -> float:
    """Summed cross-entropy of a batch, in float, for progress bars and curves."""
    return float(torch.nn.functional.cross_entropy(logits_to_float(logits), labels, reduction="sum"))


def correct_count(logits: IntTensor | Tensor, labels: Tensor) -> int:
    m = logits.m if isinstance(logits, IntTensor) else logits
    return int((m.argmax(dim=1) == labels).sum())


def evaluate(model, images: Tensor, labels: Tensor, batch_size: int = 1000) -> int:  # noqa: ANN001
    """Number of correct predictions of ``model`` on ``images`` (uint8 NHWC)."""
    correct = 0
    for i in range(0, images.shape[0], batch_size):
        pred = model.predict(images[i:i + batch_size])
        correct += int((pred.cpu() == labels[i:i + batch_size]).sum())
    return correct


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Rewrite ``path`` with one JSON object per line (atomically)."""
    from .checkpoint import atomic_write_bytes

    atomic_write_bytes(Path(path), "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())
