"""How many of int8's bits a trained integer model's activations use (issue 12, docs/numerics.md §2).

Each activation rescale fits its batch's largest value into ±127, so a long-tailed activation leaves most values a
few LSBs. This runs one training-mode forward (whole-batch shifts, as in a training step; nothing is updated) of a
run's checkpoint on the first training images and prints, per rescale site in forward order, the share of zeros,
the share at ±127 (saturated, or exactly the largest value), the largest magnitude, percentiles of the nonzero
magnitudes, and the share of all values that a shift 1, 2 or 3 bits smaller than the run's own (``--act-clip-bits``
c + 1, + 2, + 3) would push past ±127 (to within rounding).

    python benchmarks/activation_resolution.py runs/bench/cifar-quarter/q-int-s0 --images 256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from niti.nn import module as nn_module  # noqa: E402
from niti.train import load_model  # noqa: E402
from niti.train.loop import eval_images, load_run_data  # noqa: E402


def site_outputs(run: str | Path, images: int) -> list[tuple[str, torch.Tensor]]:
    """``(layer type, |int8 output|)`` of every activation rescale of one training-mode forward."""
    model, config, _ = load_model(run)
    ds = load_run_data(config, config.dataset or model.arch.dataset)
    x = eval_images(ds.x_train[:images])
    seen: list[tuple[str, torch.Tensor]] = []
    original = nn_module.Module.rescale_activation

    def record(self: nn_module.Module, t: torch.Tensor, ctx: dict | None) -> tuple[torch.Tensor, int]:
        out, shift = original(self, t, ctx)
        seen.append((type(self).__name__, out.detach().to(torch.int64).abs().flatten()))
        return out, shift

    nn_module.Module.rescale_activation = record
    try:
        model.net.train()
        with torch.no_grad():
            model.forward(x)
    finally:
        nn_module.Module.rescale_activation = original
    return seen


def table(seen: list[tuple[str, torch.Tensor]]) -> str:
    rows = ["| site | layer | values | zeros | at ±127 | max | nonzero p50 / p90 / p99 | past ±127 at c + 1 / + 2 / + 3 |",
            "|---|---|---|---|---|---|---|---|"]
    for i, (name, a) in enumerate(seen):
        nonzero = a[a > 0].numpy()
        p50, p90, p99 = np.percentile(nonzero, [50, 90, 99]) if nonzero.size else (0, 0, 0)
        top = int(a.max())  # a shift c bits smaller doubles each value c times: those past 127 saturate
        clipped = " / ".join(f"{100 * float((a << c > 127).float().mean()):.2f} %" for c in (1, 2, 3))
        rows.append(f"| {i} | {name} | {a.numel():,} | {100 * float((a == 0).float().mean()):.1f} % | "
                    f"{100 * float((a == 127).float().mean()):.2f} % | {top} | "
                    f"{p50:.0f} / {p90:.0f} / {p99:.0f} | {clipped} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="an integer run directory or its checkpoint.pt")
    p.add_argument("--images", type=int, default=256, help="training images in the one batch (default 256)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(table(site_outputs(a.run, a.images)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
