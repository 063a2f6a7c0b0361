"""Snapshot the 30-epoch ResNet-20 runs (finished or in progress) into results/resnet20-cifar/partial.

Copies each run's config, metrics and step log, writes a per-epoch table (README.md) and plots the curves, so a
run that spans several working sessions can be committed honestly at any point.

    python benchmarks/resnet20_snapshot.py
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "runs" / "bench" / "resnet20-cifar"
DST = ROOT / "results" / "resnet20-cifar" / "partial"
EPOCHS = 30
#: (run, column label): the default integer run, the integer run with stochastic error rounding, the float twin.
RUNS = (("r20-int-s0", "integer, errors nearest"), ("r20-int-errsto-s0", "integer, errors stochastic"),
        ("r20-float-s0", "float"))

INTRO = """\
Snapshot taken {now} UTC on a 2-core AMD EPYC (AVX2, no VNNI). The runs continue in later sessions with

    python benchmarks/train_suites.py resnet20-cifar --epochs 30 --lr 0.05 --threads 1 --resume --only RUN

(integer: default flags, and the same with `--err-round stochastic`; float twin: torch BatchNorm, SGD momentum 0.9,
weight decay 5e-4, lr 0.05 chosen on validation in results/resnet-norm; batch 128, seed 0; schedules over all 30
epochs: integer gb 5,4,3,2 at quarters, float lr x0.1 at 50 % and x0.01 at 75 %). The issue's criterion (integer
within 1.0 point of float at the final epoch) is decided only when a run has finished; `curves.png` plots them
(`niti plot`).

Evaluation: batch norm's running statistics are recalibrated on 4,096 training images before every evaluation
(docs/numerics.md section 13, both arithmetics). For the first two runs the change landed while they were under way
(from integer epoch 2 and float epoch 7 on); it changes evaluation only (training is the same bits), and the earlier
epochs were evaluated with the lagging running averages (see ../bn-recalibration: 20.26 % vs 69.24 % recalibrated
at step 2,200). The stochastic-error run was recalibrated from its first epoch. Its evaluations use the static-shift
rule of the code that ran them: without the logits' bit of headroom (docs/numerics.md §12) in its first process
(started 2026-11-30 03:05 UTC), with it from its first resume on; its training bits are the same either way.

Threads only change speed, never bits: the first integer run moved to 2 threads at step ~3,730 (epoch 10.6) once
the float run had finished; code that landed meanwhile is bit-identical, and its checkpoint keeps the generator
random bits it started with (docs/numerics.md section 14).
"""


def read_metrics(run: str) -> list[dict]:
    path = SRC / run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def status(run: str, label: str, metrics: list[dict]) -> str:
    summary = SRC / run / "summary.json"
    if summary.exists():
        return f"{label}: finished, final test {json.loads(summary.read_text())['final_test_accuracy']:.2f} %"
    return f"{label}: epoch {len(metrics)} of {EPOCHS} done" if metrics else f"{label}: not started"


def main() -> None:
    DST.mkdir(parents=True, exist_ok=True)
    rows = {}
    for run, _ in RUNS:
        (DST / run).mkdir(exist_ok=True)
        for name in ("config.json", "metrics.jsonl", "steps.jsonl", "summary.json"):
            if (SRC / run / name).exists():
                shutil.copy(SRC / run / name, DST / run / name)
        rows[run] = read_metrics(run)
    finished = all((SRC / run / "summary.json").exists() for run, _ in RUNS)
    lines = [f"# ResNet-20 on CIFAR-10, 30 epochs: {'finished' if finished else 'IN PROGRESS (partial)'}", "",
             "Status: " + "; ".join(status(run, label, rows[run]) for run, label in RUNS) + ".", "",
             INTRO.format(now=f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}"),
             "| epoch | " + " | ".join(f"{label} val % | {label} test %" for _, label in RUNS) + " |",
             "|---|" + "---|---|" * len(RUNS)]

    def cell(run: str, epoch: int, key: str) -> str:
        r = rows[run]
        return f"{r[epoch][key]:.2f}" if epoch < len(r) and r[epoch].get(key) is not None else ""

    for i in range(max(len(v) for v in rows.values())):
        lines.append(f"| {i + 1} | " + " | ".join(f"{cell(run, i, 'val_accuracy')} | {cell(run, i, 'test_accuracy')}"
                                                  for run, _ in RUNS) + " |")
    (DST / "README.md").write_text("\n".join(lines) + "\n")
    started = [str(SRC / run) for run, _ in RUNS if rows[run]]
    subprocess.run([sys.executable, "-m", "niti", "plot", *started, "-o", str(DST / "curves.png"),
                    "--title", "ResNet-20, CIFAR-10: integer vs float (validation)"], check=False)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
