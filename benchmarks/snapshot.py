"""Snapshot long resumable runs (finished or in progress) into a results folder: configs, metrics, a table, curves.

Copies each run's config, metrics and step log from runs/bench/<suite>/<run>, writes a per-epoch validation / test
table (README.md, under the hand-written intro.md of the folder when there is one) and plots the curves, so a run
that spans several working sessions can be committed honestly at any point. An unfinished run's checkpoint.pt is
copied too: runs/ is not kept between sessions, so the committed copy is what ``train_suites.py --resume`` continues
from in the next one (``--resume-from``); a finished run's copy is deleted.

    python benchmarks/snapshot.py cifar-quarter --epochs 40 --runs q-int-s0=integer,q-float-s0=float \\
        --out results/cifar-quarter/partial
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def status(run_dir: Path, label: str, metrics: list[dict], epochs: int) -> str:
    summary = run_dir / "summary.json"
    if summary.exists():
        return f"{label}: finished, final test {json.loads(summary.read_text())['final_test_accuracy']:.2f} %"
    return f"{label}: epoch {len(metrics)} of {epochs} done" if metrics else f"{label}: not started"


def snapshot(src: Path, dst: Path, runs: list[tuple[str, str]], epochs: int, title: str, intro: str) -> list[str]:
    """Copy the runs' files from ``src`` to ``dst`` and write ``dst/README.md`` and ``dst/curves.png``."""
    dst.mkdir(parents=True, exist_ok=True)
    rows = {}
    # A run this session's runs/ does not hold (finished or carried in an earlier session) keeps its committed copy.
    where = {run: src / run if (src / run).exists() else dst / run for run, _ in runs}
    for run, _ in runs:
        (dst / run).mkdir(exist_ok=True)
        if where[run] != src / run:
            rows[run] = read_metrics(dst / run)
            continue
        for name in ("config.json", "metrics.jsonl", "steps.jsonl", "summary.json"):
            if (src / run / name).exists():
                shutil.copy(src / run / name, dst / run / name)
        carried = dst / run / "checkpoint.pt"
        if (src / run / "summary.json").exists():
            carried.unlink(missing_ok=True)
        elif (src / run / "checkpoint.pt").exists():
            shutil.copy(src / run / "checkpoint.pt", carried)
        rows[run] = read_metrics(src / run)
    finished = all((where[run] / "summary.json").exists() for run, _ in runs)
    now = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}"
    lines = [f"# {title}: {'finished' if finished else 'IN PROGRESS (partial)'}", "",
             "Status: " + "; ".join(status(where[run], label, rows[run], epochs) for run, label in runs) + ".", "",
             f"Snapshot taken {now} UTC by `benchmarks/snapshot.py` from `runs/bench/`.", "", intro.strip(), "",
             "| epoch | " + " | ".join(f"{label} val % | {label} test %" for _, label in runs) + " |",
             "|---|" + "---|---|" * len(runs)]

    def cell(run: str, epoch: int, key: str) -> str:
        r = rows[run]
        return f"{r[epoch][key]:.2f}" if epoch < len(r) and r[epoch].get(key) is not None else ""

    for i in range(max((len(v) for v in rows.values()), default=0)):
        lines.append(f"| {i + 1} | " + " | ".join(f"{cell(run, i, 'val_accuracy')} | {cell(run, i, 'test_accuracy')}"
                                                  for run, _ in runs) + " |")
    (dst / "README.md").write_text("\n".join(lines) + "\n")
    started = [str(where[run]) for run, _ in runs if rows[run]]
    if started:
        subprocess.run([sys.executable, "-m", "niti", "plot", *started, "-o", str(dst / "curves.png"),
                        "--title", f"{title} (validation)"], check=False)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", help="the train_suites.py suite whose runs to snapshot")
    p.add_argument("--runs", required=True, help="comma-separated RUN=LABEL pairs, in column order")
    p.add_argument("--epochs", type=int, required=True, help="the runs' planned epochs")
    p.add_argument("--out", required=True, help="results folder (its intro.md, if any, heads the README)")
    p.add_argument("--title", default=None)
    a = p.parse_args()
    runs = [tuple(pair.split("=", 1)) for pair in a.runs.split(",")]
    if any(len(r) != 2 for r in runs):
        raise SystemExit(f"--runs takes RUN=LABEL pairs, got {a.runs!r}")
    out = Path(a.out)
    intro = (out / "intro.md").read_text() if (out / "intro.md").exists() else ""
    lines = snapshot(ROOT / "runs" / "bench" / a.suite, out, runs, a.epochs, a.title or a.suite, intro)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
