"""Batch norm's running statistics vs each batch's own, on one integer checkpoint (issue 14's diagnosis).

    python benchmarks/bn_running_stats.py RUN [--images 2000] [--batch 500]

Prints test accuracy on the first ``--images`` CIFAR-10 test images with the checkpoint's running statistics
(static inference), with the statistics recalibrated on the first ``--recalibrate`` training images (what the
training loop now does before each evaluation), and with every batch norm using its batch's statistics.
"""

import argparse
from pathlib import Path

import numpy as np
import torch

import niti
from niti.nn import BatchNorm2d

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--recalibrate", type=int, default=4096, help="training images (batches of 128)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10.npz"))
    a = p.parse_args()
    model = niti.load(a.run)
    with np.load(a.data) as z:
        x = torch.from_numpy(z["x_test"][:a.images].copy())
        y = torch.from_numpy(z["y_test"][:a.images].astype(np.int64))

    def accuracy() -> float:
        correct = sum(int((model.predict(x[i:i + a.batch]) == y[i:i + a.batch]).sum())
                      for i in range(0, len(x), a.batch))
        return 100.0 * correct / len(x)

    print(f"running statistics, static shifts: {accuracy():.2f} %")
    with np.load(a.data) as z:
        train = torch.from_numpy(z["x_train"][:max(128, a.recalibrate // 128 * 128)].copy())
    model.recalibrate_norm(train[i:i + 128] for i in range(0, len(train), 128))
    print(f"recalibrated on {len(train)} training images, static shifts: {accuracy():.2f} %")
    for node in model.net.nodes:
        if isinstance(node.op, BatchNorm2d):
            node.op.running_mean = node.op.running_mad = None
    model.inference = "batch"
    print(f"batch statistics (batches of {a.batch}), per-batch shifts: {accuracy():.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
