"""How big is one update, relative to the weights, per layer: the float twin against the integer model.

The integer update has no learning rate: each layer's gradient is rescaled so
its largest element is ``2**gb - 1`` (numerics.md §5), i.e. every layer moves its
largest weight by the same fraction of the weight range, whatever the float
optimiser would have done.  This script puts numbers on that: it trains the
float twin (SGD, momentum, weight decay, its tuned lr) and the integer model
(16-bit accumulators, several constant gb) on the same real CIFAR-10 batches
and records, per layer and step,

    mean |dW| / mean |W|      (the typical relative step)
    max |dW| / max |W|        (the largest relative step)

averaged over the steps after ``--warmup`` (the float momentum needs ~20
steps to build up).  ``gb equivalent`` is the gb at which the integer model's
typical relative step would equal the float twin's (the step halves per gb).
It is a diagnostic for choosing gb schedules, not an accuracy result.

    python benchmarks/update_scale.py --steps 60 --gbs 4,1,-2
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from niti.baseline import build_float  # noqa: E402
from niti.data.load import load_dataset  # noqa: E402
from niti.models import build  # noqa: E402
from niti.optim import GbSchedule  # noqa: E402
from train_suites import machine  # noqa: E402  (benchmarks/ is this script's sys.path[0])


def relative_steps(model, weights, images: torch.Tensor, labels: torch.Tensor, batch: int, steps: int,
                   warmup: int, tag: str) -> list[tuple[float, float]]:
    """Per layer (mean |dW| / mean |W|, max |dW| / max |W|), averaged over steps ``warmup..steps-1``."""
    sums: list[list[float]] = []
    for s in range(steps):
        before = weights()
        model.train_step(images[s * batch:(s + 1) * batch], labels[s * batch:(s + 1) * batch])
        if s < warmup:
            continue
        row = []
        for a, b in zip(before, weights()):
            delta, w = (b - a).abs().to(torch.float64), a.abs().to(torch.float64)  # metrics for people: float
            row.append((float(delta.mean() / w.mean()), float(delta.max() / w.max())))
        sums.append([x for pair in row for x in pair])
        print(f"{tag}: step {s + 1}/{steps}", file=sys.stderr, flush=True)
    n = len(sums)
    means = [sum(col) / n for col in zip(*sums)]
    return [(means[2 * i], means[2 * i + 1]) for i in range(len(means) // 2)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg-small-7")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.05, help="the float twin's learning rate")
    p.add_argument("--gbs", default="4,1,-2", help="constant gb values for the integer model (16-bit accumulators)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "results" / "update-scale"))
    a = p.parse_args()
    if not 0 <= a.warmup < a.steps:
        raise SystemExit(f"--warmup must be in [0, --steps), got {a.warmup} with --steps {a.steps}")
    torch.set_num_threads(a.threads)
    ds = load_dataset(a.dataset, a.data_dir, download=False)
    n = a.steps * a.batch_size
    if n > len(ds.y_train):
        raise SystemExit(f"{a.steps} steps of {a.batch_size} need {n} training images, the set has {len(ds.y_train)}")
    images = torch.from_numpy(ds.x_train[:n].copy())
    labels = torch.from_numpy(ds.y_train[:n].astype("int64"))
    t0 = time.time()
    fmodel = build_float(a.model, seed=0, lr=a.lr)
    arms = {f"float lr {a.lr:g}": relative_steps(
        fmodel, lambda: [w.detach().clone() for w in fmodel.parameters()], images, labels, a.batch_size, a.steps,
        a.warmup, "float")}
    gbs = [int(g) for g in a.gbs.split(",")]
    for gb in gbs:
        imodel = build(a.model, seed=0, schedule=GbSchedule.constant(gb), accumulator_bits=16)
        arms[f"int gb {gb}"] = relative_steps(
            imodel, lambda: [w.master.to(torch.int64) for w in imodel.parameters()], images, labels, a.batch_size,
            a.steps, a.warmup, f"int gb {gb}")
    seconds = time.time() - t0
    float_arm = next(iter(arms.values()))
    layers = len(float_arm)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/update_scale.py " + shlex.join(sys.argv[1:])
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    (out / "update_scale.json").write_text(json.dumps(
        {"command": command, "date": date, "machine": machine(), "seconds": round(seconds, 1),
         "layers": layers, "arms": {k: [{"mean_rel": m, "max_rel": x} for m, x in v] for k, v in arms.items()}},
        indent=2) + "\n")
    head = "| arm | " + " | ".join(f"layer {i}" for i in range(layers)) + " |"
    lines = [f"# update-scale: {a.model} on {a.dataset}", "",
             f"Generated by `benchmarks/update_scale.py` (see its docstring). Per layer, averaged over steps "
             f"{a.warmup + 1}–{a.steps} of batch {a.batch_size} (the first {n} training images, no augmentation, "
             f"seed 0): typical relative step `mean |dW| / mean |W|`, and in brackets the largest, "
             f"`max |dW| / max |W|`. Integer arms: 16-bit weight accumulators, gb constant.", "",
             f"- command: `{command}`", f"- date: {date}; {seconds:.0f} s", f"- machine: {machine()}", "",
             head, "|---" * (layers + 1) + "|"]
    for name, rows in arms.items():
        lines.append(f"| {name} | " + " | ".join(f"{m:.4f} ({x:.3f})" for m, x in rows) + " |")
    ref = gbs[0]
    lines.append(f"| gb equivalent (from gb {ref}) | " + " | ".join(
        f"{ref + math.log2(f[0] / i[0]):+.1f}" for f, i in zip(float_arm, arms[f"int gb {ref}"])) + " |")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
