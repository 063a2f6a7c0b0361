"""A probe: train with one dropout mask per sample instead of one per feature shared by the whole batch.

niti's dropout (like the NITI reference's) draws one 0/1 mask per feature and applies it to every sample of the
batch, so each step the classifier sees only half its inputs, for every sample at once. The float twin uses
``torch.nn.Dropout``, a mask per element. With ``--per-sample`` each element gets its own draw from the same counter
stream (a whole-batch draw, so 1 and N processes agree); everything else is ``niti train`` unchanged:

    python benchmarks/dropout_probe.py -- --model vgg-small-7-quarter --epochs 4 --batch-size 128 --seed 0 \\
        --threads 1 --out runs/bench/dropout/sample-s0
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from niti import cli, nn  # noqa: E402
from niti.numerics import IntTensor  # noqa: E402


def per_sample_forward(self, x: IntTensor, ctx: dict | None = None) -> IntTensor:  # noqa: ANN001
    if not self.training:
        return x
    rt = self.runtime
    keep = rt._counter_draw("dropout", 1, tuple(x.m.shape), True, x.m.device).to(torch.int8)
    if ctx is not None:
        ctx["mask"] = keep
    return IntTensor(x.m * keep, x.e + 1)


if __name__ == "__main__":
    args = sys.argv[1:]
    args = args[1:] if args[:1] == ["--"] else args
    nn.Dropout.forward = per_sample_forward
    raise SystemExit(cli.main(["train", *args]))
