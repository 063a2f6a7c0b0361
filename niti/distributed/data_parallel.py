"""Data-parallel integer training: the all-reduces behind ``Runtime.reduce_max`` / ``reduce_sum``.

A single process computes every whole-batch quantity of a step from the whole
batch.  With W ranks each holding a shard, the same numbers come out when

- every bit width used for a batched rescale is the MAX over ranks (integer
  max is exact, so every rank shifts by the single-process shift),
- every weight gradient is the SUM over ranks of the shard gradients
  (integer sums are exact and associative, so the total equals the
  single-process one bit for bit), and
- stochastic-rounding draws are made for the whole batch and sliced
  (``Runtime`` does this from ``rank``/``world_size``).

So a W-process run is bit-identical to one process with the global batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ..numerics import bits
from .group import DistInfo, all_sum_int, shard, wire_device

__all__ = ["CommStats", "Collectives", "attach", "evaluate_sharded", "replica_fingerprint", "verify_replicas"]

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass
class CommStats:
    """Calls and payload bytes (per rank, as handed to ``all_reduce``) by purpose."""

    width_calls: int = 0  # MAX of bit widths for batched rescales
    width_bytes: int = 0
    grad_width_calls: int = 0  # MAX of gradient bit widths (chooses the int32/int64 wire type)
    grad_width_bytes: int = 0
    grad_calls: int = 0  # SUM of weight gradients
    grad_bytes: int = 0
    grad_int64_calls: int = 0  # gradient sums that needed int64 on the wire
    seconds: float = 0.0  # wall time spent inside all_reduce (waiting for slower ranks included)

    @property
    def total_bytes(self) -> int:
        return self.width_bytes + self.grad_width_bytes + self.grad_bytes

    @property
    def total_calls(self) -> int:
        return self.width_calls + self.grad_width_calls + self.grad_calls

    def reset(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, type(f.default)())


class Collectives:
    """The reductions a data-parallel ``Runtime`` uses, over one process group, with byte counts.

    Buffers travel on ``device``: the CPU under gloo, the rank's GPU under NCCL (``group.wire_device``).
    """

    def __init__(self, world_size: int, group: dist.ProcessGroup | None = None,
                 device: torch.device | None = None) -> None:
        self.world_size = world_size
        self.group = group
        self.device = device if device is not None else wire_device()
        self.stats = CommStats()

    def _all_reduce(self, t: Tensor, op: dist.ReduceOp) -> None:
        t0 = time.perf_counter()
        dist.all_reduce(t, op=op, group=self.group)
        self.stats.seconds += time.perf_counter() - t0

    def _max(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        self._all_reduce(t, dist.ReduceOp.MAX)
        return int(t.item())

    def reduce_max(self, value: int) -> int:
        """The largest ``value`` over all ranks (bit widths of batched rescales)."""
        self.stats.width_calls += 1
        self.stats.width_bytes += 8
        return self._max(value)

    def reduce_sum(self, t: Tensor) -> Tensor:
        """The exact element-wise sum over ranks of integer tensor ``t`` (a new tensor; ``t`` is untouched).

        The sum travels as int32 when W · (2**b - 1) fits, where b is the
        largest gradient bit width on any rank (one 8-byte MAX first), and as
        int64 otherwise: never wraps, never saturates, and costs the same
        bytes as an fp32 gradient all-reduce in the common case.
        """
        if t.dtype not in _INT_DTYPES:
            raise TypeError(f"reduce_sum sums integer gradients, got {t.dtype}")
        self.stats.grad_width_calls += 1
        self.stats.grad_width_bytes += 8
        width = self._max(bits(t))
        bound = self.world_size * ((1 << width) - 1)
        if bound > _INT64_MAX:  # pragma: no cover - needs > 2**62 magnitudes
            raise OverflowError(f"gradient sum over {self.world_size} ranks of {width}-bit values could exceed int64")
        wire = torch.int32 if bound <= _INT32_MAX else torch.int64
        buf = t.to(device=self.device, dtype=wire, copy=True).contiguous()
        self._all_reduce(buf, dist.ReduceOp.SUM)
        self.stats.grad_calls += 1
        self.stats.grad_bytes += buf.numel() * buf.element_size()
        self.stats.grad_int64_calls += wire == torch.int64
        return buf.to(t.device)


def _digest(obj: object) -> str:
    h = hashlib.sha256()
    if isinstance(obj, dict):
        for k in sorted(obj):
            h.update(f"{k}=".encode())
            h.update(_digest(obj[k]).encode())
    elif isinstance(obj, Tensor):
        h.update(f"{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(obj.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    else:
        h.update(repr(obj).encode())
    return h.hexdigest()


def replica_fingerprint(model) -> dict[str, str]:  # noqa: ANN001 - an IntegerModel
    """What must agree on every rank before data-parallel steps: weights, generators, step, configuration."""
    return {
        "architecture": model.arch.name,
        "weights_sha256": model.weights_sha256(),
        "generator_states": _digest(model.runtime.state_dict()),
        "step": str(model.step),
        "total_steps": str(model.total_steps),
        "policy": repr(model.policy),
        "schedule": str(model.schedule),
        "gb_offsets": str(model.gb_offsets),
        "accumulator_bits": str(model.accumulator_bits),
        "mean": str(model.mean.tolist()),
        "scale": str(model.scale.tolist()),
        "rule": repr(model.rule),
        "softmax": model.softmax,
        "dropout": model.dropout,
        "activation_clip": f"{model.act_clip_bits},{model.act_clip_share}",
    }


def fingerprint_digests(model) -> Tensor:  # noqa: ANN001 - an IntegerModel
    """``replica_fingerprint`` as a fixed-size uint8 tensor: one SHA-256 (32 bytes) per field, in field order.

    Ranks exchange this tensor (``all_gather``) rather than pickled objects, so a
    peer can send nothing but 32 bytes per field.
    """
    rows = [hashlib.sha256(f"{k}={v}".encode()).digest() for k, v in replica_fingerprint(model).items()]
    return torch.frombuffer(bytearray(b"".join(rows)), dtype=torch.uint8).reshape(len(rows), 32)


def verify_replicas(model, info: DistInfo) -> None:  # noqa: ANN001 - an IntegerModel
    """Raise ``RuntimeError`` on every rank unless all ranks hold the same model state.

    Compares the digests of ``replica_fingerprint`` (weight hash, generator
    states, step, policy, schedule...) gathered from all ranks as integer
    tensors; the message names each rank and field that differs from rank 0.
    """
    _check_group(info)
    fields = list(replica_fingerprint(model))
    mine = fingerprint_digests(model)
    gathered = [torch.empty_like(mine) for _ in range(info.world_size)]
    dist.all_gather(gathered, mine)
    ref = gathered[0]
    problems = []
    for r, fp in enumerate(gathered[1:], start=1):
        diff = [i for i, k in enumerate(fields) if not torch.equal(fp[i], ref[i])]
        if diff:
            detail = ", ".join(f"{fields[i]} (digest {_hex(fp[i])} vs {_hex(ref[i])})" for i in diff)
            problems.append(f"rank {r} differs from rank 0 in {detail}")
    if problems:
        raise RuntimeError("data-parallel ranks do not start from the same model: " + "; ".join(problems)
                           + ". Build every rank's model with the same seed and configuration "
                             "(and load the same checkpoint) before attach().")


def _hex(row: Tensor) -> str:
    return bytes(row.tolist()[:6]).hex() + "…"


def _check_group(info: DistInfo) -> None:
    if not dist.is_initialized():
        raise RuntimeError("no process group: call niti.distributed.init_from_env() first")
    if dist.get_world_size() != info.world_size or dist.get_rank() != info.rank:
        raise RuntimeError(f"DistInfo says rank {info.rank} of {info.world_size}, the process group says "
                           f"rank {dist.get_rank()} of {dist.get_world_size()}")


def attach(model, info: DistInfo) -> Collectives:  # noqa: ANN001 - an IntegerModel
    """Make ``model`` a data-parallel replica: verify all ranks agree, then install all-reducing reductions.

    After this, ``model.train_step`` on this rank's shard (``shard``) gives
    every rank the weights a single process gets from the whole batch.  Any
    batched forward is then a collective: *all* ranks must call
    ``train_step`` / ``predict`` together, each with its shard of the same
    global batch (evaluate with ``shard`` + ``all_sum_int``).  Returns the
    ``Collectives`` so callers can read ``stats``.
    """
    from ..models.integer import IntegerModel

    if not isinstance(model, IntegerModel):
        raise TypeError(f"attach() makes an IntegerModel data-parallel, got {type(model).__name__} "
                        "(data-parallel training of the float baseline is not supported)")
    _check_group(info)
    verify_replicas(model, info)
    coll = Collectives(info.world_size)
    runtime = dataclasses.replace(model.runtime, rank=info.rank, world_size=info.world_size,
                                  reduce_max=coll.reduce_max, reduce_sum=coll.reduce_sum)
    model.set_runtime(runtime)  # copies the generator states
    return coll


def evaluate_sharded(model, images: Tensor, labels: Tensor, info: DistInfo | None,  # noqa: ANN001
                     batch_size: int = 1000) -> int:
    """Correct predictions on the whole set, identical to one process predicting in batches of ``batch_size``.

    Every rank must call it with the same ``images``.  Each batch is split
    over the ranks with ``shard`` (so its bit widths and random draws are the
    single-process ones); a batch that does not divide evenly (the last one)
    is run whole on every rank as one process would, and counted once.
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images and labels differ in length: {images.shape[0]} vs {labels.shape[0]}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    world = 1 if info is None else info.world_size
    correct = 0
    for i in range(0, images.shape[0], batch_size):
        xb, yb = images[i:i + batch_size], labels[i:i + batch_size]
        if xb.shape[0] % world == 0:
            xs, ys = shard(xb, yb, info)
            correct += int((model.predict(xs).cpu() == ys.cpu()).sum())
            continue
        runtime = model.runtime
        saved = runtime.rank, runtime.world_size
        runtime.rank, runtime.world_size = 0, 1  # draws for this whole batch, as one process makes them
        try:
            pred = model.predict(xb)
        finally:
            runtime.rank, runtime.world_size = saved
        if info is None or info.rank == 0:
            correct += int((pred.cpu() == yb.cpu()).sum())
    return correct if info is None else all_sum_int([correct])[0]
