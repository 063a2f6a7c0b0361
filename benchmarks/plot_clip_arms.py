"""Training and validation accuracy per epoch of the cifar-quarter clipping arms (issue 12, docs/numerics.md §2).

The suite's own curves.png draws every arm; this draws the ones that compare activation clipping: the defaults
(c = 0), fixed c = 2 (two seeds), c = 2 bounded at 2^-k saturated (k = 4, 5, 6, 8) and the float twin.

    python benchmarks/plot_clip_arms.py results/cifar-quarter/clip-arms.png results/cifar-quarter results/cifar-quarter/partial

Each run is read from the first folder that holds it (k = 4 stopped early and is only in ``partial``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ARMS = {"q-int-s0": "integer c = 0 (defaults)", "q-int-clip2-s0": "c = 2, s0", "q-int-clip2-s1": "c = 2, s1",
        "q-int-clip2k4-s0": "c = 2, k = 4", "q-int-clip2k5-s0": "c = 2, k = 5", "q-int-clip2k6-s0": "c = 2, k = 6",
        "q-int-clip2k8-s0": "c = 2, k = 8",
        "q-float-s0": "float twin, s0"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the PNG to write")
    p.add_argument("runs", type=Path, nargs="+", help="folders holding one folder per run, each with metrics.jsonl")
    a = p.parse_args(argv)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for run, label in ARMS.items():
        path = next((d / run / "metrics.jsonl" for d in a.runs if (d / run / "metrics.jsonl").exists()), None)
        if path is None:
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        epochs = [r["epoch"] for r in rows]
        for ax, key in zip(axes, ("train_accuracy", "val_accuracy")):
            ax.plot(epochs, [r[key] for r in rows], label=label, linestyle="--" if "float" in run else "-")
    for ax, title in zip(axes, ("training accuracy (augmented, running)", "validation accuracy")):
        ax.set(title=title, xlabel="epoch", ylabel="%", ylim=(60, 88))
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("VGG-small-7-quarter on CIFAR-10: activation clipping arms")
    fig.tight_layout()
    fig.savefig(a.out, dpi=100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
