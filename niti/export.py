"""``niti export``: a trained integer model as ``model.npz`` (no pickles) plus a numpy-only ``infer.py``.

The export holds the int8 datapath weights and exponents, the input's mean,
scale and static shift, and the graph of layers with each rescale's
calibrated static shift (docs/numerics.md §12), as JSON inside the npz.
``infer.py`` (``niti/infer_numpy.py``, copied) predicts exactly what
``niti.load(RUN).predict`` does with static inference; docs/inference.md
describes the arithmetic for a C or RTL implementation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from . import nn
from .nn import norm
from .infer_numpy import FORMAT, VERSION
from .kernels.matmul import MAX_K_INT32
from .models.integer import IntegerModel
from .numerics import INPUT_SCALE_BITS, static_shift

__all__ = ["export", "export_graph"]

_RUNNER = Path(__file__).with_name("infer_numpy.py")


def _shift(op: nn.Module, name: str) -> int:
    if op.calibration is None:
        raise ValueError(f"layer {name!r} has no calibrated shift: the model must train at least one step "
                         "before it can be exported")
    return static_shift(op.calibration, headroom=op.static_headroom)


def _node(node: nn.Node, arrays: dict[str, np.ndarray]) -> dict:
    op, out = node.op, {"name": node.name, "inputs": list(node.inputs)}
    if isinstance(op, (nn.Conv2d, nn.Linear)):
        k = op.in_features if isinstance(op, nn.Linear) else op.kernel_size[0] * op.kernel_size[1] * op.in_channels
        arrays[f"{node.name}.weight"] = op.weight.m.cpu().numpy()
        out.update(op="linear" if isinstance(op, nn.Linear) else "conv2d", weight=f"{node.name}.weight",
                   weight_e=op.weight.e, bias=None, bias_e=None, acc_bits=op.acc_bits,
                   headroom=62 if k > MAX_K_INT32 else 30, shift=_shift(op, node.name))
        if isinstance(op, nn.Conv2d):
            out.update(stride=list(op.stride), padding=list(op.padding), kernel=list(op.kernel_size))
        if op.bias is not None:
            arrays[f"{node.name}.bias"] = op.bias.m.cpu().numpy()
            out.update(bias=f"{node.name}.bias", bias_e=op.bias.e)
    elif isinstance(op, nn.ReLU):
        out["op"] = "relu"
    elif isinstance(op, nn.MaxPool2d):
        out.update(op="maxpool", kernel=op.kernel_size, stride=op.stride, padding=op.padding)
    elif isinstance(op, nn.AvgPool2d):
        out.update(op="avgpool", kernel=list(op.kernel_size), multiplier=op.multiplier, q=op.q,
                   shift=_shift(op, node.name))
    elif isinstance(op, nn.BatchNorm2d):
        if op.running_mean is None or op.running_mad is None:
            raise ValueError(f"layer {node.name!r} has no running statistics: train at least one step first")
        for part in ("weight", "bias", "running_mean", "running_mad"):
            value = getattr(op, part)
            arrays[f"{node.name}.{part}"] = (value.m if part in ("weight", "bias") else value).cpu().numpy()
        out.update(op="batchnorm", weight=f"{node.name}.weight", weight_e=op.weight.e, bias=f"{node.name}.bias",
                   bias_e=op.bias.e, running_mean=f"{node.name}.running_mean",
                   running_mad=f"{node.name}.running_mad", running_exponent=norm.RUNNING_EXPONENT,
                   kappa=norm.KAPPA, kappa_bits=norm.KAPPA_BITS, frac_bits=norm.NORM_FRAC_BITS,
                   xhat_bits=norm.XHAT_BITS, shift=_shift(op, node.name))
    elif isinstance(op, nn.Flatten):
        out["op"] = "flatten"
    elif isinstance(op, (nn.Dropout, nn.Identity)):
        out["op"] = "identity"  # dropout is the identity in evaluation
    elif isinstance(op, nn.Add):
        out.update(op="add", headroom=30, shift=_shift(op, node.name))
    else:
        raise ValueError(f"layer {node.name!r} ({type(op).__name__}) cannot be exported")
    return out


def export_graph(model: IntegerModel) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON description and the integer arrays of ``model``'s static inference."""
    if not isinstance(model, IntegerModel):
        raise ValueError(f"only integer models export; got {type(model).__name__} (a float run?)")
    if not model.is_calibrated():
        raise ValueError("the model has no calibrated shifts (it has never trained a step): nothing to export")
    mode = model.runtime.mode("activation")
    arrays: dict[str, np.ndarray] = {}
    graph = {
        "format": FORMAT, "version": VERSION, "model": model.arch.name, "step": model.step,
        "input_shape": list(model.arch.input_shape), "num_classes": model.num_classes,
        "activation_rounding": "nearest" if mode == "stochastic" else mode,
        "input": {"mean": model.mean.cpu().tolist(), "scale": model.scale.cpu().tolist(),
                  "scale_bits": INPUT_SCALE_BITS, "shift": static_shift(model.input_calibration)},
        "nodes": [_node(node, arrays) for node in model.net.nodes],
        "output": model.net.output,
        "weights_sha256": model.weights_sha256(),
    }
    return graph, arrays


def export(model: IntegerModel, out_dir: str | Path) -> Path:
    """Write ``out_dir/model.npz`` and ``out_dir/infer.py``; returns the npz path."""
    graph, arrays = export_graph(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.npz"
    # Both files are written under temporary names first: an interrupted export leaves no half-written file.
    tmp_npz, tmp_py = out / "model.npz.tmp.npz", out / "infer.py.tmp"
    try:
        np.savez(tmp_npz, graph=np.array(json.dumps(graph)), **arrays)
        shutil.copyfile(_RUNNER, tmp_py)
        tmp_py.replace(out / "infer.py")
        tmp_npz.replace(path)
    finally:
        tmp_npz.unlink(missing_ok=True)
        tmp_py.unlink(missing_ok=True)
    return path
