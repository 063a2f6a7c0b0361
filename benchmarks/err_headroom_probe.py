"""A probe, not a feature: train with the errors' int8 scale set ``H`` bits finer than their largest element allows.

Every error tensor is narrowed to int8 with one exponent set by its largest element (docs/numerics.md §4), and in
a trained quarter VGG that element is an outlier: fewer than 0.1 % of a convolution's errors reach 32 of 127
(``benchmarks/error_resolution.py`` on ``results/cifar-quarter/partial/q-int-s0`` at epoch 20, commit 5967e39). With ``--headroom H``
each error rescale shifts ``H`` bits less (never below 0) and saturates at ±127 what no longer fits, counting the
saturated elements; everything else is ``niti train`` unchanged. The question it answers: does finer error
resolution, paid for with clipped outliers, make the integer model fit faster?

    python benchmarks/err_headroom_probe.py --headroom 2 -- --model vgg-small-7-quarter --epochs 4 \\
        --batch-size 128 --seed 0 --threads 1 --out runs/bench/err-headroom/h2-s0

The saturation counts are printed when the run ends and written to ``<out>/error_saturation.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from niti import cli  # noqa: E402
from niti.runtime import Runtime  # noqa: E402


def install(headroom: int) -> dict[str, int]:
    """Patch ``Runtime`` so that every error rescale shifts ``headroom`` bits less; returns the live counts."""
    counts = {"rescales": 0, "elements": 0, "saturated": 0, "no_room": 0}
    rescale, shift_for_width = Runtime.rescale, Runtime.shift_for_width

    def finer_shift(self, width, target_bits, *, batched=True):  # noqa: ANN001, ANN202
        shift = shift_for_width(self, width, target_bits, batched=batched)
        return max(0, shift - getattr(self, "_probe_headroom", 0))

    def error_rescale(self, t, target_bits, role, *, batched=True):  # noqa: ANN001, ANN202
        if role != "error":
            return rescale(self, t, target_bits, role, batched=batched)
        self._probe_headroom = headroom
        try:
            out, shift = rescale(self, t, target_bits, role, batched=batched)
        finally:
            self._probe_headroom = 0
        limit = ((1 << target_bits) - 1) << shift  # |t| above this saturates (before rounding's last half step)
        counts["rescales"] += 1
        counts["elements"] += t.numel()
        counts["saturated"] += int((t.abs() > limit).sum())
        counts["no_room"] += shift == 0
        return out, shift

    Runtime.shift_for_width, Runtime.rescale = finer_shift, error_rescale
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--headroom", type=int, required=True, help="bits finer than the largest error allows")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then niti train's arguments")
    a = p.parse_args()
    args = a.train_args[1:] if a.train_args[:1] == ["--"] else a.train_args
    counts = install(a.headroom)
    status = cli.main(["train", *args])
    out = Path(args[args.index("--out") + 1]) if "--out" in args else None
    record = {"headroom": a.headroom, **counts,
              "saturated_fraction": counts["saturated"] / max(1, counts["elements"])}
    print(json.dumps(record))
    if out is not None and out.is_dir():
        (out / "error_saturation.json").write_text(json.dumps(record, indent=2) + "\n")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
