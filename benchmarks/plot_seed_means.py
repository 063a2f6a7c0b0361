"""Mean accuracy curves of run groups that differ only in their seed (a band from the lowest to the highest seed).

Where a suite's curves.png draws every run (unreadable with dozens of seeds and arms), this draws one line per
group, validation and test side by side, from the metrics.jsonl that train_suites.py copied into the results folder.

    python benchmarks/plot_seed_means.py results/digits --groups digits-int-e20,digits-float-lr0.1-e20 \\
        --out results/digits/means-e20.png
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def group_curves(results: Path, group: str) -> dict[str, list[list[float]]]:
    """``{"val": [[acc per epoch] per seed], "test": ...}`` of the runs ``<group>-s<seed>`` under ``results``."""
    runs = sorted(p for p in results.iterdir() if p.is_dir() and re.fullmatch(re.escape(group) + r"-s\d+", p.name))
    if not runs:
        raise SystemExit(f"no runs {group}-s<seed> under {results}")
    curves: dict[str, list[list[float]]] = {"val": [], "test": []}
    for run in runs:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for split in curves:
            curves[split].append([r[f"{split}_accuracy"] for r in rows])
    return curves


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="a results folder of train_suites.py")
    p.add_argument("--groups", required=True, help="comma-separated run names without their -s<seed>")
    p.add_argument("--labels", default=None, help="comma-separated legend labels (default: the group names)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ylim", default=None, help="LOW,HIGH of the accuracy axis")
    a = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = a.groups.split(",")
    labels = a.labels.split(",") if a.labels else groups
    if len(labels) != len(groups):
        raise SystemExit(f"{len(groups)} groups but {len(labels)} labels")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for group, label in zip(groups, labels):
        curves = group_curves(a.results, group)
        for ax, split in zip(axes, ("val", "test")):
            seeds = curves[split]
            epochs = range(1, min(len(c) for c in seeds) + 1)
            cols = [[c[e - 1] for c in seeds] for e in epochs]
            line, = ax.plot(epochs, [sum(c) / len(c) for c in cols], marker="o", markersize=3,
                            label=f"{label} (n = {len(seeds)})")
            ax.fill_between(epochs, [min(c) for c in cols], [max(c) for c in cols], color=line.get_color(), alpha=0.15)
    for ax, split in zip(axes, ("validation", "test")):
        ax.set_title(f"{split} accuracy, mean over seeds (band: min-max)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if a.ylim:
            ax.set_ylim(*(float(v) for v in a.ylim.split(",")))
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
