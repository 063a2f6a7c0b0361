"""Field checks for a loaded training checkpoint: every value in its type and range, or ``CheckpointError``.

The digest in ``checkpoint.py`` proves a file is the one niti wrote; these
checks refuse a well-formed file whose content no training run can produce
(a crafted or foreign checkpoint), before any of it reaches a model.  The
integer invariants are the datapath's: weights in [-127, 127] (the bound
behind the int32 accumulators), integer exponents, integer pixel means.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..counter_bits import STREAMS
from ..models import get_architecture, is_factory_path
from .checkpoint import CheckpointError, load_checkpoint
from .config import TrainConfig

__all__ = ["EXPONENT_LIMIT", "input_shape_of", "load_train_state", "restore_model", "validate_train_state"]

#: |exponent| bound: trained weights sit near 2**-8; 2**±256 is far beyond any real run.
EXPONENT_LIMIT = 256
WEIGHT_LIMIT = 127
PIXEL_MAX = 255

_TOP_KEYS = ("config", "model", "epoch", "batch", "seconds", "history", "step_log", "best_val", "best_epoch",
             "running", "mean", "total_steps")
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _fail(where: str, message: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {where}: {message}")


def _int(where: str, name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as a Python int in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise _fail(where, f"{name} must be {span}, got {value}")
    return value


def _number(where: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(where, f"{name} must be a number, got {type(value).__name__} {value!r}")
    return value


def _int_tensor(where: str, name: str, value: object, *, dtype: torch.dtype | None = None,
                low: int | None = None, high: int | None = None) -> torch.Tensor:
    """``value`` as an integer tensor (of ``dtype`` if given) whose entries lie in ``[low, high]``."""
    if not isinstance(value, torch.Tensor):
        raise _fail(where, f"{name} must be a tensor, got {type(value).__name__}")
    if value.dtype not in _INT_DTYPES or (dtype is not None and value.dtype != dtype):
        raise _fail(where, f"{name} must be {dtype or 'an integer tensor'}, got {value.dtype}")
    if value.numel() and low is not None and high is not None:
        lo, hi = (int(v) for v in torch.aminmax(value.to(torch.int64)))
        if lo < low or hi > high:
            raise _fail(where, f"{name} has values in [{lo}, {hi}], outside [{low}, {high}]")
    return value


def _check_runtime(where: str, runtime: object) -> None:
    """Random-stream state: per-stream draw counts (counter scheme) or the first scheme's generator states."""
    counts = {f"{stream}_draws" for stream in STREAMS} | {"stream_seed"}
    generators = {"rounding_generator", "dropout_generator"}
    if not isinstance(runtime, dict) or set(runtime) not in (counts, generators):
        raise _fail(where, f"model runtime must hold {sorted(counts)} (or, from older versions, "
                           f"{sorted(generators)}), got {runtime if not isinstance(runtime, dict) else sorted(runtime)}")
    for name, value in runtime.items():
        if name == "stream_seed":
            tensor = _int_tensor(where, f"runtime {name}", value, dtype=torch.int64, low=0, high=(1 << 32) - 1)
            if tuple(tensor.shape) != (2,):
                raise _fail(where, f"runtime {name} must be two 32-bit words, got shape {tuple(tensor.shape)}")
        elif name in counts:
            tensor = _int_tensor(where, f"runtime {name}", value, dtype=torch.int64, low=0, high=(1 << 63) - 1)
            if tensor.dim() != 0:
                raise _fail(where, f"runtime {name} must be a scalar, got shape {tuple(tensor.shape)}")
        else:
            _int_tensor(where, f"runtime {name}", value, dtype=torch.uint8)


def _config(where: str, raw: object) -> TrainConfig:
    if not isinstance(raw, dict):
        raise _fail(where, f"config must be a dict, got {type(raw).__name__}")
    try:
        return TrainConfig.from_dict(raw)
    except (ValueError, TypeError) as exc:
        raise _fail(where, f"invalid config ({exc})") from None


def _check_param(where: str, i: str, p: object) -> None:
    """One weight's dict: int8 ``m`` in ±127, integer exponents, an int16 ``master`` or none; any other
    entry (state a newer optimiser keeps, such as a velocity) must be an integer tensor, an int or None."""
    if not isinstance(p, dict) or "m" not in p or "e" not in p:
        raise _fail(where, f"{i} must be a dict with 'm' and 'e'")
    _int_tensor(where, f"{i} m", p["m"], dtype=torch.int8, low=-WEIGHT_LIMIT, high=WEIGHT_LIMIT)
    _int(where, f"{i} exponent e", p["e"], -EXPONENT_LIMIT, EXPONENT_LIMIT)
    master = p.get("master")
    if master is not None:
        _int_tensor(where, f"{i} master", master, dtype=torch.int16, low=-(2**15 - 1), high=2**15 - 1)
        if tuple(master.shape) != tuple(p["m"].shape):
            raise _fail(where, f"{i} master has shape {tuple(master.shape)}, m has {tuple(p['m'].shape)}")
        _int(where, f"{i} master_e", p.get("master_e"), -EXPONENT_LIMIT, EXPONENT_LIMIT)
    for key, value in p.items():
        if key in ("m", "e", "master", "master_e") or value is None:
            continue
        if isinstance(value, torch.Tensor):
            _int_tensor(where, f"{i} {key}", value)
        else:
            _int(where, f"{i} {key}", value, -(2**63), 2**63 - 1)


def _check_int_model(where: str, model: dict, config: TrainConfig, total_steps: int, channels: int) -> None:
    if model.get("arch") != config.model:
        raise _fail(where, f"model state is for {model.get('arch')!r}, the config says {config.model!r}")
    step = _int(where, "model step", model.get("step"), 0, total_steps)
    if model.get("total_steps") is not None:
        _int(where, "model total_steps", model["total_steps"], max(step, 1))
    params = model.get("params")
    if isinstance(params, dict) and params and all(isinstance(k, str) for k in params):
        labelled = list(params.items())
    elif isinstance(params, list) and params:  # positional, as checkpoints before named parameters kept them
        labelled = [(f"weight {i}", p) for i, p in enumerate(params)]
    else:
        raise _fail(where, "model params must be a non-empty dict from parameter names (or a list)")
    for label, p in labelled:
        _check_param(where, label, p)
    runtime = model.get("runtime")
    _check_runtime(where, model.get("runtime"))
    mean = _int_tensor(where, "model mean", model.get("mean"), low=0, high=PIXEL_MAX)
    if tuple(mean.shape) != (channels,):
        raise _fail(where, f"model mean must have {channels} channel values, got shape {tuple(mean.shape)}")
    for key, value in model.items():  # e.g. an input scale next to the mean: integer tensors only
        if key not in ("arch", "step", "total_steps", "params", "runtime", "mean") and isinstance(value, torch.Tensor):
            _int_tensor(where, f"model {key}", value)


def input_shape_of(state: dict, where: str | Path = "") -> tuple[int, int, int]:
    """The run's image shape (H, W, C): recorded in the checkpoint, else the built-in model's own."""
    shape = state.get("input_shape")
    if shape is None:
        model = state["config"]["model"] if isinstance(state.get("config"), dict) else None
        if not isinstance(model, str) or is_factory_path(model):
            raise _fail(str(where), "input_shape is missing (a user model's run records it)")
        try:
            return get_architecture(model).input_shape
        except ValueError as exc:
            raise _fail(str(where), str(exc)) from None
    if not isinstance(shape, (list, tuple)) or len(shape) != 3:
        raise _fail(str(where), f"input_shape must be 3 integers (H, W, C), got {shape!r}")
    return tuple(_int(str(where), "input_shape", v, 1, 1 << 16) for v in shape)  # type: ignore[return-value]


def validate_train_state(state: dict, where: str | Path) -> TrainConfig:
    """Check every field ``fit`` and ``load_model`` read from a checkpoint; return its ``TrainConfig``.

    Raises ``CheckpointError`` naming the checkpoint (``where``) and the first bad field.
    """
    where = str(where)
    missing = [k for k in _TOP_KEYS if k not in state]
    if missing:
        raise _fail(where, f"missing fields {', '.join(missing)}")
    config = _config(where, state["config"])
    _int(where, "epoch", state["epoch"], 0, config.epochs)
    _int(where, "batch", state["batch"], 0)
    total_steps = _int(where, "total_steps", state["total_steps"], 1)
    _int(where, "best_epoch", state["best_epoch"], -1, config.epochs)
    _int(where, "world_size", state.get("world_size", 1), 1)
    _int(where, "step_clips", state.get("step_clips", 0), 0)
    if _number(where, "seconds", state["seconds"]) < 0:
        raise _fail(where, f"seconds must be >= 0, got {state['seconds']}")
    _number(where, "best_val", state["best_val"])
    for name in ("running", "window"):
        value = state.get(name, [0.0, 0, 0])
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise _fail(where, f"{name} must be a list of 3 numbers, got {value!r}")
        for v in value:
            _number(where, name, v)
    for name in ("history", "step_log"):
        if not isinstance(state[name], list) or not all(isinstance(r, dict) for r in state[name]):
            raise _fail(where, f"{name} must be a list of records")
    channels = input_shape_of(state, where)[2]
    mean = state["mean"]
    if not isinstance(mean, (list, tuple)) or len(mean) != channels:
        raise _fail(where, f"mean must be a list of {channels} integers, got {mean!r}")
    for v in mean:
        _int(where, "mean", v, 0, PIXEL_MAX)
    model = state["model"]
    if not isinstance(model, dict):
        raise _fail(where, f"model must be a dict, got {type(model).__name__}")
    if config.arith == "int":
        _check_int_model(where, model, config, total_steps, channels)
    return config


def load_train_state(path: str | Path) -> dict:
    """``load_checkpoint`` (digest verified) plus ``validate_train_state``: a state ``fit`` may resume from."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    state = load_checkpoint(path)
    validate_train_state(state, path)
    return state


def restore_model(model: object, state: dict, where: str | Path) -> None:
    """``model.load_state_dict(state["model"])``, its refusals reported as ``CheckpointError`` naming ``where``."""
    try:
        model.load_state_dict(state["model"])  # type: ignore[attr-defined]
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise _fail(str(where), f"does not fit the model ({type(exc).__name__}: {exc})") from None
