"""The real range and shape of trained weights, integer runs against float ones, layer by layer.

A diagnostic for issue 12. An integer weight's int16 master has a fixed exponent, so its real value cannot pass the
rail ``32767 · 2**master_e`` (with the default headroom 0: the full-range init's own bound, docs/numerics.md §6, §8).
A float weight has no such bound. For each weight tensor (2-d and 4-d) of each run this prints a markdown table: the
largest real |w|, the rail (integer runs), the median |w|, and two shape figures: ``mean|w| / max|w|`` (0.5 for a
uniform spread, near 1 when weights pile up at the ends, small for a peaked, long-tailed spread),
``p99.9 / p50`` of |w|, and the share of weights at or past 90 % of the rail (for a float run: of the rail of the
first integer run given with a weight of that name, i.e. the share the integer model could not follow).

    python benchmarks/weight_range.py runs/bench/cifar-quarter/q-int-s0 runs/bench/cifar-quarter/q-float-s0

The runs' weights are only read; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from niti.train.loop import load_model  # noqa: E402


def real_weights(run: str) -> list[tuple[str, torch.Tensor, float | None]]:
    """``(name, real weights as float64, rail or None)`` for every 2-d and 4-d weight of a run's checkpoint."""
    model, config, _ = load_model(run)
    if config.arith == "float":
        return [(k, v.detach().to(torch.float64), None) for k, v in model.named_parameters() if v.dim() > 1]
    out = []
    for name, p in model.named_parameters():
        if p.m.dim() > 1:
            if getattr(p, "master", None) is not None:
                out.append((name, p.master.to(torch.float64) * 2.0 ** p.master_e, 32767 * 2.0 ** p.master_e))
            else:
                out.append((name, p.m.to(torch.float64) * 2.0 ** p.e, 127 * 2.0 ** p.e))
    return out


def table(runs: list[str]) -> str:
    lines = ["| run | weight | max abs | rail | median abs | mean abs / max abs | p99.9 / p50 | ≥ 90 % of rail |",
             "|---|---|---|---|---|---|---|---|"]
    rails: dict[str, float] = {}  # the first integer run's rail per weight name, for the float runs' last column
    for run in runs:
        for name, w, rail in real_weights(run):
            if rail is not None:
                rails.setdefault(name, rail)
            a = w.abs().flatten()
            p50, p999 = torch.quantile(a.float(), torch.tensor([0.5, 0.999])).tolist()
            near = rail if rail is not None else rails.get(name)
            share = "" if near is None else f"{100 * float((a >= 0.9 * near).double().mean()):.2f} %"
            lines.append(f"| {Path(run).name} | {name} | {float(a.max()):.4f} | "
                         f"{'' if rail is None else f'{rail:.4f}'} | {p50:.4f} | {float(a.mean() / a.max()):.3f} | "
                         f"{p999 / p50:.1f} | {share} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (or checkpoints)")
    print(table(p.parse_args().runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
