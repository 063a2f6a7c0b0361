"""Which clip a share-bounded run's activation rescales choose (issue 12, docs/numerics.md §2).

Runs training-mode forwards (whole-batch shifts, nothing updated) of a run's checkpoint on its first training
batches and counts, per activation rescale site in forward order, how often each clip c' was chosen: the bits
between the shift that fits the batch's largest value and the shift taken.

    python benchmarks/clip_choices.py results/cifar-quarter/partial/q-int-clip2k6-s0 --batches 8
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from niti.kernels import fused  # noqa: E402
from niti.runtime import Runtime  # noqa: E402
from niti.train import load_model  # noqa: E402
from niti.train.loop import eval_images, load_run_data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder with config.json and checkpoint.pt")
    p.add_argument("--batches", type=int, default=8)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    model, config, state = load_model(a.run)
    ds = load_run_data(config, config.dataset or model.arch.dataset)
    chosen: list[int] = []
    original = Runtime._rescale_shift

    def spy(self: Runtime, t: torch.Tensor, target_bits: int, role: str, clip_bits: int, clip_share: int,
            batched: bool) -> int:
        shift = original(self, t, target_bits, role, clip_bits, clip_share, batched)
        if role == "activation" and clip_bits:
            chosen.append(max(0, fused.max_abs(t).bit_length() - target_bits) - shift)
        return shift

    per_site: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    Runtime._rescale_shift = spy
    try:
        model.net.train()
        for b in range(a.batches):
            chosen.clear()
            with torch.no_grad():
                model.forward(eval_images(ds.x_train[b * config.batch_size:(b + 1) * config.batch_size]))
            for site, c in enumerate(chosen):
                per_site[site][c] += 1
    finally:
        Runtime._rescale_shift = original
    print(f"`{Path(a.run).name}` after step {model.step} (act_clip_bits {config.act_clip_bits}, act_clip_share "
          f"{config.act_clip_share}), {a.batches} batches of {config.batch_size}:\n")
    print("| site | batches by clip chosen |\n|---|---|")
    for site, counts in sorted(per_site.items()):
        print(f"| {site} | " + ", ".join(f"c' = {c}: {n}" for c, n in sorted(counts.items())) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
