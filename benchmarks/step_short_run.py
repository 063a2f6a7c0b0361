"""Float SGD's step (the default since 2026-12-02) in a short run: LeNet after 47 steps on 3,008 MNIST images.

Issue 12. The setting of tests/test_models.py::test_lenet_learns_mnist (batch 64, the default schedules compressed
into 47 steps) for six arms: today's defaults, the same without weight decay (``decay_shift=0``, the defaults
before the twin's decay became one), the per-tensor rescale's defaults until 2026-12-02 (``step_scale="max"``,
gb 5,4,3,2, full-range init, no decay), float SGD's step without the scaling to the mean loss (``batch_ref=0``)
and the float twin (lr 0.05, ×0.1 / ×0.01), with its weight decay 5e-4 and without. Prints each
seed's accuracy on the validation split (the last 5,000 training images, which the 3,008 never reach).

    python benchmarks/step_short_run.py --data-dir ../shared/data [--seeds 10] [--arms defaults,no-decay]
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
from niti.baseline import build_float  # noqa: E402
from niti.optim import GbSchedule, UpdateRule  # noqa: E402

#: key: (what the arm is, how to build it for a seed and a step count)
ARMS = {
    "defaults": ("defaults (float SGD's step, the twin's weight decay)",
                 lambda seed, steps: niti.build("lenet", seed=seed, total_steps=steps)),
    "no-decay": ("float SGD's step without weight decay (decay_shift=0, the defaults until the decay)",
                 lambda seed, steps: niti.build("lenet", seed=seed, total_steps=steps, rule=UpdateRule(decay_shift=0))),
    "per-tensor": ("per-tensor step (defaults until 2026-12-02)",
                   lambda seed, steps: niti.build("lenet", seed=seed, total_steps=steps,
                                                  rule=UpdateRule(decay_shift=0, step_scale="max"),
                                                  schedule=GbSchedule.per_tensor(), full_range_init=True)),
    "summed": ("float SGD's step on the summed gradient (--batch-ref 0: half the twin's rate at batch 64)",
               lambda seed, steps: niti.build("lenet", seed=seed, total_steps=steps, rule=UpdateRule(batch_ref=0))),
    "float": ("float twin", lambda seed, steps: build_float("lenet", seed=seed, total_steps=steps)),
    "float-no-decay": ("float twin without weight decay",
                       lambda seed, steps: build_float("lenet", seed=seed, total_steps=steps, weight_decay=0.0)),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="the folder holding mnist.npz")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. SEEDS-1 per arm (default 3)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated arms (default all: {','.join(ARMS)})")
    a = p.parse_args(argv)
    arms = a.arms.split(",")
    if unknown := [k for k in arms if k not in ARMS]:
        p.error(f"unknown arms {unknown}; choose from {list(ARMS)}")
    torch.set_num_threads(1)
    mnist = np.load(Path(a.data_dir) / "mnist.npz")
    images = torch.from_numpy(np.ascontiguousarray(mnist["x_train"])).reshape(-1, 28, 28, 1)
    labels = torch.from_numpy(mnist["y_train"].astype(np.int64))
    n_train, batch = 3008, 64
    steps = n_train // batch
    for name, build in (ARMS[k] for k in arms):
        scores = []
        for seed in range(a.seeds):
            model = build(seed, steps)
            order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
            for i in range(steps):
                idx = order[i * batch:(i + 1) * batch]
                model.train_step(images[idx], labels[idx])
            correct = int((model.predict(images[-5000:]) == labels[-5000:]).sum())
            scores.append(correct / 50)
        print(f"{name}: {' / '.join(f'{s:.2f}' for s in scores)} %, mean {statistics.mean(scores):.2f} %", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
