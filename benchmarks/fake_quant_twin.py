"""The float twin trained through the integer model's forward rounding: is the int8 forward what trails?

A diagnostic for issue 12. At 40 epochs the integer quarter VGG fits CIFAR-10's training set less well than its
float twin, and neither the annealing, nor inference, nor (at 4 epochs) the backward's int8 errors explain it
(results/cifar-quarter/, results/grad-fidelity/). This trains the float twin (float32 weights, exact autograd
gradients, PyTorch SGD with momentum and weight decay, its tuned lr and schedule) with the integer forward's
rounding simulated on the way ("fake quantisation", gradients passed straight through):

- ``acts``: the normalised input and every convolution and linear output (logits included) rounded to int8 with
  one power-of-two exponent per tensor taken from the batch's largest magnitude (docs/numerics.md §2, §4, §8;
  ReLU, max pooling, flatten and dropout keep int8 values on int8 grids, so they need no rounding of their own);
- ``weights``: every convolution and linear weight rounded the same way in each forward (the int8 datapath
  weight ``W8`` of an int16 master, docs/numerics.md §6);
- ``all``: both.

If the twin with ``all`` still reaches its own accuracy, the forward's rounding is not what holds the integer model
back, and the cause is in the integer backward or update; if it falls to the integer model's, it is.

    python benchmarks/fake_quant_twin.py --quantize all --epochs 4 --out runs/bench/twin-diagnostics/fq-all-s0

Resumable (``--resume``, the same flags). The run directory is a float run's (``metrics.jsonl``, ``summary.json``,
a checkpoint) with ``"fake_quant"`` recorded under the config's ``extra``; ``niti eval`` on it would evaluate the
plain float forward, so this script reports the accuracies it measured with the rounding on. Rounding differs from
the integer model's in two details: ties go to even (``torch.round``) instead of away from zero, and the largest
magnitude maps to (63.5, 127] instead of the integer's [64, 127] (an accumulator's bit length); neither changes a
tensor's exponent by more than one in rare ties.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import niti.baseline as baseline  # noqa: E402
from niti.train.config import TrainConfig  # noqa: E402
from niti.train.loop import fit  # noqa: E402

QUANTIZE = ("acts", "weights", "all")


def fake_int8(x: Tensor) -> Tensor:
    """``x`` rounded to int8 mantissas with one power-of-two exponent for the whole tensor; identity gradient."""
    with torch.no_grad():
        peak = x.abs().max()
        if peak == 0:
            return x
        scale = torch.exp2(torch.ceil(torch.log2(peak / 127)))
        q = torch.clamp(torch.round(x / scale), -127, 127) * scale
    return x + (q - x).detach()


def _quantise_layer(layer: nn.Module, weights: bool, acts: bool) -> None:
    """Route ``layer``'s forward through rounded weights and round its output (instance attribute, not a subclass,
    so the state dict and the checkpoint keep the float twin's names)."""
    if isinstance(layer, nn.Conv2d):
        def forward(x: Tensor) -> Tensor:
            w = fake_int8(layer.weight) if weights else layer.weight
            out = layer._conv_forward(x, w, layer.bias)
            return fake_int8(out) if acts else out
    else:
        def forward(x: Tensor) -> Tensor:
            w = fake_int8(layer.weight) if weights else layer.weight
            out = F.linear(x, w, layer.bias)
            return fake_int8(out) if acts else out
    layer.forward = forward


def install(model: baseline.FloatModel, quantize: str) -> baseline.FloatModel:
    """Make ``model``'s forward round as ``quantize`` says (in place); returns it."""
    weights, acts = quantize in ("weights", "all"), quantize in ("acts", "all")
    for layer in model.net.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            _quantise_layer(layer, weights, acts)
    if acts:
        normalise = model.normalise
        model.normalise = lambda images: fake_int8(normalise(images))
    return model


def carry_checkpoint(out: str, resume_from: str | None) -> None:
    """Before a resume, copy a committed run (``<resume_from>/<run>/``: checkpoint and logs, as
    ``benchmarks/snapshot.py`` leaves them) into ``out`` when ``out`` holds no checkpoint (runs/ is not kept between
    sessions). Default ``resume_from``: results/twin-diagnostics."""
    target = Path(out)
    carried = Path(resume_from or ROOT / "results" / "twin-diagnostics") / target.name
    if (target / "checkpoint.pt").exists() or not (carried / "checkpoint.pt").exists():
        return
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "metrics.jsonl", "steps.jsonl", "checkpoint.pt"):
        if (carried / name).exists():
            shutil.copy(carried / name, target / name)
    print(f"resuming {target} from the committed {carried}", flush=True)


def run_arguments(description: str, epochs: int) -> argparse.ArgumentParser:
    """The options every twin diagnostic shares (model, length, seed, where the run goes, resuming)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg-small-7-quarter")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--resume-from", default=None, help="with --resume: where a run without a checkpoint in --out "
                   "finds one (<DIR>/<run name>/; default results/twin-diagnostics)")
    p.add_argument("--max-steps", type=int, default=None, help="stop early (a smoke test)")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    return p


def train_twin(a: argparse.Namespace, adapt: Callable[[baseline.FloatModel], baseline.FloatModel],
               extra: dict) -> int:
    """Train the float twin as ``a`` says, every model it builds (fresh or resumed) passed through ``adapt``;
    ``extra`` is recorded in the run's config (and must match on resume)."""
    build_float = baseline.build_float
    baseline.build_float = lambda *args, **kwargs: adapt(build_float(*args, **kwargs))
    config = TrainConfig(model=a.model, arith="float", epochs=a.epochs, batch_size=a.batch_size, seed=a.seed,
                         threads=a.threads, data_dir=a.data_dir, out=a.out, progress=False, max_steps=a.max_steps,
                         train_limit=a.train_limit, extra=extra)
    if a.resume:
        carry_checkpoint(a.out, a.resume_from)
    summary = fit(config, resume=a.resume)
    print(json.dumps({k: summary[k] for k in ("final_test_accuracy", "best_val_accuracy") if k in summary}))
    return 0


def main() -> int:
    p = run_arguments(__doc__, epochs=4)
    p.add_argument("--quantize", choices=QUANTIZE, required=True)
    a = p.parse_args()
    return train_twin(a, lambda model: install(model, a.quantize), {"fake_quant": a.quantize})


if __name__ == "__main__":
    raise SystemExit(main())
