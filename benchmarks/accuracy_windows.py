"""Training accuracy in windows of steps, run against run: where in a schedule one arm falls behind another.

A diagnostic for issue 12. Each run's ``steps.jsonl`` (written every 20 steps: the running training accuracy since the
previous entry) is averaged over consecutive windows of ``--window`` steps; this prints a markdown table, one row per
run, one column per window (its first step).

    python benchmarks/accuracy_windows.py results/cifar-vgg7-3ep/vgg7-int-sgd-wd17-s0 results/cifar-vgg7-3ep/vgg7-float-edrop-s0

The runs are only read; nothing is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def windows(run: Path, width: int) -> dict[int, float]:
    """Mean training accuracy (%) of the entries in each window, keyed by the window's first step."""
    path = run / "steps.jsonl"
    if not path.exists():
        raise SystemExit(f"{run}: no steps.jsonl")
    out: dict[int, list[float]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        out.setdefault(row["step"] // width * width, []).append(row.get("train_accuracy", row.get("accuracy")))
    return {start: sum(v) / len(v) for start, v in sorted(out.items())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--window", type=int, default=88, help="steps per window (default 88: a quarter of a CIFAR-10 epoch "
                                                          "at batch 128)")
    a = p.parse_args()
    rows = {run.name: windows(run, a.window) for run in a.runs}
    starts = sorted({s for r in rows.values() for s in r})
    print("| run | " + " | ".join(f"{s}–{s + a.window - 1}" for s in starts) + " |")
    print("|---|" + "---|" * len(starts))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[s]:.1f}" if s in r else "" for s in starts) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
