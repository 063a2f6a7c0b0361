"""Learning-rate sweep of the float baseline on the validation split (the last 5000 training images).

For each model and learning rate: train a fresh ``FloatModel`` for a short,
fixed budget (the lr schedule decays inside it, as the integer gb schedule
does), then measure top-1 accuracy on the held-out validation images. The
test split is never touched. Writes one JSON per run, ``summary.json`` and a
markdown table (``README.md``) with the exact command, date and machine.

    python benchmarks/lr_sweep.py                       # LeNet/MNIST 1 epoch, VGG-small-7/CIFAR-10 4000 images
    python benchmarks/lr_sweep.py --models lenet --lrs 0.05 --mnist-images 500 --val-limit 200 --out /tmp/sweep
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from niti.baseline import build_float
from niti.data import BatchIterator, load_dataset, split_validation
from niti.models import get_architecture

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet", "vgg-small-7"])
    p.add_argument("--lrs", nargs="+", type=float, default=[0.01, 0.02, 0.05, 0.1])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1, help="passes over the (possibly limited) training images")
    p.add_argument("--mnist-images", type=int, default=None, help="first N training images (default: all 55000)")
    p.add_argument("--cifar-images", type=int, default=4000, help="first N training images (default: 4000)")
    p.add_argument("--val-size", type=int, default=5000, help="last N training images held out for validation")
    p.add_argument("--val-limit", type=int, default=None, help="evaluate only the first N validation images")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default=str(ROOT / "results" / "lr_sweep"))
    args = p.parse_args(argv)
    if any(not (math.isfinite(lr) and lr > 0) for lr in args.lrs):
        p.error(f"--lrs must be positive, got {args.lrs}")
    if args.batch_size < 1 or args.epochs < 1:
        p.error("--batch-size and --epochs must be >= 1")
    return args


def evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on uint8 NHWC ``x`` with int64 labels ``y``."""
    correct = 0
    for i in range(0, len(x), batch_size):
        pred = model.predict(torch.from_numpy(np.array(x[i:i + batch_size])))  # a writable copy
        correct += int((pred.cpu() == torch.from_numpy(np.array(y[i:i + batch_size]))).sum())
    return correct / len(x)


def run_one(name: str, lr: float, data: tuple[np.ndarray, ...], args: argparse.Namespace) -> dict:
    """Train one fresh model at ``lr`` and return its record (accuracy, loss curve, timings)."""
    x_train, y_train, x_val, y_val = data
    steps_per_epoch = -(-len(x_train) // args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    model = build_float(name, seed=args.seed, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay,
                        total_steps=total_steps).to(args.device)
    losses: list[float] = []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        for images, labels in BatchIterator(x_train, y_train, args.batch_size, seed=args.seed, epoch=epoch):
            logits = model.train_step(images, labels)
            losses.append(F.cross_entropy(logits.float().cpu(), labels).item())  # metrics only, after the step
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    accuracy = evaluate(model, x_val, y_val)
    eval_s = time.perf_counter() - start
    tail = losses[-max(1, len(losses) // 10):]
    chunk = max(1, len(losses) // 20)
    return {
        "model": name, "dataset": get_architecture(name).dataset, "lr": lr, "seed": args.seed,
        "momentum": args.momentum, "weight_decay": args.weight_decay, "lr_decay": list(model.schedule.decay),
        "lr_boundaries": list(model.schedule.boundaries), "batch_size": args.batch_size, "epochs": args.epochs,
        "train_images": len(x_train), "steps": total_steps, "val_images": len(x_val),
        "val_accuracy": accuracy, "final_train_loss": float(np.mean(tail)),
        "diverged": not all(math.isfinite(v) for v in losses),
        "loss_curve": [float(np.mean(losses[i:i + chunk])) for i in range(0, len(losses), chunk)],
        "loss_curve_chunk_steps": chunk, "train_seconds": train_s, "eval_seconds": eval_s,
        "weights_sha256": model.weights_sha256(),
    }


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "git_commit": commit}


def markdown(records: list[dict], command: str, date: str, info: dict, args: argparse.Namespace) -> str:
    lines = ["# Float baseline learning-rate sweep (validation split)", "",
             f"- command: `{command}`", f"- date: {date}",
             f"- machine: {info['cpu']}, {info['cpu_count']} CPUs, {info['torch_threads']} torch threads, "
             f"torch {info['torch']}, Python {info['python']}"
             + (f", CUDA {info['cuda_device']}" if info["cuda_device"] else ""),
             f"- code: git commit {info['git_commit']} (working tree may differ)", "",
             f"Validation = the last {args.val_size} training images (never the test set)"
             + (f", first {args.val_limit} of them" if args.val_limit else "") + ". Training images = the first N "
             f"of the rest, reshuffled each epoch (seed {args.seed}), no augmentation. SGD with momentum "
             f"{args.momentum:g}, weight decay {args.weight_decay:g}, batch {args.batch_size}; lr ×0.1 at 50 % "
             "and ×0.01 at 75 % of the steps. Best lr per model in bold.", "",
             "| model | lr | train images | epochs | steps | val images | val acc | final train loss | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    best = {}
    for r in records:
        if not r["diverged"] and r["val_accuracy"] >= best.get(r["model"], (-1.0,))[0]:
            best[r["model"]] = (r["val_accuracy"], r["lr"])
    for r in records:
        lr = f"**{r['lr']:g}**" if best.get(r["model"], (None, None))[1] == r["lr"] else f"{r['lr']:g}"
        loss = "diverged" if r["diverged"] else f"{r['final_train_loss']:.4f}"
        lines.append(f"| {r['model']} | {lr} | {r['train_images']} | {r['epochs']} | {r['steps']} | "
                     f"{r['val_images']} | {100 * r['val_accuracy']:.2f} % | {loss} | {r['train_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/lr_sweep.py", *(sys.argv[1:] if argv is None else argv)])
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for name in args.models:
        dataset = get_architecture(name).dataset
        x_train, y_train, x_val, y_val = split_validation(load_dataset(dataset, args.data_dir, download=False),
                                                          args.val_size)
        limit = args.mnist_images if dataset == "mnist" else args.cifar_images
        data = (x_train[:limit], y_train[:limit], x_val[:args.val_limit], y_val[:args.val_limit])
        for lr in args.lrs:
            record = run_one(name, lr, data, args)
            records.append(record)
            (out / f"{name}_lr{lr:g}.json").write_text(json.dumps(record, indent=2) + "\n")
            print(f"{name} lr={lr:g}: val {100 * record['val_accuracy']:.2f} % "
                  f"loss {record['final_train_loss']:.4f} ({record['train_seconds']:.1f} s)", flush=True)
    info = machine()
    summary = {"command": command, "date": date, "machine": info, "runs": records}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "README.md").write_text(markdown(records, command, date, info, args))
    print(f"wrote {out}/README.md")


if __name__ == "__main__":
    main()
