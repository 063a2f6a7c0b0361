"""How many levels the int8 errors of a trained integer model use, layer by layer.

Every error tensor is narrowed to int8 with one exponent (docs/numerics.md §4): its largest element sets the
scale, and every element far below it rounds to a few levels or to zero. This runs ``--steps`` training steps of a
run's checkpoint (a copy in memory; nothing is written) on its next batches and reports, for each error rescale of
the last step, the fraction of elements that are 0, that are within ±1, and the mean |error| in int8 units, and the fraction at or
above 64 and 32 (what would saturate with one or two more bits of resolution), under the run's own rounding policy:

    python benchmarks/error_resolution.py runs/bench/resnet20-cifar/r20-int-s0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from niti.train.loop import default_dataset, load_model, load_run_data, training_batches, training_split  # noqa: E402


def error_levels(run: str, steps: int = 3) -> list[dict]:
    """One record per error rescale of the last of ``steps`` steps, in backward order."""
    model, config, state = load_model(run)
    name = default_dataset(config)
    x_train, y_train, _, _, augment = training_split(config, load_run_data(config, name), name)
    runtime, records = model.runtime, []
    rescale = runtime.rescale

    def spy(t, target_bits, role, *, batched=True):  # noqa: ANN001, ANN202
        out, shift = rescale(t, target_bits, role, batched=batched)
        if role == "error":
            m = out.to(torch.int32).abs()
            records.append({"scope": runtime.scope, "shape": tuple(out.shape), "zero": float((m == 0).double().mean()),
                            "within_1": float((m <= 1).double().mean()), "mean_abs": float(m.double().mean()),
                            # what one or two more bits of resolution would cost: elements that would saturate
                            "over_63": float((m >= 64).double().mean()), "over_31": float((m >= 32).double().mean())})
        return out, shift

    runtime.rescale = spy
    for b, (xb, yb) in enumerate(training_batches(config, x_train, y_train, augment, state["epoch"], 0)):
        records.clear()
        model.train_step(xb, yb)
        if b + 1 == steps:
            break
    return records


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = error_levels(a.run, a.steps)
    print("| # | shape | zero | within ±1 | mean abs (int8 units) | ≥ 64 | ≥ 32 |")
    print("|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        print(f"| {i} | {r['shape']} | {r['zero']:.3f} | {r['within_1']:.3f} | {r['mean_abs']:.2f} "
              f"| {r['over_63']:.5f} | {r['over_31']:.5f} |")
    zero = sum(r["zero"] for r in rows) / len(rows)
    mean = sum(r["mean_abs"] for r in rows) / len(rows)
    print(f"\n{len(rows)} error tensors; on average {100 * zero:.1f} % zeros and a mean |error| of {mean:.2f} of 127.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
