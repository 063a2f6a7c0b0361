"""Probe a finished integer run's plateau: continue it for a while under changed update settings.

Issue 14's 30-epoch integer ResNet-20 stops improving at ~77 % validation accuracy (train loss 0.57, the float
twin's 0.23). This continues its final checkpoint for ``--steps`` steps on the run's next epoch of batches, once per
arm (each from the same checkpoint, each in its own process), and reports the training loss over the last half of
those steps, the fraction of weights at their limit, and validation accuracy (batch norm recalibrated as in
training). An arm is ``NAME:KEY=VALUE,...`` with keys ``gb`` (a constant gb), ``headroom`` (bits of room given to
the convolution and linear masters, §6: the master is rounded to nearest at its new exponent), ``norm_offset``
(a gb offset for every batch norm's γ and β), ``err`` (the errors' rounding mode):

    python benchmarks/plateau_probe.py runs/bench/resnet20-cifar/r20-int-s0 --steps 351 \\
        control:gb=2 small:gb=0 room:gb=0,headroom=2 --out results/resnet20-cifar/plateau-probe

Validation only (the last 5,000 training images); the test split is not touched.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_arm(text: str) -> tuple[str, dict[str, int]]:
    name, _, spec = text.partition(":")
    settings = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in ("gb", "headroom", "norm_offset", "err"):
            raise SystemExit(f"unknown arm setting {key!r} in {text!r}")
        settings[key] = value if key == "err" else int(value)
    return name, settings


def run_arm(run: str, steps: int, settings: dict[str, int], threads: int) -> dict:
    """Continue ``run`` under ``settings`` (in this process) and measure it."""
    import torch

    from niti import nn
    from niti.optim import GbSchedule
    from niti.train.loop import (default_dataset, load_model, load_run_data, recalibration_batches,
                                 training_batches, training_split)
    from niti.train.metrics import correct_count, evaluate, loss_sum

    torch.set_num_threads(threads)
    model, config, state = load_model(run)
    name = default_dataset(config)
    x_train, y_train, x_val, y_val, augment = training_split(config, load_run_data(config, name), name)
    h = settings.get("headroom", 0)
    if h:
        for layer in model.net.modules():
            for p in layer.parameters() if isinstance(layer, (nn.Conv2d, nn.Linear)) else ():
                half = 1 << (h - 1)
                p.master = ((p.master.to(torch.int32) + half) >> h).to(torch.int16)  # nearest (ties up)
                p.master_e += h
                p.refresh_datapath()
    if "err" in settings:
        model.runtime.policy = replace(model.runtime.policy, error=settings["err"])
    if "gb" in settings:
        model.schedule = GbSchedule.constant(settings["gb"])
    if "norm_offset" in settings:
        names = model.parameter_names()
        norm_params = {f"{n}.{k}" for n, m in _named_modules(model) if isinstance(m, nn.BatchNorm2d)
                       for k in ("weight", "bias")}
        model.gb_offsets = tuple(settings["norm_offset"] if n in norm_params else 0 for n in names)
    epoch = state["epoch"]
    losses, correct, seen = [], 0, 0
    t0 = time.time()
    for b, (xb, yb) in enumerate(training_batches(config, x_train, y_train, augment, epoch, 0)):
        if b >= steps:
            break
        logits = model.train_step(xb, yb)
        if b >= steps // 2:
            losses.append(loss_sum(logits, yb) / yb.shape[0])
            correct += correct_count(logits, yb)
            seen += yb.shape[0]
    train_seconds = time.time() - t0
    model.recalibrate_norm(recalibration_batches(config, x_train))
    val = 100.0 * evaluate(model, torch.from_numpy(x_val.copy()), torch.from_numpy(y_val.copy())) / len(y_val)
    sat = saturation_of(model)
    return {"settings": settings, "steps": steps, "train_loss_last_half": sum(losses) / len(losses),
            "train_accuracy_last_half": 100.0 * correct / seen, "val_accuracy": val,
            "percent_at_limit": sat, "train_seconds": round(train_seconds, 1)}


def _named_modules(model) -> list:  # noqa: ANN001
    """(layer name, layer) for every layer that owns parameters, from the model's parameter names."""
    by_name = {}
    for layer in model.net.modules():
        for p in layer.parameters():
            by_name[id(p)] = layer
    out = {}
    for name, p in model.named_parameters():
        out[name.rpartition(".")[0]] = by_name[id(p)]
    return list(out.items())


def saturation_of(model) -> dict[str, float]:  # noqa: ANN001
    """Percent of master weights at ±32767, per kind (norm, conv, linear)."""
    import torch

    from benchmarks.weight_saturation import kind

    counts: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        row = counts.setdefault(kind(name, p.m.dim()), [0, 0])
        row[0] += int((p.master.to(torch.int32).abs() >= 32767).sum())
        row[1] += p.master.numel()
    return {k: round(100.0 * a / n, 2) for k, (a, n) in sorted(counts.items())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a finished integer run directory")
    p.add_argument("arms", nargs="+", help="NAME:gb=G,headroom=H,norm_offset=O,err=MODE")
    p.add_argument("--steps", type=int, default=351)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="results directory (one NAME.json per arm, README.md)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: run one arm, print JSON
    a = p.parse_args()
    if a.one:
        name, settings = parse_arm(a.arms[0])
        print(json.dumps(run_arm(a.run, a.steps, settings, a.threads)))
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for arm in a.arms:
        name, _ = parse_arm(arm)
        if (out / f"{name}.json").exists():
            print(f"{name}: done already", flush=True)
            continue
        cmd = [sys.executable, __file__, a.run, arm, "--steps", str(a.steps), "--threads", str(a.threads),
               "--out", str(out), "--one"]
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result.update(arm=arm, run=a.run, command=" ".join(["python", "benchmarks/plateau_probe.py", a.run, arm,
                                                                "--steps", str(a.steps), "--threads", str(a.threads),
                                                                "--out", str(out)]),
                      wall_seconds=round(time.time() - t0, 1),
                      date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(name, json.dumps(result), flush=True)
    rows = [json.loads(f.read_text()) | {"name": f.stem} for f in sorted(out.glob("*.json"))]
    lines = ["| arm | settings | train loss (last half) | train acc (last half) | val acc | % at limit "
             "(conv / norm) | wall s | date |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sat = r["percent_at_limit"]
        lines.append(f"| {r['name']} | {r['settings']} | {r['train_loss_last_half']:.4f} | "
                     f"{r['train_accuracy_last_half']:.2f} | {r['val_accuracy']:.2f} | {sat.get('conv', math.nan)} "
                     f"/ {sat.get('norm', math.nan)} | {r['wall_seconds']:.0f} | {r['date']} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
