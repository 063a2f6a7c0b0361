"""How much of an integer model's weights sit at their accumulator's limit, by kind of parameter.

A master weight at ±32767 (int16) or ±127 (int8) cannot grow further (docs/numerics.md §5, §6): a tensor with many
weights at the rails has lost part of its range to the update's random walk. The report groups parameters into
batch-norm affine (γ, β), convolution and linear weights, and prints a markdown table per run directory:

    python benchmarks/weight_saturation.py runs/bench/resnet-update/r20u-default-s0 runs/bench/...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from niti.train.loop import load_model  # noqa: E402


def kind(name: str, ndim: int) -> str:
    """"norm" for a batch norm's γ/β (1-d tensors other than a linear layer's bias), else "conv" or "linear"."""
    if ndim == 4:
        return "conv"
    if ndim == 2:
        return "linear"
    return "linear" if name.startswith("fc.") else "norm"


def saturation(run: Path) -> dict[str, tuple[int, int, float]]:
    """kind -> (weights at the limit, weights, mean |int8 datapath mantissa|)."""
    model = load_model(run)[0]
    out: dict[str, list[float]] = {}
    for name, p in model.named_parameters():
        master = (p.master if p.master is not None else p.m).to(torch.int32)
        limit = 32767 if p.master is not None else 127
        row = out.setdefault(kind(name, p.m.dim()), [0, 0, 0])
        row[0] += int((master.abs() >= limit).sum())
        row[1] += master.numel()
        row[2] += int(p.m.to(torch.int32).abs().sum())
    return {k: (int(a), int(n), s / n) for k, (a, n, s) in out.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (or checkpoint files) of integer models")
    a = p.parse_args()
    print("| run | kind | at the limit | weights | % at the limit | mean abs int8 |")
    print("|---|---|---|---|---|---|")
    for run in a.runs:
        for k, (at, n, mean) in sorted(saturation(Path(run)).items()):
            print(f"| {Path(run).name} | {k} | {at} | {n} | {100 * at / n:.2f} | {mean:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
