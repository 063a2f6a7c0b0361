"""Loss and accuracy curves of runs, integer and float overlaid, as one PNG."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["accuracy_style", "plot_runs", "read_run"]


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_run(run: Path) -> dict:
    """A run's label, per-epoch metrics and running-loss records."""
    if not run.is_dir():
        raise ValueError(f"{run} is not a run directory")
    epochs, steps = _read_jsonl(run / "metrics.jsonl"), _read_jsonl(run / "steps.jsonl")
    if not epochs and not steps:
        raise ValueError(f"{run} has no metrics.jsonl or steps.jsonl to plot")
    label = run.name
    for meta in (run / "summary.json", run / "config.json"):  # an interrupted run has only its config
        if meta.exists():
            s = json.loads(meta.read_text())
            label = f"{run.name} ({s.get('arith', '?')}, {s.get('model', '?')})"
            break
    return {"label": label, "epochs": epochs, "steps": steps}


def accuracy_style(data: list[dict]) -> str:
    """Return "bars" when no run has more than one evaluated epoch (single points make no curve), else "curves"."""
    return "bars" if all(len(run["epochs"]) <= 1 for run in data) else "curves"


def _accuracy_curves(ax, data: list[dict]) -> None:
    for i, run in enumerate(data):
        ep = run["epochs"]
        if not ep:
            continue
        xs = [e["epoch"] for e in ep]
        if any(e.get("val_accuracy") is not None for e in ep):
            ax.plot(xs, [e.get("val_accuracy") for e in ep], color=f"C{i}", marker="o", label=f"{run['label']} val")
        ax.plot(xs, [e["test_accuracy"] for e in ep], color=f"C{i}", marker="s", linestyle="--",
                label=f"{run['label']} test")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")


def _accuracy_bars(ax, data: list[dict]) -> None:
    """One pair of horizontal bars (val, test) per run, labelled with the values."""
    names = [run["label"] for run in data]
    val = [run["epochs"][-1].get("val_accuracy") if run["epochs"] else None for run in data]
    test = [run["epochs"][-1].get("test_accuracy") if run["epochs"] else None for run in data]
    ys = range(len(data))
    for offset, values, kind, hatch in ((-0.2, val, "val", None), (0.2, test, "test", "//")):
        pos = [y + offset for y, v in zip(ys, values) if v is not None]
        vals = [v for v in values if v is not None]
        bars = ax.barh(pos, vals, height=0.4, hatch=hatch, label=kind,
                       color=[f"C{y}" for y, v in zip(ys, values) if v is not None], alpha=0.8)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_yticks(list(ys), names, fontsize=7)
    ax.invert_yaxis()
    known = [v for v in val + test if v is not None]
    if known:
        ax.set_xlim(max(0.0, min(known) - 5), min(100.0, max(known) + 3))
    ax.set(xlabel="accuracy after the last epoch (%)", title="accuracy (val plain, test hatched)")


def plot_runs(runs: list[Path], output: Path, title: str | None = None) -> Path:
    """Write ``output`` (PNG): running training loss, and validation/test accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [read_run(Path(r)) for r in runs]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, run in enumerate(data):
        color = f"C{i}"
        if run["steps"]:
            ax_loss.plot([s["epoch"] for s in run["steps"]], [s["loss"] for s in run["steps"]], color=color,
                         label=run["label"])
        elif any("train_loss" in e for e in run["epochs"]):  # no step log: the per-epoch mean loss instead
            ax_loss.plot([e["epoch"] for e in run["epochs"]], [e.get("train_loss") for e in run["epochs"]],
                         color=color, marker=".", label=f"{run['label']} (epoch mean)")
    ax_loss.set(xlabel="epoch", ylabel="training loss (mean over log window)", title="loss", yscale="log")
    style = accuracy_style(data)
    if style == "bars":
        _accuracy_bars(ax_acc, data)
    else:
        _accuracy_curves(ax_acc, data)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=7)
    if style == "curves":
        ax_acc.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output
