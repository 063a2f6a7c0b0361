"""``niti trace``: every integer of one training step, as golden vectors for a second implementation.

``trace_run(RUN, TRACE.npz)`` runs the run's next training step (the batch a
resume would take next) with a ``Recorder`` on the model's runtime and
writes every integer tensor it made to an npz (no pickles), in step order,
under names that say where and what (docs/inference.md, "Step traces"):

- ``batch.images`` / ``batch.labels``, ``step``, ``generator.*`` (the seeded generators' states),
  ``<param>.before.{m,master,velocity,step_residual,e,master_e}``: everything the step starts from;
- ``input.out`` and ``<layer>.out`` (``.out.e``: the exponent): forward outputs;
- ``<scope>.<role>.acc`` / ``.shift``: each wide tensor before it was narrowed and the shift chosen (``.clip``:
  the clip a share-bounded activation rescale chose),
  ``<scope>.noise``: the random draws of stochastic rounding; ``<layer>.mask``: a dropout mask;
- ``loss.softmax_grad`` and ``loss.err``: the integer loss gradient;
- ``<layer>.err`` (error reaching the layer's output), ``<layer>.err_in<k>`` (error to its k-th input),
  ``<layer>.err_sum.*`` (errors of a value read twice, summed);
- ``<param>.grad``, ``<param>.update`` (accumulator before − after) and ``<param>.after.*``;
- ``buffers.before.<name>`` / ``buffers.after.<name>``: batch-norm running statistics, ``<layer>.xhat``: its
  normalised values.

``__format__`` holds a JSON description (each tensor's name, dtype and shape
in order, plus the run's config and starting state).  ``check_trace``
rebuilds the model from that starting state, recomputes the step from the
recorded batch and reports the first tensor that differs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .runtime import Recorder

__all__ = ["FORMAT", "TraceMismatch", "check_trace", "record_step", "trace_run"]

FORMAT = "niti-trace"
VERSION = 1


class TraceMismatch(Exception):
    """A recomputed step differs from its trace; names the first tensor that does."""


def record_step(model, images: torch.Tensor, labels: torch.Tensor) -> Recorder:  # noqa: ANN001
    """Run ``model.train_step(images, labels)`` with a recorder and return what it recorded."""
    if not hasattr(model, "calibration_state"):
        raise ValueError("only integer models can be traced (this run trained the float twin)")
    if model.runtime.world_size != 1:
        raise ValueError("trace a step on one process")
    recorder = Recorder()
    model.runtime.recorder = recorder
    try:
        model.train_step(images, labels)
    finally:
        model.runtime.recorder = None
        model.runtime.scope = ""
    return recorder


def _next_batch(config, state: dict) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    from .train.loop import default_dataset, load_run_data, training_batches, training_split

    name = default_dataset(config)
    ds = load_run_data(config, name)
    x_train, y_train, _, _, augment = training_split(config, ds, name)
    epoch, batch = state["epoch"], state["batch"]
    if batch >= x_train.shape[0] // config.batch_size:
        epoch, batch = epoch + 1, 0
    return next(iter(training_batches(config, x_train, y_train, augment, epoch, batch)))


def trace_run(run: str | Path, out: str | Path) -> dict:
    """Record the next training step of ``run`` (a run directory or checkpoint) into ``out``; returns the format."""
    from .train.loop import load_model

    model, config, state = load_model(run)
    if config.arith != "int":
        raise ValueError(f"{run} trained the float twin (--arith float): only integer runs can be traced")
    images, labels = _next_batch(config, state)
    start = {"mean": model.mean.tolist(), "scale": model.scale.tolist(), "calibration": model.calibration_state(),
             "total_steps": model.total_steps, "input_shape": list(model.arch.input_shape)}
    recorder = record_step(model, images, labels)
    fmt = {"format": FORMAT, "version": VERSION, "model": config.model, "config": config.to_dict(), "start": start,
           "tensors": [{"name": n, "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape)}
                       for n, t in recorder.tensors.items()],
           "weights_sha256_after": model.weights_sha256()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")  # an interrupted write leaves no half-written trace
    try:
        np.savez(tmp, __format__=np.array(json.dumps(fmt)),
                 **{n: t.numpy() for n, t in recorder.tensors.items()})
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return fmt


def _load(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no trace at {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "__format__" not in f.files:
                raise ValueError(f"{path} is not a niti trace (no '__format__' entry)")
            fmt = json.loads(str(f["__format__"]))
            arrays = {k: f[k] for k in f.files if k != "__format__"}
    except (OSError, EOFError, ValueError, json.JSONDecodeError) as exc:
        if isinstance(exc, ValueError) and "niti trace" in str(exc):
            raise
        raise ValueError(f"{path} is not a readable niti trace ({type(exc).__name__}: {exc})") from None
    if fmt.get("format") != FORMAT or fmt.get("version") != VERSION:
        raise ValueError(f"{path}: format {fmt.get('format')!r} version {fmt.get('version')!r}, expected "
                         f"{FORMAT!r} version {VERSION}")
    return fmt, arrays


def _rebuild(fmt: dict, arrays: dict[str, np.ndarray]):  # noqa: ANN202
    """The model as it was before the traced step, from the trace alone."""
    from .train.config import TrainConfig
    from .train.loop import build_model

    config = TrainConfig.from_dict(fmt["config"]).replace(device="cpu")
    start = fmt["start"]
    model = build_model(config, start["total_steps"], tuple(start["mean"]), tuple(start["scale"]),
                        tuple(start["input_shape"]))
    params = {}
    for name in model.parameter_names():
        def get(key: str):  # noqa: ANN202
            a = arrays.get(f"{name}.before.{key}")
            return None if a is None else torch.from_numpy(a.copy())
        e, master_e = get("e"), get("master_e")
        if get("m") is None or e is None:
            raise ValueError(f"trace lacks {name}.before.m / .e: it does not describe this model")
        params[name] = {"m": get("m"), "e": int(e), "master": get("master"),
                        "master_e": None if master_e is None else int(master_e), "velocity": get("velocity"),
                        "step_residual": get("step_residual")}
    runtime = {k[len("generator."):]: torch.from_numpy(v.copy()) for k, v in arrays.items()
               if k.startswith("generator.")}
    model.load_state_dict({"arch": model.arch.name, "step": int(arrays["step"]), "total_steps": start["total_steps"],
                           "params": params, "runtime": runtime, "mean": torch.tensor(start["mean"], dtype=torch.int16),
                           "scale": torch.tensor(start["scale"], dtype=torch.int32),
                           "calibration": start["calibration"],
                           "buffers": {k[len("buffers.before."):]: torch.from_numpy(v.copy()) for k, v in arrays.items()
                                       if k.startswith("buffers.before.")}})
    return model


def check_trace(path: str | Path) -> int:
    """Recompute the traced step from its recorded inputs; the number of tensors compared.

    Raises ``TraceMismatch`` naming the first tensor (in step order) that differs, or is missing.
    """
    fmt, arrays = _load(path)
    for key in ("batch.images", "batch.labels", "step"):
        if key not in arrays:
            raise ValueError(f"{path}: trace lacks {key!r}")
    model = _rebuild(fmt, arrays)
    recorder = record_step(model, torch.from_numpy(arrays["batch.images"].copy()),
                           torch.from_numpy(arrays["batch.labels"].copy()))
    got = {n: t.numpy() for n, t in recorder.tensors.items()}
    for entry in fmt["tensors"]:
        name = entry["name"]
        if name not in arrays:
            raise TraceMismatch(f"{name}: listed in the format but absent from the file")
        if name not in got:
            raise TraceMismatch(f"{name}: in the trace but not produced by the recomputed step")
        want, have = arrays[name], got[name]
        if want.dtype != have.dtype or want.shape != have.shape:
            raise TraceMismatch(f"{name}: trace has {want.dtype} {want.shape}, recomputed {have.dtype} {have.shape}")
        if not np.array_equal(want, have):
            where = np.argwhere(want != have)[0]
            raise TraceMismatch(f"{name} differs at index {tuple(int(i) for i in where)}: trace "
                                f"{want[tuple(where)]}, recomputed {have[tuple(where)]}")
    extra = [n for n in got if n not in arrays]
    if extra:
        raise TraceMismatch(f"{extra[0]}: produced by the recomputed step but not in the trace")
    return len(fmt["tensors"])
