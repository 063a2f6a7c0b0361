"""Joining the process group (gloo on CPU, NCCL on GPUs) from torchrun-style environment variables; sharding;
metric sums."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DistInfo", "backend_for", "init_from_env", "shutdown", "shard", "all_sum_int", "all_sum_float",
           "wire_device"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a data-parallel job."""

    rank: int
    world_size: int
    local_rank: int


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ValueError(f"environment variable {name} must be set for a distributed run (torchrun-style)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def backend_for(device: str | torch.device) -> str:
    """``nccl`` for a CUDA device when this torch has NCCL (collectives stay on the GPU), else ``gloo``."""
    return "nccl" if torch.device(device).type == "cuda" and dist.is_nccl_available() else "gloo"


def wire_device() -> torch.device:
    """Where collective buffers must live: the current GPU under NCCL, the CPU under gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_from_env(timeout_s: float = 120.0, device: str | torch.device = "cpu") -> DistInfo | None:
    """Join the group described by RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; None if WORLD_SIZE ≤ 1.

    The backend is ``backend_for(device)``: gloo for CPU training, NCCL for GPUs (each rank's GPU must be
    selected first).  ``timeout_s`` bounds every collective: a rank that dies or hangs makes the
    others fail with an error after at most that long.  Calling it again in
    an initialised process returns the same ``DistInfo``.
    """
    world_size = _env_int("WORLD_SIZE", default=1)
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world_size}")
    if world_size == 1:
        return None
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", default=rank)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK must be in [0, {world_size}) for WORLD_SIZE={world_size}, got {rank}")
    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise RuntimeError(f"a process group (rank {dist.get_rank()} of {dist.get_world_size()}) already "
                               f"exists and differs from the environment (rank {rank} of {world_size})")
        return DistInfo(rank, world_size, local_rank)
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        raise ValueError("MASTER_ADDR and MASTER_PORT must be set for a distributed run "
                         f"(got MASTER_ADDR={addr!r}, MASTER_PORT={port!r})")
    try:
        dist.init_process_group(backend_for(device), init_method="env://", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
    except Exception as exc:  # store timeouts and connection errors come in several types
        raise RuntimeError(f"rank {rank} of {world_size} could not join the process group at {addr}:{port} "
                           f"within {timeout_s:g} s: {type(exc).__name__}: {exc}") from exc
    return DistInfo(rank, world_size, local_rank)


def shutdown() -> None:
    """Leave the process group (no-op when none exists), after every rank is done communicating.

    The barrier first: a rank that tears its connections down while another
    still talks to it can abort the other's communication threads.
    """
    if dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError:  # a peer already gone: nothing left to wait for
            pass
        dist.destroy_process_group()


def shard(images: Tensor, labels: Tensor, info: DistInfo | None) -> tuple[Tensor, Tensor]:
    """This rank's contiguous slice of a global batch (the whole batch when ``info`` is None).

    Rank r gets rows ``[r·n/W, (r+1)·n/W)``: concatenating the shards in rank
    order gives back the global batch, which is what the whole-batch random
    draws of ``Runtime.uniform`` assume.
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images and labels differ in length: {images.shape[0]} vs {labels.shape[0]}")
    if info is None:
        return images, labels
    n, w = images.shape[0], info.world_size
    if n % w:
        raise ValueError(f"global batch of {n} cannot be split evenly over {w} processes: "
                         f"use a batch size that is a multiple of {w}")
    k = n // w
    lo, hi = info.rank * k, (info.rank + 1) * k
    return images[lo:hi], labels[lo:hi]


def all_sum_int(values: list[int]) -> list[int]:
    """Element-wise sums over all ranks of Python ints (metrics: correct counts, sample counts).

    Without a process group the values come back unchanged.  Sums are in int64.
    """
    values = [int(v) for v in values]
    if not dist.is_initialized() or dist.get_world_size() == 1 or not values:
        return values
    t = torch.tensor(values, dtype=torch.int64, device=wire_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [int(v) for v in t.tolist()]


def all_sum_float(values: list[float]) -> list[float]:
    """Element-wise float64 sums over all ranks, for display metrics only (the loss value); never in a step."""
    values = [float(v) for v in values]
    if not dist.is_initialized() or dist.get_world_size() == 1 or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=wire_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]
