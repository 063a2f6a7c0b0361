"""Activation clipping in a short run: LeNet after 47 steps on 3,008 MNIST images (issue 12, docs/numerics.md §2).

The setting of tests/test_models.py::test_lenet_learns_mnist (batch 64, gb 5 → 2 over the run, default flags) for
``act_clip_bits`` c and ``act_clip_share`` k in ARMS (or ``--arms``) and seeds 0, 1, 2 (or ``--seeds``); prints the
accuracy on the validation split
(the last 5,000 training images, which the 3,008 never reach), so that a setting may be chosen on it.

    python benchmarks/clip_short_run.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import niti  # noqa: E402

#: (act_clip_bits, act_clip_share): no clipping, fixed clips, and c = 2 bounded at 2**-4, 2**-6, 2**-8.
ARMS = ((0, 0), (1, 0), (2, 0), (2, 4), (2, 6), (2, 8))
VAL_IMAGES = 5000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="the folder holding mnist.npz")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. SEEDS-1 per arm (default 3)")
    p.add_argument("--arms", default=None, help="c:k pairs, comma-separated (default: ARMS)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    d = np.load(Path(a.data_dir) / "mnist.npz")
    n_train, batch = 3008, 64
    x = torch.from_numpy(np.ascontiguousarray(d["x_train"][:n_train])).reshape(-1, 28, 28, 1)
    y = torch.from_numpy(d["y_train"][:n_train].astype(np.int64))
    x_val = torch.from_numpy(np.ascontiguousarray(d["x_train"][-VAL_IMAGES:])).reshape(-1, 28, 28, 1)
    y_val = torch.from_numpy(d["y_train"][-VAL_IMAGES:].astype(np.int64))
    steps = -(-n_train // batch)
    arms = ARMS if a.arms is None else tuple(tuple(int(v) for v in arm.split(":")) for arm in a.arms.split(","))
    seeds = range(a.seeds)
    print(f"| act_clip_bits c | act_clip_share k | validation accuracy, seeds {' / '.join(map(str, seeds))} | mean "
          f"| sd |\n|---|---|---|---|---|")
    for clip, share in arms:
        accuracies = []
        for seed in seeds:
            model = niti.build("lenet", seed=seed, total_steps=steps, act_clip_bits=clip, act_clip_share=share)
            order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
            for i in range(steps):
                idx = order[i * batch:(i + 1) * batch]
                model.train_step(x[idx], y[idx])
            accuracies.append(100 * int((model.predict(x_val) == y_val).sum()) / len(y_val))
        runs = " / ".join(f"{a:.2f}" for a in accuracies)
        sd = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        print(f"| {clip} | {share} | {runs} % | {statistics.mean(accuracies):.2f} % | {sd:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
