"""The float twin trained with the integer model's update rule: is the update what trails?

A diagnostic for issue 12, the counterpart of ``fake_quant_twin.py``. The float twin (float32 forward and exact
autograd gradients) replaces PyTorch SGD by the integer model's numerics-2 update written in real numbers
(docs/numerics.md §5, §6, §8):

- initial weights as the integer model draws them: uniform integers in [-127, 127] times ``2**e`` with
  ``e = ceil(log2 R) - 7`` for the Xavier bound ``R`` (biases zero);
- each step normalises every tensor's gradient by a power of two, ``2**bits(G)`` as the integer rescale does, so
  its largest element moves between ``2**(gb-1)`` and ``2**gb`` of the layer's initial int8 unit ``2**e``, times
  ``batch / 256`` (``batch_ref``), with the gb schedule 5,4,3,2 at quarters;
- momentum as an exponential average ``v += (x - v) / 2**3``;
- no weight decay;
- every weight clipped to its int16 master's rail ``32767 * 2**(e - 8)`` (``--no-rails``: unbounded);
- optionally the integer forward's rounding as well (``--quantize``, see ``fake_quant_twin.py``).

If this twin plateaus where the integer model does (83 % validation at 40 epochs on the quarter VGG) while the
plain twin reaches 85 %, the update rule is what holds the integer model back.

    python benchmarks/int_update_twin.py --epochs 40 --out runs/bench/twin-diagnostics/upd-s0

Resumable (``--resume``); the run directory records ``"int_update"`` (and ``"fake_quant"``) under the config's
``extra``; ``niti eval`` on it would use the plain float forward.
"""

from __future__ import annotations

import math
import sys
from fractions import Fraction
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import niti.baseline as baseline  # noqa: E402
from fake_quant_twin import QUANTIZE, install as install_fake_quant, run_arguments, train_twin  # noqa: E402
from niti.optim import GbSchedule  # noqa: E402
from niti.train.config import TrainConfig  # noqa: E402

MOMENTUM_SHIFT = 3
BATCH_REF = 256


class IntegerLikeSGD(torch.optim.Optimizer):
    """The integer update of docs/numerics.md §5 (max mode, no decay) in real numbers, per weight tensor.

    ``units[i]`` is parameter ``i``'s initial int8 unit ``2**e``; the step schedule is read from ``model.step``.
    The velocity lives in ``state[p]["momentum_buffer"]`` so the float twin's checkpoints keep it.
    """

    def __init__(self, params: list[nn.Parameter], model: baseline.FloatModel, units: list[float],
                 schedule: GbSchedule, batch: int, rails: bool) -> None:
        super().__init__(params, {"lr": 0.0})
        self.model, self.units, self.schedule, self.batch, self.rails = model, units, schedule, batch, rails

    def gb(self) -> Fraction:
        return Fraction(self.schedule.gb_at(self.model.step, self.model.total_steps))

    @torch.no_grad()
    def step(self, closure=None) -> None:  # noqa: ANN001
        gb = self.gb()
        factor = 2.0 ** float(gb) * self.batch / BATCH_REF
        params = self.param_groups[0]["params"]
        for p, unit in zip(params, self.units):
            if p.grad is None:
                continue
            peak = float(p.grad.abs().max())
            if peak == 0:
                continue
            bits = math.floor(math.log2(peak)) + 1  # the integer rescale normalises by 2**bits(G)
            x = p.grad * (factor * unit / 2.0 ** bits)
            state = self.state[p]
            v = state.get("momentum_buffer")
            if v is None:
                v = state["momentum_buffer"] = torch.zeros_like(p)
            v += (x - v) / 2 ** MOMENTUM_SHIFT
            p -= v
            if self.rails:
                rail = 32767 * unit / 256
                p.clamp_(-rail, rail)


def integer_units(net: nn.Module) -> list[tuple[nn.Parameter, float]]:
    """``(parameter, 2**e)`` for every parameter: the Xavier-bound exponent of its layer (docs/numerics.md §8)."""
    out = []
    for layer in net.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            fan_in = layer.weight[0].numel()
            fan_out = layer.weight.shape[0] * layer.weight[0, 0].numel()
            bound = math.sqrt(6 / (fan_in + fan_out))
            unit = 2.0 ** (math.ceil(math.log2(bound)) - 7)
            out += [(p, unit) for p in layer.parameters(recurse=False)]
    return out


def install(model: baseline.FloatModel, seed: int, schedule: GbSchedule, batch: int, rails: bool) -> None:
    """Integer-like initial weights and update for ``model`` (in place)."""
    pairs = integer_units(model.net)
    if len(pairs) != len(model.parameters()):
        raise ValueError("every parameter must belong to a Conv2d or Linear layer (no batch norm here)")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p, unit in pairs:
            if p.dim() > 1:
                p.copy_(torch.randint(-127, 128, p.shape, generator=generator).to(p.dtype) * unit)
            else:
                p.zero_()
    params, units = [p for p, _ in pairs], [u for _, u in pairs]
    model._new_optimizer = lambda: IntegerLikeSGD(params, model, units, schedule, batch, rails)
    model.optimizer = model._new_optimizer()
    model.parameters = lambda: params  # checkpoints save the velocity in this order


def main() -> int:
    p = run_arguments(__doc__, epochs=40)
    p.add_argument("--gb-schedule", default=TrainConfig().gb_schedule)
    p.add_argument("--no-rails", dest="rails", action="store_false", help="let weights grow without bound")
    p.add_argument("--quantize", choices=QUANTIZE, default=None, help="also round the forward (fake_quant_twin)")
    a = p.parse_args()
    schedule = GbSchedule.parse(a.gb_schedule)

    def adapt(model: baseline.FloatModel) -> baseline.FloatModel:
        install(model, a.seed, schedule, a.batch_size, a.rails)
        return install_fake_quant(model, a.quantize) if a.quantize else model

    extra = {"int_update": {"gb_schedule": a.gb_schedule, "rails": a.rails}, "fake_quant": a.quantize}
    return train_twin(a, adapt, extra)


if __name__ == "__main__":
    raise SystemExit(main())
