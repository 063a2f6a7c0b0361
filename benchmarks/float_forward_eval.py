"""Does the integer forward hold a trained integer model back at inference? Its weights evaluated in float.

A diagnostic for issue 12 (at 40 epochs the integer quarter VGG fits CIFAR-10's training set less well than its float
twin and trails it by ~2 points). For a run's checkpoint it measures validation (and, with ``--test``, test) accuracy
of the same trained weights four ways:

- **integer**: niti's own inference (int8 activations, static shifts), what training reports;
- **float, int8 weights**: a float64 forward (no activation rounding) with the int8 datapath weights ``m · 2**e``;
- **float, int16 masters**: the same with the int16 master weights ``master · 2**master_e`` (all 16 bits);
- **float, int8 weights, int8 input**: as the second, fed the integer model's int8 input (its mean, scale and
  rounding), so only the activations' rounding inside the network differs from integer inference.

If the float forwards score well above the integer one, the forward's int8 rounding costs accuracy at inference; if
they score the same, the trained weights themselves are what trails. Sequential networks only (LeNet, VGG).

    python benchmarks/float_forward_eval.py runs/bench/cifar-quarter/q-int-s0 --test

The run's weights are only read; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from niti import nn  # noqa: E402
from niti.nn.input import INPUT_SCALE_BITS  # noqa: E402
from niti.train.loop import default_dataset, load_model, load_run_data, training_split  # noqa: E402
from niti.train.metrics import evaluate  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from grad_fidelity import weightless_op  # noqa: E402  (the same float forward as the gradient check)


def _weight(p: nn.IntParameter, master: bool) -> torch.Tensor:
    if master and getattr(p, "master", None) is not None:
        return p.master.to(torch.float64) * 2.0 ** p.master_e
    return p.m.to(torch.float64) * 2.0 ** p.e


def float_logits(net: nn.Graph, x: torch.Tensor, master: bool) -> torch.Tensor:
    """Float64 logits of ``net`` (eval mode: no dropout) on real NHWC input ``x``."""
    h = x.permute(0, 3, 1, 2)
    for i, node in enumerate(net.nodes):
        op = node.op
        if node.inputs != (i,):
            raise ValueError("float_forward_eval handles sequential networks only")
        if isinstance(op, (nn.Conv2d, nn.Linear)):
            w = _weight(op.weight, master)
            b = None if op.bias is None else _weight(op.bias, master)
            h = (F.conv2d(h, w.permute(0, 3, 1, 2), b, op.stride, op.padding) if w.dim() == 4
                 else F.linear(h, w, b))
        elif isinstance(op, (nn.ReLU, nn.MaxPool2d, nn.Flatten)):
            h = weightless_op(op, h)
        elif not isinstance(op, (nn.Dropout, nn.Identity)):
            raise ValueError(f"float_forward_eval does not handle {type(op).__name__}")
    return h


def accuracies(run: str, split: str, batch: int = 500) -> dict:
    model, config, _ = load_model(run)
    name = default_dataset(config)
    ds = load_run_data(config, name)
    if split == "test":
        images, labels = ds.x_test, ds.y_test
    else:
        _, _, images, labels, _ = training_split(config, ds, name)
    images, labels = torch.tensor(images), torch.tensor(labels).long()  # copies: the npz arrays are read-only
    rt, net = model.runtime, model.net
    net.train(False)
    counts = {"integer": evaluate(model, images, labels), "float_int8_weights": 0, "float_int16_masters": 0,
              "float_int8_weights_int8_input": 0}
    mean = torch.as_tensor(model.mean).to(torch.float64)
    scale = 2.0 ** INPUT_SCALE_BITS if model.scale is None else torch.as_tensor(model.scale).to(torch.float64)
    for i in range(0, len(images), batch):
        x, y = images[i:i + batch], labels[i:i + batch]
        x_int = nn.images_to_int8(x, model.mean, rt, model.scale, None)
        x_q = x_int.m.to(torch.float64) * 2.0 ** x_int.e
        x_real = (x.to(torch.float64) - mean) * scale * 2.0 ** -INPUT_SCALE_BITS  # the same map, unrounded
        for key, inp, master in (("float_int8_weights", x_real, False), ("float_int16_masters", x_real, True),
                                 ("float_int8_weights_int8_input", x_q, False)):
            counts[key] += int((float_logits(net, inp, master).argmax(1) == y).sum())
    return {k: 100.0 * v / len(images) for k, v in counts.items()} | {"images": len(images)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (or checkpoints)")
    p.add_argument("--test", action="store_true", help="also the test split")
    a = p.parse_args()
    for run in a.runs:
        for split in ("val", "test") if a.test else ("val",):
            print(json.dumps({"run": run, "split": split, **accuracies(run, split)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
