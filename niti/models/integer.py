"""``IntegerModel``: an integer network with the whole NITI training step."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor

from .. import nn
from ..numerics import (DEFAULT_ACT_CLIP_BITS, DEFAULT_ACT_CLIP_SHARE, INPUT_SCALE_BITS, OUTPUT_HEADROOM, IntTensor,
                        RoundingPolicy, calibrate, check_act_clip_bits, check_act_clip_share, static_shift)
from ..optim import GbSchedule, UpdateRule, apply_update, check_update
from ..runtime import Runtime
from .architectures import Architecture
from .convert import convert

__all__ = ["IntegerModel", "DEFAULT_MEANS", "DEFAULT_SCALES", "INFERENCE_MODES", "check_pixel_mean",
           "resolve_gb_offsets"]

INFERENCE_MODES = ("static", "batch")

#: Integer per-channel means of the training splits (MNIST 33.3; CIFAR-10 125.3, 122.9, 113.9).
DEFAULT_MEANS = {"mnist": (33,), "cifar10": (125, 123, 114)}
#: Per-channel ``round(2**12 / std)`` of the training splits (``niti.data.channel_scales``; std 78.6 / 63–67).
DEFAULT_SCALES = {"mnist": (52,), "cifar10": (65, 66, 61)}


#: Layers that pass values on without a rescale of their own (the logits' site lies behind them).
_PASS_THROUGH = (nn.ReLU, nn.Flatten, nn.Dropout, nn.Identity, nn.MaxPool2d)
#: Layers whose activation rescale carries a static shift (docs/numerics.md §12).
_RESCALE_SITES = (nn.Conv2d, nn.Linear, nn.Add, nn.AvgPool2d, nn.BatchNorm2d)


def output_site(net: nn.Graph) -> nn.Module | None:
    """The layer whose activation rescale produces the network's output (the logits), or None.

    Follows the output node into nested graphs and back through layers that only pass values on; None when
    the output comes straight from a graph's input or from a layer without a rescale.
    """
    graph, value = net, net.output
    while value > 0:
        node = graph.nodes[value - 1]
        if isinstance(node.op, nn.Graph):
            graph, value = node.op, node.op.output
        elif isinstance(node.op, _PASS_THROUGH):
            value = node.inputs[0]
        else:
            return node.op if isinstance(node.op, _RESCALE_SITES) else None
    return None


def check_pixel_mean(mean: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless ``mean`` is integers in [0, 255] (a mean of uint8 pixels)."""
    bad = [m for m in mean if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m <= 255]
    if bad:
        raise ValueError(f"input mean must be integers in [0, 255] (uint8 pixel means), got {tuple(mean)}")


def resolve_gb_offsets(offsets: tuple[int, ...] | Mapping[str, int] | None,
                       names: list[str]) -> tuple[int, ...]:
    """Per-parameter gb offsets (in ``names`` order) from a tuple by position or a mapping by name.

    A mapping's key is a parameter name (``classifier.2.weight``) or a layer's
    (``classifier.2``: its weight and bias); parameters it does not name get 0.
    """
    if offsets is None or len(offsets) == 0:
        return (0,) * len(names)
    if isinstance(offsets, Mapping):
        out = [0] * len(names)
        for key, value in offsets.items():
            hits = [i for i, n in enumerate(names) if n == key or n.startswith(key + ".")]
            if not hits:
                raise ValueError(f"gb offset for {key!r}: the model has no such parameter or layer; its "
                                 f"parameters are {names}")
            for i in hits:
                out[i] = int(value)
        return tuple(out)
    if len(offsets) != len(names):
        raise ValueError(f"gb offsets {tuple(offsets)} must have one value per parameter tensor: the model has "
                         f"{len(names)} ({', '.join(names)})")
    return tuple(int(v) for v in offsets)


def headroom_bits(net: nn.Module, weight_headroom: int, end_headroom: int) -> list[tuple[nn.Module, int]]:
    """``(layer, bits)`` for every convolution and linear layer with weight headroom (docs/numerics.md §6):
    ``weight_headroom`` each, ``end_headroom`` more for the first and the last of them in use order (the layers
    that read the input and write the logits)."""
    layers = [layer for layer in net.modules() if isinstance(layer, (nn.Conv2d, nn.Linear))]
    owner = {id(p): layer for layer in layers for p in layer.parameters()}
    used = list(dict.fromkeys(owner[id(p)] for _, p in net.named_parameters() if id(p) in owner))
    ends = {id(used[0]), id(used[-1])} if used and end_headroom else set()
    out = [(layer, weight_headroom + (end_headroom if id(layer) in ends else 0)) for layer in used]
    return [(layer, bits) for layer, bits in out if bits]


class IntegerModel:
    """An integer network: ``train_step`` runs input conversion, forward, loss, backward and update.

    Nothing inside ``train_step`` creates a floating-point tensor; the step
    counter and ``total_steps`` place it on the gb schedule.
    """

    def __init__(self, arch: Architecture, *, seed: int = 0, policy: RoundingPolicy | None = None,
                 schedule: GbSchedule | None = None, accumulator_bits: int = 16,
                 total_steps: int | None = None, mean: tuple[int, ...] | None = None,
                 gb_offsets: tuple[int, ...] | Mapping[str, int] | None = None, scale: tuple[int, ...] | None = None,
                 rule: UpdateRule | None = None, softmax: str = "precise", full_range_init: bool = False,
                 inference: str = "static", random_bits: str = "counter", weight_headroom: int = 0,
                 dropout: str = "sample", act_clip_bits: int = DEFAULT_ACT_CLIP_BITS,
                 act_clip_share: int = DEFAULT_ACT_CLIP_SHARE, end_headroom: int = 0) -> None:
        if softmax not in nn.SOFTMAXES:
            raise ValueError(f"softmax must be one of {nn.SOFTMAXES}, got {softmax!r}")
        if dropout not in nn.DROPOUT_MASKS:
            raise ValueError(f"dropout must be one of {nn.DROPOUT_MASKS}, got {dropout!r}")
        self.arch = arch
        #: Running whole-batch bit width of the input conversion (None before the first training step).
        self.input_calibration: int | None = None
        self.rule = rule or UpdateRule()
        self.softmax = softmax
        self.seed = seed
        self.schedule = schedule or GbSchedule()
        self.accumulator_bits = accumulator_bits
        self.total_steps = total_steps
        self.step = 0
        self.device = torch.device("cpu")
        init_generator = torch.Generator().manual_seed(seed)
        self.net, num_classes = convert(arch.module(), arch.input_shape, generator=init_generator,
                                        accumulator_bits=accumulator_bits, full_range_init=full_range_init)
        if arch.num_classes and num_classes != arch.num_classes:
            raise ValueError(f"model {arch.name} returns {num_classes} logits, expected {arch.num_classes}")
        self.num_classes = num_classes
        #: Dropout masks (docs/numerics.md §4): per element (``sample``, the float twin's) or per batch.
        self.dropout = dropout
        for layer in self.net.modules():
            if isinstance(layer, nn.Dropout):
                layer.mask = dropout
        check_act_clip_bits(act_clip_bits)
        check_act_clip_share(act_clip_share)
        #: Bits of resolution every activation rescale but the logits' buys by saturating its batch's largest
        #: values (docs/numerics.md §2).
        self.act_clip_bits = act_clip_bits
        #: k > 0: each of those rescales clips only as far as saturates at most 2**-k of its batch's values.
        self.act_clip_share = act_clip_share
        for layer in self.net.modules():
            layer.clip_bits = act_clip_bits
            layer.clip_share = act_clip_share
        site = output_site(self.net)
        if site is not None:  # clipped logits tie in the argmax: the logits' static shift keeps a bit of room
            site.static_headroom = OUTPUT_HEADROOM
            site.clip_bits = 0  # and the loss needs the logits' true order
        if (weight_headroom or end_headroom) and accumulator_bits != 16:
            raise ValueError(f"weight headroom needs 16-bit weight accumulators, got {accumulator_bits}-bit")
        if min(weight_headroom, end_headroom) < 0 or weight_headroom + end_headroom > 8:
            raise ValueError(f"weight_headroom and end_headroom must be >= 0 and add up to at most 8 bits, got "
                             f"{weight_headroom} and {end_headroom}")
        #: Bits of room above the initial range given to convolution and linear masters (docs/numerics.md §6).
        self.weight_headroom = weight_headroom
        #: Bits more for the first and the last of them (the input's and the logits' layers).
        self.end_headroom = end_headroom
        for layer, bits in headroom_bits(self.net, weight_headroom, end_headroom):
            for p in layer.parameters():
                p.make_headroom(bits)
        # Added to the scheduled gb per parameter tensor (input to output): e.g. a larger step for the classifier.
        self.gb_offsets = resolve_gb_offsets(gb_offsets, self.parameter_names())
        self.schedule.check_accumulator_bits(accumulator_bits, self.gb_offsets, self.rule.step_scale)
        self.runtime = Runtime(policy or RoundingPolicy(), seed, random_bits=random_bits)
        self.net.set_runtime(self.runtime)
        self.inference = inference
        mean = mean if mean is not None else DEFAULT_MEANS.get(arch.dataset, (0,) * arch.input_shape[2])
        check_pixel_mean(tuple(mean))
        if len(mean) != arch.input_shape[2]:
            raise ValueError(f"mean has {len(mean)} channels, the model expects {arch.input_shape[2]}")
        self.mean = torch.tensor(mean, dtype=torch.int16)
        scale = scale if scale is not None else DEFAULT_SCALES.get(arch.dataset, (1 << INPUT_SCALE_BITS,) * len(mean))
        if len(scale) != len(mean) or any(not 1 <= c <= 1 << INPUT_SCALE_BITS for c in scale):
            raise ValueError(f"scale must be {len(mean)} integers in [1, {1 << INPUT_SCALE_BITS}] "
                             f"(round(2**{INPUT_SCALE_BITS} / std) per channel), got {tuple(scale)}")
        self.scale = torch.tensor(scale, dtype=torch.int32)

    # ----------------------------------------------------------------- config
    @property
    def policy(self) -> RoundingPolicy:
        return self.runtime.policy

    @property
    def inference(self) -> str:
        """``"static"``: predictions use calibrated per-layer shifts, so each image's class is its own
        (docs/numerics.md §12); ``"batch"``: every rescale takes the batch's shift, as in training."""
        return self._inference

    @inference.setter
    def inference(self, mode: str) -> None:
        if mode not in INFERENCE_MODES:
            raise ValueError(f"inference must be one of {INFERENCE_MODES}, got {mode!r}")
        self._inference = mode
        self.net.set_static_inference(mode == "static")

    def named_parameters(self) -> list[tuple[str, nn.IntParameter]]:
        """``(name, parameter)`` with the torch module's own names (``features.0.weight``), in use order."""
        return self.net.named_parameters()

    def parameter_names(self) -> list[str]:
        return [name for name, _ in self.named_parameters()]

    def parameters(self) -> list[nn.IntParameter]:
        return self.net.parameters()

    def set_runtime(self, runtime: Runtime) -> None:
        """Swap the execution context (the distributed trainer installs all-reduces this way)."""
        runtime.load_state_dict(self.runtime.state_dict())  # where the random streams stand, and their scheme
        self.runtime = runtime
        self.net.set_runtime(runtime)

    def to(self, device: torch.device | str) -> "IntegerModel":
        self.device = torch.device(device)
        for p in self.parameters():
            p.to(self.device)
        self.mean = self.mean.to(self.device)
        self.scale = self.scale.to(self.device)
        return self

    def current_gb(self) -> Fraction:
        return self.schedule.gb_at(self.step, self.total_steps)

    # ------------------------------------------------------------- validation
    def _check_images(self, images: object) -> Tensor:
        if not isinstance(images, Tensor):
            raise ValueError(f"images must be a torch.Tensor of uint8, got {type(images).__name__}")
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (raw pixels), got {images.dtype}")
        h, w, c = self.arch.input_shape
        if images.dim() != 4:
            raise ValueError(f"images must have rank 4 (N, H, W, C) = (N, {h}, {w}, {c}), "
                             f"got rank {images.dim()} shape {tuple(images.shape)}")
        if tuple(images.shape[1:]) != (h, w, c):
            raise ValueError(f"images must be (N, {h}, {w}, {c}) NHWC for {self.arch.name}, "
                             f"got {tuple(images.shape)} ({images.shape[3]} channels)")
        if images.shape[0] == 0:
            raise ValueError("empty batch: images has 0 rows")
        return images.to(self.device)

    def _check_labels(self, labels: object, n: int) -> Tensor:
        if not isinstance(labels, Tensor):
            raise ValueError(f"labels must be a torch.Tensor of int64, got {type(labels).__name__}")
        if labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64, got {labels.dtype}")
        if labels.dim() != 1 or labels.shape[0] != n:
            raise ValueError(f"labels must be 1-D with one label per image ({n}), got shape {tuple(labels.shape)}")
        lo, hi = torch.stack(torch.aminmax(labels)).tolist()  # one read, of the host batch before it is copied
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(f"labels must be in [0, {self.num_classes}), got values in [{lo}, {hi}]")
        return labels.to(self.device)

    # ---------------------------------------------------------------- compute
    def forward(self, images: Tensor, tape: nn.Tape | None = None) -> IntTensor:
        """Int8 logits and their exponent for uint8 NHWC ``images`` (uses the current mode).

        Given a ``tape`` (training), each layer records there what its backward needs, and the
        calibrated widths move toward this batch's.
        """
        fixed = None
        if not self.net.training and self.inference == "static" and self.input_calibration is not None:
            fixed = static_shift(self.input_calibration)
        x = nn.images_to_int8(images, self.mean, self.runtime, self.scale, fixed)
        self.runtime.record("out", x.m)
        self.runtime.record("out.e", x.e)
        if tape is not None:
            self.input_calibration = calibrate(self.input_calibration, x.e + INPUT_SCALE_BITS + 7)
        return self.net.forward(x, tape)

    def calibration_state(self) -> dict[str, int]:
        """Every calibrated rescale's running width: ``"input"`` and the graph's nodes by name."""
        state = {} if self.input_calibration is None else {"input": self.input_calibration}
        return {**state, **self.net.calibration_state()}

    def _load_calibration(self, state: dict[str, int]) -> None:
        self.input_calibration = state.get("input")
        self.net.load_calibration(state)

    def buffers(self) -> dict[str, Tensor]:
        """Running statistics of normalisation layers by name (``layer1.0.bn1.running_mean``); copies, on the CPU."""
        return {name: t.cpu().clone() for name, t in self.net.named_buffers()}

    def is_calibrated(self) -> bool:
        """Whether static inference is available (the model has trained at least one step)."""
        return self.input_calibration is not None

    def train_step(self, images: Tensor, labels: Tensor) -> IntTensor:
        """One integer training step; returns the int8 logits (before the update) with their exponent.

        Inputs are validated before anything changes; if the step fails, the
        weights, the step counter and the generators are left as they were.
        """
        images = self._check_images(images)
        labels = self._check_labels(labels, images.shape[0])
        saved_rng = self.runtime.state_dict()
        saved_calibration = self.calibration_state()
        saved_buffers = self.buffers()
        rt = self.runtime
        try:
            self.net.train(True)
            tape = nn.Tape()
            if rt.recorder is not None:
                self._record_inputs(images, labels)
            logits = self.forward(images, tape)
            rt.scope = "loss"
            err = nn.cross_entropy_backward(logits, labels, rt, self.softmax, check_labels=False)  # checked above
            rt.record("err", err.m)
            self.net.backward(err, tape)
            params = self.parameters()
            for p in params:
                p.grad = self.runtime.reduce_sum(p.grad)
        except BaseException:
            for p in self.parameters():
                p.grad = None
            self.runtime.load_state_dict(saved_rng)
            self._load_calibration(saved_calibration)
            self.net.load_buffers({k: v.to(self.device) for k, v in saved_buffers.items()})
            raise
        # Every gradient exists and every update is checked first: the loop below cannot stop half-way.
        gb = self.current_gb()
        # The previous step's gb: where it differs, the velocity follows the new rate (docs/numerics.md §5).
        gb_before = self.schedule.gb_at(self.step - 1, self.total_steps) if self.step else None
        batch = images.shape[0] * self.runtime.world_size
        try:
            for p, offset in zip(params, self.gb_offsets):
                check_update(p, gb + offset, self.rule, batch)
        except ValueError:
            for p in params:
                p.grad = None
            self.runtime.load_state_dict(saved_rng)
            self._load_calibration(saved_calibration)
            self.net.load_buffers({k: v.to(self.device) for k, v in saved_buffers.items()})
            raise
        for (name, p), offset in zip(self.named_parameters(), self.gb_offsets):
            rt.scope = name
            if rt.recorder is not None:
                rt.record("grad", p.grad)
                before = p.master if p.master is not None else p.m
            apply_update(p, gb + offset, self.runtime, self.rule, batch,
                         None if gb_before is None else gb_before + offset)
            if rt.recorder is not None:
                after = p.master if p.master is not None else p.m
                rt.record("update", before.to(torch.int32) - after.to(torch.int32))
                self._record_parameter(name, p, "after")
        rt.scope = ""
        if rt.recorder is not None:
            for name, t in self.net.named_buffers():
                rt.record(f"buffers.after.{name}", t)
        self.step += 1
        return logits

    def _record_parameter(self, name: str, p: nn.IntParameter, when: str) -> None:
        rec = self.runtime.recorder
        assert rec is not None
        for key, t in p.tensors().items():
            rec.add(f"{name}.{when}.{key}", t)
        rec.add(f"{name}.{when}.e", p.e)
        if p.master_e is not None:
            rec.add(f"{name}.{when}.master_e", p.master_e)

    def _record_inputs(self, images: Tensor, labels: Tensor) -> None:
        """The step's inputs and everything it starts from: batch, weights, generator states, calibration."""
        rec = self.runtime.recorder
        assert rec is not None
        rec.add("batch.images", images)
        rec.add("batch.labels", labels)
        rec.add("step", self.step)
        for name, p in self.named_parameters():
            self._record_parameter(name, p, "before")
        for key, state in self.runtime.state_dict().items():
            rec.add(f"generator.{key}", state)
        for name, t in self.net.named_buffers():
            rec.add(f"buffers.before.{name}", t)
        self.runtime.scope = "input"

    def has_batch_norm(self) -> bool:
        return any(isinstance(m, nn.BatchNorm2d) for m in self.net.modules())

    def recalibrate_norm(self, batches: Iterable[Tensor]) -> int:
        """Replace every batch norm's running mean and MAD by their exact average over ``batches`` (uint8 NHWC).

        The running averages trail the weights, by far when the steps are large
        (results/resnet20-cifar); re-estimating them with the current weights
        before evaluation is PreciseBN (Wu & Johnson, "Rethinking 'Batch' in
        BatchNorm", 2021).  Every other layer runs as in evaluation (static
        shifts, no dropout), so the statistics are those the evaluation sees.
        Weights, calibration and generators are untouched.  Returns the number
        of batches used (0: nothing changed, e.g. a model without batch norm).
        """
        norms = [m for m in self.net.modules() if isinstance(m, nn.BatchNorm2d)]
        if not norms:
            return 0
        saved_rng, saved_buffers, was_training = self.runtime.state_dict(), self.buffers(), self.net.training
        count, done = 0, False
        try:
            self.net.eval()
            for bn in norms:
                bn.train(True)
                bn.begin_recalibration()
            for images in batches:
                self.forward(self._check_images(images))
                count += 1
            done = True
        except BaseException:
            self.net.load_buffers({k: v.to(self.device) for k, v in saved_buffers.items()})
            raise
        finally:
            for bn in norms:
                bn.end_recalibration(store=done)
            self.net.train(was_training)
            self.runtime.load_state_dict(saved_rng)
        return count

    def predict_logits(self, images: Tensor) -> IntTensor:
        images = self._check_images(images)
        was_training = self.net.training
        self.net.eval()
        try:
            return self.forward(images)
        finally:
            self.net.train(was_training)

    def predict(self, images: Tensor) -> Tensor:
        """int64 class indices (the first maximum of the int8 logits)."""
        return self.predict_logits(images).m.argmax(dim=1)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Integer weights (keyed by parameter name), exponents, step and generator states: all a resume needs."""
        params = {}
        for name, p in self.named_parameters():
            params[name] = {"m": p.m.cpu(), "e": p.e, "master": None if p.master is None else p.master.cpu(),
                            "master_e": p.master_e, "velocity": None if p.velocity is None else p.velocity.cpu(),
                            "step_residual": None if p.step_residual is None else p.step_residual.cpu()}
        return {"arch": self.arch.name, "step": self.step, "total_steps": self.total_steps,
                "params": params, "runtime": self.runtime.state_dict(), "mean": self.mean.cpu(),
                "scale": self.scale.cpu(), "calibration": self.calibration_state(),
                "buffers": self.buffers()}

    def _state_params(self, state: dict) -> list[tuple[str, nn.IntParameter, dict]]:
        """Pair each parameter with its saved dict: by name, or by position for checkpoints that kept a list."""
        named = self.named_parameters()
        saved = state["params"]
        if isinstance(saved, dict):
            if list(saved) != [n for n, _ in named]:
                missing = [n for n, _ in named if n not in saved]
                extra = [n for n in saved if n not in dict(named)]
                raise ValueError(f"state's parameters do not match the model's (missing {missing}, unexpected "
                                 f"{extra})" if missing or extra else
                                 f"state's parameters are in another order: {list(saved)}")
            return [(n, p, saved[n]) for n, p in named]
        if len(saved) != len(named):
            raise ValueError(f"state has {len(saved)} weight tensors, model has {len(named)}")
        return [(n, p, s) for (n, p), s in zip(named, saved)]

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict``; everything is checked before anything changes."""
        if state.get("arch") != self.arch.name:
            raise ValueError(f"state is for model {state.get('arch')!r}, not {self.arch.name!r}")
        pairs = self._state_params(state)
        calibration = state.get("calibration", {})  # checkpoints before static inference have none
        if not isinstance(calibration, dict) or any(
                not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 16
                for k, v in calibration.items()):
            raise ValueError(f"calibration must map layer names to non-negative ints, got {calibration!r}")
        for name, p, s in pairs:
            if tuple(s["m"].shape) != tuple(p.m.shape) or s["m"].dtype != torch.int8:
                raise ValueError(f"{name}: expected int8 {tuple(p.m.shape)}, got {s['m'].dtype} "
                                 f"{tuple(s['m'].shape)}")
            try:
                nn.module.check_weight_range(s["m"])
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
            if (s["master"] is None) != (p.master is None):
                raise ValueError(f"{name}: accumulator width differs from the model's ({p.accumulator_bits}-bit)")
            velocity = s.get("velocity")
            if velocity is not None and (velocity.dtype != torch.int32 or velocity.shape != p.m.shape):
                raise ValueError(f"{name}: velocity must be int32 {tuple(p.m.shape)}, got {velocity.dtype} "
                                 f"{tuple(velocity.shape)}")
            residual = s.get("step_residual")  # checkpoints before the step carry have none
            half = 1 << (self.rule.step_frac_bits - 1)  # |residual| <= half a master unit (docs/numerics.md §5)
            if residual is not None and (residual.dtype != torch.int16 or residual.shape != p.m.shape
                                         or bool((residual.abs() > half).any())):
                raise ValueError(f"{name}: step_residual must be int16 {tuple(p.m.shape)} within ±{half}, got "
                                 f"{residual.dtype} {tuple(residual.shape)}")
        buffers = state.get("buffers", {})  # checkpoints before normalisation layers have none
        if not isinstance(buffers, dict) or any(not isinstance(v, Tensor) for v in buffers.values()):
            raise ValueError("buffers must map names to integer tensors")
        saved_buffers = self.buffers()
        try:  # checks names, dtypes and shapes; a refused state leaves the old buffers
            self.net.load_buffers({k: v.to(self.device) for k, v in buffers.items()})
        except ValueError:
            self.net.load_buffers({k: v.to(self.device) for k, v in saved_buffers.items()})
            raise
        for _, p, s in pairs:
            p.m, p.e = s["m"].to(self.device), int(s["e"])
            if s["master"] is not None:
                p.master, p.master_e = s["master"].to(self.device), int(s["master_e"])
            velocity = s.get("velocity")
            p.velocity = None if velocity is None else velocity.to(self.device)
            residual = s.get("step_residual")
            p.step_residual = None if residual is None else residual.to(self.device)
            p.grad = None
        self._load_calibration(calibration)
        self.step = int(state["step"])
        self.total_steps = state["total_steps"]
        self.runtime.load_state_dict(state["runtime"])
        self.mean = state["mean"].to(self.device)
        # Checkpoints written before the input scale existed used raw pixel units, i.e. scale 2**12.
        scale = state.get("scale")
        self.scale = (scale if scale is not None else
                      torch.full_like(state["mean"], 1 << INPUT_SCALE_BITS, dtype=torch.int32)).to(self.device)

    def weights_sha256(self) -> str:
        """SHA-256 over every integer weight (and master) and exponent in a fixed order."""
        import hashlib

        h = hashlib.sha256()
        for i, p in enumerate(self.parameters()):
            for name, t in p.tensors().items():
                arr = np.ascontiguousarray(t.cpu().numpy())
                h.update(f"{i}:{name}:{arr.dtype.str}:{arr.shape}:".encode())
                h.update(arr.tobytes())
            h.update(f"{i}:e={p.e}:master_e={p.master_e};".encode())
        for name, t in self.net.named_buffers():  # running statistics (none in networks without normalisation)
            arr = np.ascontiguousarray(t.cpu().numpy())
            h.update(f"{name}:{arr.dtype.str}:{arr.shape}:".encode())
            h.update(arr.tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        offsets = f", gb_offsets={self.gb_offsets}" if any(self.gb_offsets) else ""
        return (f"IntegerModel({self.arch.name}, policy={self.policy}, schedule={self.schedule}{offsets}, "
                f"inference={self.inference!r}, "
                f"rule={self.rule}, softmax={self.softmax!r}, accumulator_bits={self.accumulator_bits})\n{self.net!r}")
