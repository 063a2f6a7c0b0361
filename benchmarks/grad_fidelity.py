"""How close an integer model's weight gradients are to float's for the same weights, layer by layer.

A diagnostic for issue 12 (the integer model fits CIFAR-10 more slowly than its float twin in the first epochs).
For a run's checkpoint and one training batch (no augmentation) it computes each weight's gradient three ways:

- **int**: the integer backward (``niti``'s own: int8 activations, int8 errors under the run's rounding), as
  ``grad · 2**grad_e``;
- **float on int forward**: float64 autograd through the same network and weights, every activation replaced by the
  integer forward's value (straight-through), so only the backward's arithmetic differs from int;
- **float**: float64 autograd with the same real weights and input and no rounding anywhere.

and reports cosines: int against both floats (one draw, and the mean of ``--draws`` draws of the stochastic
roundings: what is left at many draws is bias, the rest is noise), float-on-int-forward against float (the forward's
int8 rounding alone), and the gb-bit step the update takes (``--gb``, pseudo-stochastic, no momentum) against float.
The dropout mask is held fixed across draws and shared by all three. Sequential networks only (LeNet, VGG).

    python benchmarks/grad_fidelity.py runs/bench/grad-fidelity/step1 --draws 8

The run's weights are only read; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from niti import nn  # noqa: E402
from niti.train.loop import default_dataset, load_model, load_run_data, training_split  # noqa: E402

_LAYOUT = {4: (0, 3, 1, 2)}  # int conv weights (out, kh, kw, in) -> torch (out, in, kh, kw)


def _real(p: nn.IntParameter) -> torch.Tensor:
    return p.m.to(torch.float64) * 2.0 ** p.e


def weightless_op(op: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The float form of a ReLU, max pool or flatten on ``h`` (NCHW while 4-D; flattened in NHWC order, like the
    integer model)."""
    if isinstance(op, nn.ReLU):
        return F.relu(h)
    if isinstance(op, nn.MaxPool2d):
        return F.max_pool2d(h, op.kernel_size, op.stride, op.padding)
    if isinstance(op, nn.Flatten):
        return h.permute(0, 2, 3, 1).reshape(h.shape[0], -1) if h.dim() == 4 else h.reshape(h.shape[0], -1)
    raise ValueError(f"not a weightless op: {type(op).__name__}")


def float_gradients(net: nn.Graph, x: torch.Tensor, labels: torch.Tensor, masks: list[torch.Tensor],
                    int_values: list[torch.Tensor] | None) -> list[torch.Tensor]:
    """Float64 weight gradients (in the integer layout) of the summed cross-entropy; with ``int_values`` (each
    node's real integer output, NHWC) every activation takes the integer value on the way forward."""
    h = x.permute(0, 3, 1, 2)  # NCHW while 4-D; NHWC order when flattened, like the integer model
    weights, masks = [], list(masks)
    for i, node in enumerate(net.nodes):
        op = node.op
        if node.inputs != (i,):
            raise ValueError("grad_fidelity handles sequential networks only")
        if isinstance(op, (nn.Conv2d, nn.Linear)):
            w = _real(op.weight)
            w = (w.permute(*_LAYOUT[w.dim()]) if w.dim() == 4 else w).requires_grad_(True)
            weights.append(w)
            b = None if op.bias is None else _real(op.bias)
            h = F.conv2d(h, w, b, op.stride, op.padding) if w.dim() == 4 else F.linear(h, w, b)
        elif isinstance(op, (nn.ReLU, nn.MaxPool2d, nn.Flatten)):
            h = weightless_op(op, h)
        elif isinstance(op, nn.Dropout):
            keep = masks.pop(0).to(torch.float64)  # NHWC like the integer model's, per sample or per batch
            if h.dim() == 4:
                keep = keep.permute(0, 3, 1, 2) if keep.dim() == 4 else keep.permute(2, 0, 1)
            h = h * keep * 2.0
        elif not isinstance(op, nn.Identity):
            raise ValueError(f"grad_fidelity does not handle {type(op).__name__}")
        if int_values is not None:
            v = int_values[i]
            v = v.permute(0, 3, 1, 2) if v.dim() == 4 else v
            h = h + (v - h).detach()  # the integer forward's value, the float backward's derivative
    F.cross_entropy(h, labels, reduction="sum").backward()
    return [w.grad.permute(*torch.argsort(torch.tensor(_LAYOUT[4])).tolist()) if w.dim() == 4 else w.grad
            for w in weights]


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().to(torch.float64), b.flatten().to(torch.float64)
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def fidelity(run: str, draws: int, gb: int, batch: int, offset: int) -> tuple[list[str], list[dict]]:
    model, config, _ = load_model(run)
    name = default_dataset(config)
    x_train, y_train, _, _, _ = training_split(config, load_run_data(config, name), name)
    images = torch.as_tensor(x_train[offset:offset + batch])
    labels = torch.as_tensor(y_train[offset:offset + batch]).long()
    rt, net = model.runtime, model.net
    masks: list[torch.Tensor] = []
    draw_mask, calls = rt.dropout_mask, [0]
    dropouts = sum(isinstance(n.op, nn.Dropout) for n in net.nodes)

    def fixed_mask(shape, device, **kwargs):  # noqa: ANN001, ANN003, ANN202  (the first forward's masks, every time)
        if len(masks) < dropouts:
            masks.append(draw_mask(shape, device, **kwargs))
        calls[0] += 1
        return masks[(calls[0] - 1) % dropouts]

    rt.dropout_mask = fixed_mask
    params = [p for _, p in model.named_parameters() if p.m.dim() > 1]
    names = [n for n, p in model.named_parameters() if p.m.dim() > 1]
    sums = [torch.zeros(p.m.shape, dtype=torch.float64) for p in params]
    rows: list[dict] = [{} for _ in params]
    net.train(True)
    for d in range(draws):
        values: list[torch.Tensor] = []
        forwards = [n.op.forward for n in net.nodes]
        for n, f in zip(net.nodes, forwards):
            n.op.forward = (lambda f: lambda *a: values.append(f(*a)) or values[-1])(f)
        tape = nn.Tape()
        try:
            x_int = nn.images_to_int8(images, model.mean, rt, model.scale, None)
            logits = net.forward(x_int, tape)
        finally:
            for n, f in zip(net.nodes, forwards):
                del n.op.forward
        err = nn.cross_entropy_backward(logits, labels, rt, model.softmax, check_labels=False)
        net.backward(err, tape)
        grads = [p.grad.to(torch.float64) * 2.0 ** p.grad_e for p in params]
        if d == 0:
            x_real = x_int.m.to(torch.float64) * 2.0 ** x_int.e
            reals = [v.m.to(torch.float64) * 2.0 ** v.e for v in values]
            exact = float_gradients(net, x_real, labels, masks, None)
            through = float_gradients(net, x_real, labels, masks, reals)
            for r, g, fe, ft, p in zip(rows, grads, exact, through, params):
                step, _ = rt.rescale(p.grad, gb, "gradient")
                r.update(int_vs_float=_cos(g, fe), int_vs_float_on_int_forward=_cos(g, ft),
                         forward_rounding=_cos(ft, fe), step_vs_float=_cos(step, fe))
        for s, g in zip(sums, grads):
            s += g
        for p in model.parameters():
            p.grad = None
    for r, s, fe in zip(rows, sums, exact):
        r["mean_of_draws_vs_float"] = _cos(s, fe)
    return names, rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run directory or checkpoint")
    p.add_argument("--draws", type=int, default=8, help="integer backwards averaged (stochastic roundings)")
    p.add_argument("--gb", type=int, default=5, help="the step's bit width for the step column")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--offset", type=int, default=0, help="first training image of the batch")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    names, rows = fidelity(a.run, a.draws, a.gb, a.batch, a.offset)
    print(f"| weight | int vs float | int vs float on int forward | mean of {a.draws} draws vs float "
          f"| forward rounding (float on int forward vs float) | gb {a.gb} step vs float |")
    print("|---|---|---|---|---|---|")
    for n, r in zip(names, rows):
        print(f"| {n} | {r['int_vs_float']:.3f} | {r['int_vs_float_on_int_forward']:.3f} "
              f"| {r['mean_of_draws_vs_float']:.3f} | {r['forward_rounding']:.3f} | {r['step_vs_float']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
