"""The training loop: data, model, epochs, evaluation, checkpoints, metrics and summary.

``fit(config)`` trains an integer model (or its float twin) and writes to
``config.out``: ``checkpoint.pt`` (every epoch, every ``checkpoint_every`` steps,
on SIGINT/SIGTERM and when the loop raises),
``metrics.jsonl`` (one line per epoch), ``steps.jsonl`` (loss over the last ``log_every`` steps) and
``summary.json``.  ``fit(config, resume=True)`` continues from the checkpoint
so that the final weights are bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from .. import data as niti_data
from ..heap import keep_freed_memory
from ..kernels import fused
from ..models import build, get_architecture, is_factory_path
from ..numerics import INPUT_SCALE_BITS
from ..optim import format_fraction
from .checkpoint import CHECKPOINT_NAME, atomic_write_bytes, save_checkpoint
from .config import TrainConfig, default_val_size
from .metrics import correct_count, evaluate, loss_sum, write_jsonl
from .validate import input_shape_of, load_train_state, restore_model

__all__ = ["TrainingInterrupted", "fit", "build_model", "load", "load_model"]

#: Config fields that may differ between a run and its resumption.
_RESUMABLE_CHANGES = {"progress", "threads", "data_dir", "download", "out", "log_every", "checkpoint_every",
                      "inference", "workers"}


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; ``--resume`` continues it."""


def default_dataset(config: TrainConfig) -> str:
    if config.dataset:
        return config.dataset
    if is_factory_path(config.model):
        raise ValueError(f"model {config.model!r} is a user module: say which data set it trains on "
                         "(--dataset mnist|cifar10|PATH.npz)")
    return get_architecture(config.model).dataset


def _gb_text(model) -> str | None:  # noqa: ANN001
    """The integer model's current gb for logs ("5", "4.5"); None for the float twin."""
    return format_fraction(model.current_gb()) if hasattr(model, "current_gb") else None


def build_model(config: TrainConfig, total_steps: int, mean: tuple[int, ...],
                scale: tuple[int, ...] | None = None,
                input_shape: tuple[int, int, int] | None = None):  # noqa: ANN201
    """The integer model or its float twin for ``config`` (``scale``: the input's, else the data set default;
    ``input_shape``: the images' (H, W, C), needed for a ``MODULE:FACTORY`` model)."""
    if config.arith == "int":
        if not config.input_std:
            scale = (1 << INPUT_SCALE_BITS,) * len(mean)
        model = build(config.model, seed=config.seed, policy=config.policy, schedule=config.schedule,
                      accumulator_bits=config.accumulator_bits, total_steps=total_steps, mean=mean,
                      gb_offsets=config.layer_gb_offsets, scale=scale, rule=config.rule, softmax=config.softmax,
                      full_range_init=config.full_range_init, input_shape=input_shape, inference=config.inference,
                      random_bits=config.random_bits, weight_headroom=config.weight_headroom,
                      end_headroom=config.end_headroom,
                      dropout=config.dropout, act_clip_bits=config.act_clip_bits,
                      act_clip_share=config.act_clip_share)
    else:
        from ..baseline import build_float

        kwargs = {} if config.lr is None else {"lr": config.lr}
        model = build_float(config.model, seed=config.seed, momentum=config.momentum,
                            weight_decay=config.weight_decay, total_steps=total_steps, input_shape=input_shape,
                            **kwargs)
        # The float twin normalises with its own float (mean, std) of the data set (niti.baseline).
    return model.to(config.device)


def load_model(checkpoint: str | Path):  # noqa: ANN201
    """Rebuild the model saved in a checkpoint file or run directory (for ``niti eval``).

    The file's digest and every field are checked first (``CheckpointError`` otherwise).
    """
    path = Path(checkpoint)
    state = load_train_state(path)
    config = _with_lr(TrainConfig.from_dict(state["config"]), state)
    model = build_model(config.replace(device="cpu"), state["total_steps"], tuple(state["mean"]),
                        input_shape=input_shape_of(state, path))
    restore_model(model, state, path)
    return model, config, state


def load(run_or_checkpoint: str | Path):  # noqa: ANN201
    """The trained model of a run directory or checkpoint file, ready to ``predict`` (``niti.load``).

    An integer model predicts with static, batch-independent shifts unless its run chose ``inference="batch"``.
    """
    return load_model(run_or_checkpoint)[0]


class _StopFlag:
    """SIGINT/SIGTERM set a flag checked between steps, so no step is cut in half."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        if self.signum is not None:  # second signal: give up at once (the last checkpoint is intact)
            raise KeyboardInterrupt
        self.signum = signum


@contextmanager
def _signals_to(flag: _StopFlag) -> Iterator[None]:
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _check_device_available(device: str) -> None:
    """Refuse a CUDA device this torch build or machine does not have, before any work starts."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested, but CUDA is not available (torch {torch.__version__})")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} requested, but only {torch.cuda.device_count()} CUDA devices exist")


def folder_image_shape(config: TrainConfig) -> tuple[int, int, int]:
    """The size image-folder data is decoded at: ``--image-size``, else the built-in model's input, else 224."""
    if config.image_size:
        return (config.image_size, config.image_size, 3)
    if not is_factory_path(config.model):
        return get_architecture(config.model).input_shape
    return (224, 224, 3)


def load_run_data(config: TrainConfig, dataset_name: str) -> niti_data.Dataset:
    """The run's data set (an image folder decoded at the model's input size)."""
    return niti_data.load_dataset(dataset_name, config.data_dir, download=config.download,
                                  image_shape=folder_image_shape(config), workers=config.workers)


def eval_images(x) -> "torch.Tensor | niti_data.folder.FolderTensors":  # noqa: ANN001
    """Evaluation images as a tensor, or (image folders) a view that decodes each slice."""
    if isinstance(x, niti_data.FolderImages):
        return x.tensors()
    return torch.from_numpy(x.copy())  # a copy: the data set's arrays are read-only, torch wants writable memory


def training_split(config: TrainConfig, ds: niti_data.Dataset, dataset_name: str) -> tuple:
    """``(x_train, y_train, x_val, y_val, augment)`` of a run (``config.val_size`` resolved)."""
    x_train, y_train, x_val, y_val = niti_data.split_validation(ds, config.val_size)
    if config.train_limit:
        x_train, y_train = x_train[:config.train_limit], y_train[:config.train_limit]
    default = dataset_name == "cifar10" or isinstance(ds.x_train, niti_data.FolderImages)
    augment = config.augment if config.augment is not None else default
    return x_train, y_train, x_val, y_val, augment


def training_batches(config: TrainConfig, x_train, y_train, augment: bool, epoch: int, start_batch: int,  # noqa: ANN001
                     *, prefetch: bool = False) -> niti_data.BatchIterator:
    """The run's batches of ``epoch`` from ``start_batch`` on (the order a resume continues with)."""
    return niti_data.BatchIterator(x_train, y_train, config.batch_size, seed=config.seed, epoch=epoch,
                                   drop_last=True, augment=niti_data.random_crop_flip if augment else None,
                                   start_batch=start_batch, prefetch=prefetch)


def recalibration_batches(config: TrainConfig, x_train, dist=None) -> Iterator[torch.Tensor]:  # noqa: ANN001
    """The first ``config.norm_recalibration`` training images (whole batches, at least one; no augmentation),
    in training-size batches, each this rank's shard: what ``recalibrate_norm`` averages over."""
    b = config.batch_size
    k = max(1, min(config.norm_recalibration, x_train.shape[0]) // b)
    images = eval_images(x_train[:k * b])
    for i in range(k):
        xb = images[i * b:(i + 1) * b]
        if dist:
            from .. import distributed

            xb, _ = distributed.shard(xb, torch.zeros(xb.shape[0], dtype=torch.int64), dist)
        yield xb


def _check_data(ds: niti_data.Dataset, config: TrainConfig) -> None:
    """The data set fits the model and has a test split to report on (checked before training starts)."""
    arch = get_architecture(config.model, ds.image_shape if is_factory_path(config.model) else None)
    if ds.image_shape != arch.input_shape or ds.num_classes > arch.num_classes:
        raise ValueError(f"data set {ds.name} has images {ds.image_shape} and {ds.num_classes} classes; "
                         f"model {arch.name} expects {arch.input_shape} and {arch.num_classes} classes")
    if len(ds.x_test) == 0:
        raise ValueError(f"data set {ds.name} has an empty test split (x_test has 0 images): nothing to evaluate")


def _with_lr(config: TrainConfig, state: dict | None) -> TrainConfig:
    """A float run's config with its learning rate resolved (recorded, like ``val_size``): the model's tuned rate
    for a new run; for a saved run whose config left it open (written before rates were recorded, when the tuned
    table was smaller), the rate it trained with, kept in its state."""
    if config.arith != "float" or config.lr is not None:
        return config
    from ..baseline import tuned_lr

    return config.replace(lr=float(state["model"]["hyper"]["lr"]) if state else tuned_lr(config.model))


def _check_resume_config(saved: TrainConfig, config: TrainConfig) -> None:
    a, b = saved.to_dict(), config.to_dict()
    diff = sorted(k for k in a if a[k] != b[k] and k not in _RESUMABLE_CHANGES)
    if diff:
        detail = ", ".join(f"{k}: {a[k]!r} -> {b[k]!r}" for k in diff)
        raise ValueError(f"cannot resume: the run's configuration differs ({detail})")


def fit(config: TrainConfig, *, resume: bool = False, stop_after_steps: int | None = None) -> dict:
    """Train as ``config`` says and return the summary (also written to ``out/summary.json``).

    ``stop_after_steps`` simulates a SIGTERM after that many steps of this call
    (tests use it to check that resuming is bit-identical).
    """
    _check_device_available(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    keep_freed_memory()  # the steps reuse freed blocks instead of faulting fresh pages (niti/heap.py)
    dist = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun or `niti train --nproc`
        from .. import distributed

        if config.arith != "int":
            raise ValueError("distributed training is implemented for the integer model only (--arith int)")
        device = torch.device(config.device)
        if device.type == "cuda" and device.index is None:  # one GPU per local rank (torchrun --nproc-per-node)
            local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
            torch.cuda.set_device(local_rank % torch.cuda.device_count())  # before NCCL binds to a GPU
        elif device.type == "cuda":
            torch.cuda.set_device(device)
        dist = distributed.init_from_env(device=device)
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
    out = Path(config.out)
    ckpt_path = out / CHECKPOINT_NAME

    state = None
    if resume:
        state = load_train_state(ckpt_path)
    elif ckpt_path.exists():
        raise ValueError(f"{out} already holds a run (checkpoint.pt); use --resume to continue it or choose "
                         "another --out")

    dataset_name = default_dataset(config)
    ds = load_run_data(config, dataset_name)
    _check_data(ds, config)
    if config.val_size is None:  # recorded resolved, in config.json, the checkpoint and summary.json
        config = config.replace(val_size=default_val_size(len(ds.x_train)))
    config = _with_lr(config, state)
    if state:
        _check_resume_config(_with_lr(TrainConfig.from_dict(state["config"]), state), config)
    x_train, y_train, x_val, y_val, augment = training_split(config, ds, dataset_name)
    if config.batch_size % world:
        raise ValueError(f"batch size {config.batch_size} does not divide among {world} processes")
    steps_per_epoch = x_train.shape[0] // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {config.batch_size} exceeds the {x_train.shape[0]} training images")
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)

    mean = tuple(state["mean"]) if state else niti_data.channel_means(x_train)
    # On resume the checkpoint's own scale replaces this one (model.load_state_dict).
    scale = niti_data.channel_scales(x_train, mean) if config.arith == "int" and not state else None
    model = build_model(config, total_steps, mean, scale, ds.image_shape)
    if dist:
        distributed.attach(model, dist)
    history: list[dict] = []
    step_log: list[dict] = []
    epoch, start_batch, seconds, best_val, best_epoch = 0, 0, 0.0, -1.0, -1
    running: tuple = (0.0, 0, 0)  # loss sum, correct, seen of the current epoch (for mid-epoch resume)
    window: list = [0.0, 0, 0]
    if state:
        restore_model(model, state, ckpt_path)
        epoch, start_batch = state["epoch"], state["batch"]
        seconds, history, step_log = state["seconds"], state["history"], state["step_log"]
        best_val, best_epoch = state["best_val"], state["best_epoch"]
        running = tuple(state["running"])

    xt_val, yt_val = eval_images(x_val), torch.from_numpy(y_val.copy())
    xt_test, yt_test = eval_images(ds.x_test), torch.from_numpy(ds.y_test.copy())
    flag = _StopFlag()
    steps_this_call = 0
    # Clipped weight steps (step_scale="exponent") before this call, carried through checkpoints so that a resumed
    # run reports the same running count as one that never stopped.
    counts_clips = hasattr(model, "current_gb") and config.step_scale == "exponent"
    clips_before = int(state.get("step_clips", 0)) if state else 0

    def step_clips() -> int:
        return clips_before + sum(p.step_clips for p in model.parameters())

    def checkpoint(next_epoch: int, next_batch: int) -> None:
        if rank != 0:
            return
        save_checkpoint(ckpt_path, {
            **({"step_clips": step_clips()} if counts_clips else {}),
            "config": config.to_dict(), "model": model.state_dict(), "epoch": next_epoch, "batch": next_batch,
            "seconds": seconds, "history": history, "step_log": step_log, "best_val": best_val,
            "best_epoch": best_epoch, "running": list(running), "window": list(window), "mean": list(mean), "total_steps": total_steps, "world_size": world,
            "input_shape": list(ds.image_shape),
        })
        write_jsonl(out / "metrics.jsonl", history)
        write_jsonl(out / "steps.jsonl", step_log)

    def accuracy(x: torch.Tensor, y: torch.Tensor) -> float | None:
        if x.shape[0] == 0:
            return None
        if dist:  # every rank predicts its share of each batch; the bits equal one process's
            return 100.0 * distributed.evaluate_sharded(model, x, y, dist) / x.shape[0]
        return 100.0 * evaluate(model, x, y) / x.shape[0]

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    show = config.progress and rank == 0
    # (epoch, batch) a resume would continue from, valid while model.step == at_step: the state the
    # exception path may save. Between a step and its bookkeeping the two disagree and nothing is saved.
    resume_at, at_step = (epoch, start_batch), model.step
    with _signals_to(flag):
        if rank == 0:  # the run's settings, readable; also marks that training is under way
            atomic_write_bytes(out / "config.json", (json.dumps(config.to_dict(), indent=2) + "\n").encode())
        try:
            while epoch < config.epochs and model.step < total_steps:
                batches = training_batches(config, x_train, y_train, augment, epoch, start_batch, prefetch=True)
                per_epoch = batches.batches_per_epoch
                bar_total = min(per_epoch, start_batch + total_steps - model.step)
                desc = f"epoch {epoch + 1}/{config.epochs}"
                # The first step of a process may compile kernels: niti's C loops once per machine, or inductor's
                # chains where those cannot be built (seconds; both cached on disk).
                compiling = steps_this_call == 0 and fused.compile_enabled()
                bar = _progress(show, bar_total, start_batch, f"{desc} (compiling kernels)" if compiling else desc)
                run_loss, run_correct, run_seen = running if start_batch else (0.0, 0, 0)
                # loss sum, correct, seen since the last steps.jsonl record
                window = list(state.get("window", (0.0, 0, 0))) if state and start_batch else [0.0, 0, 0]
                t0 = time.perf_counter()
                for b, (xb, yb) in enumerate(batches, start=start_batch):
                    if model.step >= total_steps:
                        break
                    if dist:
                        xb, yb = distributed.shard(xb, yb, dist)
                    logits = model.train_step(xb, yb)
                    t1 = time.perf_counter()
                    seconds += t1 - t0  # data loading + step; evaluation and logging are not counted
                    steps_this_call += 1
                    counts = [correct_count(logits, yb.to(model.device)), int(yb.shape[0])]
                    lsum = loss_sum(logits, yb.to(model.device))
                    if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                        flag.signum = signal.SIGTERM
                    stop_now = flag.signum is not None  # decided once per step, so a late signal waits a step
                    if dist:  # display metrics over the whole global batch; every rank stops at the same step
                        *counts, stop = distributed.all_sum_int(counts + [int(stop_now)])
                        lsum = distributed.all_sum_float([lsum])[0]
                        stop_now = stop > 0
                    run_loss, run_correct, run_seen = run_loss + lsum, run_correct + counts[0], run_seen + counts[1]
                    window = [w + v for w, v in zip(window, (lsum, counts[0], counts[1]))]
                    if model.step % config.log_every == 0 or b + 1 == per_epoch:
                        step_log.append({"step": model.step, "epoch": epoch + (b + 1) / per_epoch,
                                         "loss": window[0] / max(window[2], 1),
                                         "accuracy": 100.0 * window[1] / max(window[2], 1)})
                        window = [0.0, 0, 0]
                    running = (run_loss, run_correct, run_seen)
                    resume_at, at_step = (epoch, b + 1), model.step
                    if bar is not None:
                        if steps_this_call == 1:
                            bar.set_description(desc, refresh=False)
                        bar.update(1)
                        bar.set_postfix(loss=f"{run_loss / max(run_seen, 1):.3f}",
                                        acc=f"{100.0 * run_correct / max(run_seen, 1):.1f}%",
                                        gb=_gb_text(model), refresh=False)
                    if stop_now:
                        checkpoint(epoch, b + 1)
                        if bar is not None:
                            bar.close()
                        raise TrainingInterrupted(
                            f"interrupted by signal {flag.signum or signal.SIGTERM}; checkpoint written to "
                            f"{ckpt_path} (resume with: niti train --resume {out})")
                    if _periodic_checkpoint_due(config, model.step, b + 1 == per_epoch):
                        checkpoint(epoch, b + 1)
                    t0 = time.perf_counter()
                if bar is not None:
                    bar.close()
                if config.norm_recalibration and model.has_batch_norm():
                    model.recalibrate_norm(recalibration_batches(config, x_train, dist))
                val_acc = accuracy(xt_val, yt_val)
                test_acc = accuracy(xt_test, yt_test)
                record = {"epoch": epoch + 1, "step": model.step, "train_loss": run_loss / max(run_seen, 1),
                          "train_accuracy": 100.0 * run_correct / max(run_seen, 1), "val_accuracy": val_acc,
                          "test_accuracy": test_acc, "seconds": seconds}
                if hasattr(model, "current_gb"):
                    record["gb"] = _gb_text(model)
                    if counts_clips:  # clipped weight steps since the run started (resumes included)
                        record["step_clips"] = step_clips()
                history.append(record)
                if val_acc is not None and val_acc > best_val:
                    best_val, best_epoch = val_acc, epoch + 1
                if show:
                    print(f"epoch {epoch + 1}: loss {record['train_loss']:.4f} train {record['train_accuracy']:.2f}% "
                          f"val {_percent(val_acc)} test {_percent(test_acc)}", flush=True)
                epoch, start_batch = epoch + 1, 0
                resume_at, at_step = (epoch, 0), model.step
                checkpoint(epoch, 0)
        except Exception as exc:  # a signal's TrainingInterrupted has saved already; save any other failure
            if not isinstance(exc, TrainingInterrupted) and model.step == at_step:
                _save_on_error(exc, lambda: checkpoint(*resume_at), ckpt_path, out)
            raise

    images = model.step * config.batch_size
    summary = {
        "model": config.model, "dataset": dataset_name, "arith": config.arith,
        "final_test_accuracy": history[-1]["test_accuracy"] if history else None,
        "final_val_accuracy": history[-1]["val_accuracy"] if history else None,
        "best_val_accuracy": best_val if best_val >= 0 else None, "best_val_epoch": best_epoch if best_epoch >= 0 else None,
        "epochs": len(history), "steps": model.step, "seconds": round(seconds, 3),
        "images_per_second": round(images / seconds, 2) if seconds else None, "world_size": world,
        "val_images": int(x_val.shape[0]),
        "weights_sha256": model.weights_sha256(), "config": config.to_dict(),
    }
    if rank == 0:
        atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    if dist:
        distributed.shutdown()  # every rank finished; leave the group before the interpreter's teardown
    return summary


def _periodic_checkpoint_due(config: TrainConfig, step: int, epoch_ends: bool) -> bool:
    """Whether to save a mid-epoch checkpoint after ``step`` (the epoch-end one follows at an epoch's end)."""
    return bool(config.checkpoint_every) and step % config.checkpoint_every == 0 and not epoch_ends


def _save_on_error(exc: Exception, save: Callable[[], None], ckpt_path: Path, out: Path) -> None:
    """Save a checkpoint of the last consistent state while ``exc`` propagates, and say so in its notes."""
    try:
        save()
    except Exception as save_exc:  # the original error matters more; report both
        exc.add_note(f"no checkpoint written: {type(save_exc).__name__}: {save_exc}")
        return
    exc.add_note(f"checkpoint written to {ckpt_path} (resume with: niti train --resume {out})")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def _progress(show: bool, total: int, initial: int, desc: str):  # noqa: ANN202
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                mininterval=1.0, leave=False)
