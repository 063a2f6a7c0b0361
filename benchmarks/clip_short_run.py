"""Activation clipping in a short run: LeNet after 47 steps on 3,008 MNIST images (issue 12, docs/numerics.md §2).

The setting of tests/test_models.py::test_lenet_learns_mnist (batch 64, gb 5 → 2 over the run, default flags) for
``act_clip_bits`` 0, 1, 2 and seeds 0, 1, 2; prints the accuracy on the first 1,000 test images.

    python benchmarks/clip_short_run.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import niti  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="the folder holding mnist.npz")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    d = np.load(Path(a.data_dir) / "mnist.npz")
    n_train, batch = 3008, 64
    x = torch.from_numpy(np.ascontiguousarray(d["x_train"][:n_train])).reshape(-1, 28, 28, 1)
    y = torch.from_numpy(d["y_train"][:n_train].astype(np.int64))
    x_test = torch.from_numpy(np.ascontiguousarray(d["x_test"][:1000])).reshape(-1, 28, 28, 1)
    y_test = torch.from_numpy(d["y_test"][:1000].astype(np.int64))
    steps = -(-n_train // batch)
    print("| act_clip_bits | seed | test accuracy on 1,000 images |\n|---|---|---|")
    for clip in (0, 1, 2):
        for seed in (0, 1, 2):
            model = niti.build("lenet", seed=seed, total_steps=steps, act_clip_bits=clip)
            order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
            for i in range(steps):
                idx = order[i * batch:(i + 1) * batch]
                model.train_step(x[idx], y[idx])
            correct = int((model.predict(x_test) == y_test).sum())
            print(f"| {clip} | {seed} | {100 * correct / len(y_test):.1f} % |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
