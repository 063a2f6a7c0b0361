"""Batch norm's running statistics vs recalibrated ones on one ResNet-20 checkpoint (issue 14's diagnosis).

    python benchmarks/bn_running_stats.py RUN [RUN ...] [--recalibrate 1024,4096,16384] [--out FILE]

For each run (integer or float twin), on the CIFAR-10 validation split (the last 5,000 training images, as
the training loop holds out): accuracy with the checkpoint's running statistics, then with the statistics
recalibrated (``recalibrate_norm``, what the loop does before every evaluation) on the first N training
images for each N, and, for the integer model, with every batch norm using its batch's own statistics
(batches of 500). Prints a Markdown table, also written to ``--out``.
"""

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

import niti
from niti.nn import BatchNorm2d

ROOT = Path(__file__).resolve().parents[1]
VAL = 5000
BATCH = 128


def _accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:  # noqa: ANN001
    correct = sum(int((model.predict(x[i:i + batch]) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return 100.0 * correct / len(x)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--recalibrate", default="1024,4096,16384", help="training images, comma-separated")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10.npz"))
    p.add_argument("--out", default=None)
    a = p.parse_args()
    sizes = [int(v) for v in a.recalibrate.split(",")]
    with np.load(a.data) as z:
        x_train, y_train = z["x_train"], z["y_train"]
    x_val = torch.from_numpy(x_train[-VAL:].copy())
    y_val = torch.from_numpy(y_train[-VAL:].astype(np.int64))
    lines = ["| run | step | running statistics | " + " | ".join(f"recalibrated on {n}" for n in sizes)
             + " | each batch's own |", "|---" * (len(sizes) + 4) + "|"]
    for run in a.runs:
        with tempfile.TemporaryDirectory() as tmp:  # a copy: the run may be training and rewrite its checkpoint
            shutil.copy(Path(run).joinpath("checkpoint.pt"), Path(tmp).joinpath("checkpoint.pt"))
            model = niti.load(tmp)
        state = model.state_dict()
        cells = [f"{_accuracy(model, x_val, y_val):.2f}"]
        for n in sizes:
            model.load_state_dict(state)
            train = torch.from_numpy(x_train[:max(BATCH, n // BATCH * BATCH)].copy())
            model.recalibrate_norm(train[i:i + BATCH] for i in range(0, len(train), BATCH))
            cells.append(f"{_accuracy(model, x_val, y_val):.2f}")
        if hasattr(model, "inference"):  # the integer model: per-batch statistics and shifts
            model.load_state_dict(state)
            for node in model.net.nodes:
                if isinstance(node.op, BatchNorm2d):
                    node.op.running_mean = node.op.running_mad = None
            model.inference = "batch"
            cells.append(f"{_accuracy(model, x_val, y_val):.2f}")
        else:
            cells.append("-")
        lines.append(f"| {Path(run).name} | {model.step} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
