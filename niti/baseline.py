"""``FloatModel``: a network's torch module trained in float32, the baseline every integer result is compared with.

Float is the point of this module, so nothing on niti's integer code paths
imports it.  It trains exactly the module an ``Architecture``'s factory
returns (the one ``IntegerModel`` converts) and offers the same interface
(``train_step``, ``predict``, ``state_dict``, ``weights_sha256``, ...), so one
trainer drives either.  What is shared with the integer model: the layers,
Xavier-uniform initialisation with the same fans from the seed (biases at
zero), and a step-size schedule with the same boundaries as ``GbSchedule``
applied per step.  What is the module's own: its dropout (torch's, drawn
from a seeded generator state kept in the checkpoint) and NCHW layout.  What
is float: autograd, softmax cross-entropy and SGD with momentum and weight
decay.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from .models.architectures import Architecture, get_architecture
from .models.integer import IntegerModel

__all__ = ["DEFAULT_STATS", "FloatModel", "LrSchedule", "TUNED_LR", "build_float", "tuned_lr"]

#: Per-channel (mean, std) of the training sets in [0, 1] pixel units (computed from ../shared/data, float64).
DEFAULT_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.13066048,), (0.3081078,)),
    "cifar10": ((0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784)),
}


@dataclass(frozen=True)
class LrSchedule:
    """``lr``, times ``decay[i]`` from fraction ``boundaries[i]`` of all steps on (×0.1 at 50 %, ×0.01 at 75 %).

    The boundaries are compared exactly as ``GbSchedule.gb_at`` compares them,
    so the float step size drops at the same step as the integer gb.
    """

    lr: float = 0.01
    decay: tuple[float, ...] = (0.1, 0.01)
    boundaries: tuple[float, ...] = (0.5, 0.75)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        if len(self.decay) != len(self.boundaries):
            raise ValueError(f"lr schedule needs one decay factor per boundary, got decay={self.decay} "
                             f"and boundaries={self.boundaries}")
        if any(not (math.isfinite(d) and d > 0) for d in self.decay):
            raise ValueError(f"lr decay factors must be positive finite numbers, got {self.decay}")
        if list(self.boundaries) != sorted(self.boundaries) or any(not 0 < b < 1 for b in self.boundaries):
            raise ValueError(f"boundaries must be increasing fractions in (0, 1), got {self.boundaries}")

    def phase(self, step: int, total_steps: int | None) -> int:
        """How many boundaries 0-based ``step`` of ``total_steps`` has passed (0 if the total is unknown)."""
        if not total_steps:
            return 0
        fractions = (Fraction(str(b)) for b in self.boundaries)  # as GbSchedule parses them: exact decimals
        return sum(step * f.denominator >= f.numerator * total_steps for f in fractions)

    def lr_at(self, step: int, total_steps: int | None) -> float:
        index = self.phase(step, total_steps)
        return self.lr if index == 0 else self.lr * self.decay[index - 1]


def _reinitialise(net: torch.nn.Module, generator: torch.Generator) -> None:
    """Xavier-uniform weights (from ``generator``, in module order) and zero biases for every Conv2d and Linear.

    The integer model draws its weights with the same rule and fans (docs/numerics.md §8), so both arms start
    alike and the start depends on the seed only, never on torch's global generator.
    """
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.xavier_uniform_(layer.weight, generator=generator)
                if layer.bias is not None:
                    layer.bias.zero_()


def _check_stats(name: str, values: tuple[float, ...], channels: int, positive: bool) -> Tensor:
    values = tuple(float(v) for v in values)
    if len(values) != channels:
        raise ValueError(f"{name} has {len(values)} channels, the model expects {channels}")
    if any(not math.isfinite(v) or (positive and v <= 0) for v in values):
        raise ValueError(f"{name} must be finite{' and positive' if positive else ''}, got {values}")
    return torch.tensor(values, dtype=torch.float32)


class FloatModel:
    """A float32 network: ``train_step`` runs normalisation, forward, cross-entropy, backward and SGD.

    ``mean`` and ``std`` are per-channel, in [0, 1] pixel units: the input is
    ``(images / 255 - mean) / std``.  The learning rate follows ``schedule``
    per step; with ``total_steps`` unknown it stays at ``schedule.lr``.
    """

    def __init__(self, arch: Architecture, *, seed: int = 0, schedule: LrSchedule | None = None,
                 momentum: float = 0.9, weight_decay: float = 5e-4, total_steps: int | None = None,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> None:
        if not (math.isfinite(momentum) and 0 <= momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a non-negative finite number, got {weight_decay}")
        if total_steps is not None and (not isinstance(total_steps, int) or total_steps < 1):
            raise ValueError(f"total_steps must be a positive int or None, got {total_steps!r}")
        channels = arch.input_shape[2]
        default_mean, default_std = DEFAULT_STATS.get(arch.dataset or "", ((0.5,) * channels, (0.25,) * channels))
        self.arch = arch
        self.num_classes = arch.num_classes
        self.seed = seed
        self.schedule = schedule or LrSchedule()
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.total_steps = total_steps
        self.step = 0
        self.device = torch.device("cpu")
        self.mean = _check_stats("mean", mean if mean is not None else default_mean, channels, positive=False)
        self.std = _check_stats("std", std if std is not None else default_std, channels, positive=True)
        # Same seeds as IntegerModel: init from `seed`; the module's own dropout draws from torch's CPU generator,
        # swapped to this state for each step (so runs are reproducible and resumable, on the CPU).
        self.rng_state = torch.Generator(device="cpu").manual_seed(seed * 2 + 2).get_state()
        self.net = arch.module()
        _reinitialise(self.net, torch.Generator(device="cpu").manual_seed(seed))
        self.optimizer = self._new_optimizer()

    # ----------------------------------------------------------------- config
    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """``(name, parameter)`` with the module's own names (``features.0.weight``)."""
        return list(self.net.named_parameters())

    def parameter_names(self) -> list[str]:
        return [name for name, _ in self.named_parameters()]

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.net.parameters())

    def _new_optimizer(self) -> torch.optim.SGD:
        return torch.optim.SGD(self.parameters(), lr=self.schedule.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay)

    def _momentum_buffers(self) -> list[Tensor | None]:
        """SGD's momentum buffer per weight, in ``parameters()`` order (None before the first step)."""
        return [self.optimizer.state.get(p, {}).get("momentum_buffer") for p in self.parameters()]

    def _set_momentum_buffers(self, buffers: list[Tensor | None]) -> None:
        self.optimizer = self._new_optimizer()
        for p, buf in zip(self.parameters(), buffers):
            if buf is not None:
                self.optimizer.state[p]["momentum_buffer"] = buf.to(self.device, copy=True)

    def to(self, device: torch.device | str) -> "FloatModel":
        buffers = self._momentum_buffers()
        self.device = torch.device(device)
        self.net.to(self.device)
        self._set_momentum_buffers(buffers)  # a fresh optimizer: correct whether or not .to kept the Parameters
        self.mean, self.std = self.mean.to(self.device), self.std.to(self.device)
        return self

    def current_lr(self) -> float:
        return self.schedule.lr_at(self.step, self.total_steps)

    # ------------------------------------------------------------- validation
    # The integer model's checks use only ``arch`` and ``device``: share them, so both reject the same inputs.
    _check_images = IntegerModel._check_images
    _check_labels = IntegerModel._check_labels

    # ---------------------------------------------------------------- compute
    def normalise(self, images: Tensor) -> Tensor:
        """Float32 NCHW input ``(images / 255 - mean) / std`` for uint8 NHWC ``images``."""
        x = (images.to(torch.float32) / 255 - self.mean) / self.std
        return x.permute(0, 3, 1, 2)

    def forward(self, images: Tensor) -> Tensor:
        """Float logits for uint8 NHWC ``images`` (uses the current mode, records autograd if enabled)."""
        return self.net(self.normalise(images))

    def train_step(self, images: Tensor, labels: Tensor) -> Tensor:
        """One SGD step on the mean cross-entropy; returns the logits (before the update), detached.

        Inputs are validated before anything changes; if the step fails, the
        weights, momentum, step counter and dropout generator are left as they were.
        """
        images = self._check_images(images)
        labels = self._check_labels(labels, images.shape[0])
        saved_buffers = self.buffers()  # batch-norm running statistics move in the forward
        try:
            self.net.train(True)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(self.rng_state)
                logits = self.forward(images)
                rng_after = torch.get_rng_state()
            F.cross_entropy(logits, labels).backward()
        except BaseException:
            self.optimizer.zero_grad(set_to_none=True)
            self._load_buffers(saved_buffers)
            raise
        self.rng_state = rng_after
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return logits.detach()

    def has_batch_norm(self) -> bool:
        return any(isinstance(m, _BatchNorm) for m in self.net.modules())

    def recalibrate_norm(self, batches: Iterable[Tensor]) -> int:
        """Replace every batch norm's running statistics by their average over ``batches`` (uint8 NHWC), with
        the other layers in evaluation mode: the integer model's ``recalibrate_norm`` (PreciseBN), in float."""
        norms = [m for m in self.net.modules() if isinstance(m, _BatchNorm)]
        if not norms:
            return 0
        saved, was_training, momenta = self.buffers(), self.net.training, [m.momentum for m in norms]
        count = 0
        try:
            self.net.eval()
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the batches
                m.train(True)
            with torch.no_grad():
                for images in batches:
                    self.forward(self._check_images(images))
                    count += 1
            if count == 0:
                self._load_buffers(saved)
        except BaseException:
            self._load_buffers(saved)
            raise
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            self.net.train(was_training)
        return count

    def predict_logits(self, images: Tensor) -> Tensor:
        images = self._check_images(images)
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                return self.forward(images)
        finally:
            self.net.train(was_training)

    def predict(self, images: Tensor) -> Tensor:
        """int64 class indices (the first maximum of the logits)."""
        return self.predict_logits(images).argmax(dim=1)

    # ------------------------------------------------------------------ state
    def _hyper(self) -> dict:
        s = self.schedule
        return {"lr": s.lr, "decay": tuple(s.decay), "boundaries": tuple(s.boundaries),
                "momentum": self.momentum, "weight_decay": self.weight_decay}

    def buffers(self) -> dict[str, Tensor]:
        """The module's buffers (batch-norm running statistics), CPU copies; empty for most zoo networks."""
        return {name: b.detach().cpu().clone() for name, b in self.net.named_buffers()}

    def _load_buffers(self, buffers: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for name, b in self.net.named_buffers():
                b.copy_(buffers[name])

    def state_dict(self) -> dict:
        """Weights, momentum buffers, step, dropout generator and hyperparameters: a bit-identical resume on CPU.

        Every tensor is a CPU copy, so later training does not change a saved state.
        """
        weights = {name: p.detach().cpu().clone() for name, p in self.net.named_parameters()}
        momentum = [None if buf is None else buf.detach().cpu().clone() for buf in self._momentum_buffers()]
        return {"arch": self.arch.name, "step": self.step, "total_steps": self.total_steps, "weights": weights,
                "momentum": momentum, "dropout_generator": self.rng_state.clone(), "buffers": self.buffers(),
                "hyper": self._hyper(), "mean": self.mean.cpu().clone(), "std": self.std.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict``; everything is checked before anything changes."""
        if state.get("arch") != self.arch.name:
            raise ValueError(f"state is for model {state.get('arch')!r}, not {self.arch.name!r}")
        hyper = {k: tuple(v) if isinstance(v, list) else v for k, v in state["hyper"].items()}
        if hyper != self._hyper():
            raise ValueError(f"state was trained with {hyper}, this model is configured with {self._hyper()}")
        named = dict(self.net.named_parameters())
        if sorted(state["weights"]) != sorted(named):
            raise ValueError(f"state has weights {sorted(state['weights'])}, model has {sorted(named)}")
        for name, p in named.items():
            s = state["weights"][name]
            if s.dtype != torch.float32 or s.shape != p.shape:
                raise ValueError(f"weight {name}: expected float32 {tuple(p.shape)}, got {s.dtype} {tuple(s.shape)}")
        if len(state["momentum"]) != len(named):
            raise ValueError(f"state has {len(state['momentum'])} momentum buffers, model has {len(named)} weights")
        for p, buf in zip(self.parameters(), state["momentum"]):
            if buf is not None and (buf.dtype != torch.float32 or buf.shape != p.shape):
                raise ValueError(f"momentum buffer: expected float32 {tuple(p.shape)}, got {buf.dtype} "
                                 f"{tuple(buf.shape)}")
        buffers = state.get("buffers", {})  # checkpoints of networks without buffers may lack the key
        own = dict(self.net.named_buffers())
        if sorted(buffers) != sorted(own) or any(buffers[k].dtype != b.dtype or buffers[k].shape != b.shape
                                                 for k, b in own.items()):
            raise ValueError(f"state's buffers {sorted(buffers)} do not match the model's {sorted(own)} "
                             "(names, dtypes and shapes)")
        rng = state["dropout_generator"]
        expected = self.rng_state
        if not isinstance(rng, Tensor) or rng.dtype != expected.dtype or rng.shape != expected.shape:
            raise ValueError("dropout_generator must be a uint8 tensor from torch.Generator.get_state()")
        channels = self.arch.input_shape[2]
        mean = _check_stats("mean", state["mean"].tolist(), channels, positive=False)
        std = _check_stats("std", state["std"].tolist(), channels, positive=True)

        with torch.no_grad():
            for name, p in named.items():
                p.copy_(state["weights"][name])
        self._set_momentum_buffers(state["momentum"])
        self._load_buffers(buffers)
        self.step = int(state["step"])
        self.total_steps = state["total_steps"]
        self.rng_state = rng.clone()
        self.mean, self.std = mean.to(self.device), std.to(self.device)

    def weights_sha256(self) -> str:
        """SHA-256 over every float32 weight (name, shape and bytes) in the network's order."""
        h = hashlib.sha256()
        for i, (name, p) in enumerate(self.net.named_parameters()):
            arr = np.ascontiguousarray(p.detach().cpu().numpy())
            h.update(f"{i}:{name}:{arr.dtype.str}:{arr.shape}:".encode())
            h.update(arr.tobytes())
        for name, b in self.net.named_buffers():  # running statistics (none in networks without batch norm)
            arr = np.ascontiguousarray(b.detach().cpu().numpy())
            h.update(f"{name}:{arr.dtype.str}:{arr.shape}:".encode())
            h.update(arr.tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        return (f"FloatModel({self.arch.name}, schedule={self.schedule}, momentum={self.momentum}, "
                f"weight_decay={self.weight_decay})\n{self.net!r}")


#: Learning rates chosen on the validation split, per model: LeNet by benchmarks/lr_sweep.py (results/lr_sweep);
#: VGG-small-7 among 0.02 / 0.05 (results/cifar-select, as the 35-epoch H200 sweep in results/cifar-vgg7-gpu);
#: VGG-small-7-quarter among 0.01 / 0.02 / 0.05 / 0.1 (results/cifar-quarter-lr); ResNet-20 among 0.05 / 0.1 / 0.2
#: (results/resnet-norm).  Other models take ``_FALLBACK_LR``.
TUNED_LR = {"lenet": 0.05, "vgg-small-7": 0.05, "vgg-small-7-quarter": 0.05, "resnet-20": 0.05}
_FALLBACK_LR = 0.01


def tuned_lr(name: str) -> float:
    """The float twin's learning rate for the zoo model ``name``: ``TUNED_LR``'s, else ``_FALLBACK_LR``."""
    return TUNED_LR.get(name, _FALLBACK_LR)


def build_float(name: str, *, seed: int = 0, lr: float | None = None, momentum: float = 0.9, weight_decay: float = 5e-4,
                lr_decay: tuple[float, ...] = (0.1, 0.01), lr_boundaries: tuple[float, ...] = (0.5, 0.75),
                total_steps: int | None = None, mean: tuple[float, ...] | None = None,
                std: tuple[float, ...] | None = None, input_shape: tuple[int, int, int] | None = None) -> FloatModel:
    """A ``FloatModel`` for a built-in name (``"lenet"``, ``"vgg-small-7"``, ...) or a ``MODULE:FACTORY`` path
    (then ``input_shape`` (H, W, C) is required): the module as written, trained in float32.

    ``lr=None`` takes the model's tuned rate (``tuned_lr``).
    """
    if lr is None:
        lr = tuned_lr(name)
    schedule = LrSchedule(float(lr), tuple(float(d) for d in lr_decay), tuple(float(b) for b in lr_boundaries))
    return FloatModel(get_architecture(name, input_shape), seed=seed, schedule=schedule, momentum=momentum,
                      weight_decay=weight_decay, total_steps=total_steps, mean=mean, std=std)
