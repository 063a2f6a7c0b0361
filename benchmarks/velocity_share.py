"""How many of a trained run's steps are below one master unit: the share of final velocities under 1 and under 1/16.

A diagnostic for issue 12 (docs/numerics.md §5). With momentum the step of a weight is its velocity, which has
``step_frac_bits`` F bits below one int16 master unit; the step is rounded to a unit (pseudo-stochastically by
default), and pseudo-stochastic rounding never moves a weight whose step is below 1/16 unit. For each run's final
checkpoint this prints a markdown table: per weight tensor, the share of velocities with ``|v| < 2**F`` (below one
unit) and ``|v| < 2**(F - 4)`` (below 1/16 unit), and the whole model's share.

    python benchmarks/velocity_share.py runs/bench/cifar-vgg7/vgg7-int-eh2-s0 runs/bench/cifar-vgg7/vgg7-int-vr-s0

The runs are only read; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from niti.train.loop import load_model  # noqa: E402


def table(runs: list[str]) -> str:
    lines = ["| run | weight | velocities | below 1 unit | below 1/16 unit |", "|---|---|---|---|---|"]
    for run in runs:
        model, config, _ = load_model(run)
        f = config.step_frac_bits
        total = below = tiny = 0
        for name, p in model.named_parameters():
            if p.velocity is None:
                raise SystemExit(f"{run}: {name} has no velocity (a run without momentum)")
            a = p.velocity.abs()
            n, b, t = a.numel(), int((a < 1 << f).sum()), int((a < 1 << (f - 4)).sum())
            total, below, tiny = total + n, below + b, tiny + t
            lines.append(f"| {Path(run).name} | {name} | {n:,} | {100 * b / n:.1f} % | {100 * t / n:.1f} % |")
        lines.append(f"| {Path(run).name} | **all** | {total:,} | **{100 * below / total:.1f} %** | "
                     f"**{100 * tiny / total:.1f} %** |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories with a checkpoint")
    print(table(p.parse_args().runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
