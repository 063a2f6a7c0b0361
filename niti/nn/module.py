"""Base classes: an integer parameter and a layer with explicit forward/backward."""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels import cpu_add, fused
from ..numerics import IntTensor, calibrate, static_shift
from ..runtime import Runtime

__all__ = ["IntParameter", "Module", "WEIGHT_LIMIT", "check_weight_range"]

#: Weight mantissas stay in ±127: the bound behind every int32 accumulator (K·127² < 2**31, kernels/matmul.py).
WEIGHT_LIMIT = 127


def check_weight_range(m: Tensor) -> None:
    """Raise ``ValueError`` unless every int8 mantissa of ``m`` lies in [-127, 127] (-128 breaks the bound)."""
    if m.numel() and int(m.min()) < -WEIGHT_LIMIT:
        raise ValueError(f"weight mantissas must be in [-{WEIGHT_LIMIT}, {WEIGHT_LIMIT}], got {int(m.min())}: "
                         f"-128 breaks the int32 accumulation bound")


class IntParameter:
    """An integer weight: the int8 datapath mantissas ``m`` with exponent ``e``.

    With ``accumulator_bits=16`` (docs/numerics.md §6) the master copy is ``master``
    (int16, exponent ``master_e = e8 - 8``) and ``m`` is its int8 rescale,
    refreshed after every update.  ``grad`` holds the last integer weight
    gradient (int32 or int64) until the update consumes it.
    """

    def __init__(self, m: Tensor, e: int, accumulator_bits: int = 8) -> None:
        if m.dtype != torch.int8:
            raise TypeError(f"weights are int8 mantissas, got {m.dtype}")
        if accumulator_bits not in (8, 16):
            raise ValueError(f"accumulator_bits must be 8 or 16, got {accumulator_bits}")
        check_weight_range(m)
        self.accumulator_bits = accumulator_bits
        self.m = m
        self.e = e
        self.master: Tensor | None = None
        self.master_e: int | None = None
        if accumulator_bits == 16:
            self.master = m.to(torch.int16) << 8
            self.master_e = e - 8
        self.grad: Tensor | None = None
        #: The exponent of ``grad`` (real gradient = grad · 2**grad_e), set with it by the layer's backward.
        self.grad_e: int | None = None
        #: Weights whose step was clipped (``step_scale="exponent"``, niti.optim): counted, never silent. An
        #: integer tensor summed on the gradient's device, so counting reads nothing back inside the step;
        #: ``step_clips`` reads it (metrics, between steps).
        self._step_clips: Tensor | int = 0
        #: int32 momentum velocity (docs/numerics.md §5), created by the first update that uses momentum.
        self.velocity: Tensor | None = None
        #: int16 remainder of the rounded steps, in ``2**-F`` master units (``UpdateRule.step_carry``, F its
        #: ``step_frac_bits``; docs/numerics.md §5), created by the first update that carries.
        self.step_residual: Tensor | None = None

    @property
    def step_clips(self) -> int:
        """How many weight steps were clipped so far (``step_scale="exponent"``); a host read."""
        return int(self._step_clips)

    @step_clips.setter
    def step_clips(self, value: int) -> None:
        self._step_clips = value

    def count_step_clips(self, clipped: Tensor) -> None:
        """Add ``clipped`` (an integer count, on any device) to ``step_clips`` without reading it back."""
        self._step_clips = clipped.to(torch.int64) + self._step_clips

    def refresh_datapath(self) -> None:
        """Re-derive the int8 datapath weight from the int16 master (nearest rounding)."""
        assert self.master is not None and self.master_e is not None
        # numerics.rescale(master, 7, "nearest") as one fused pass (and the bit width from one eager pass).
        shift = max(0, fused.max_abs(self.master).bit_length() - 7)
        self.m = fused.round_clip(self.master, shift, "nearest", 7, torch.int8)
        self.e = self.master_e + shift

    def make_headroom(self, bits: int) -> None:
        """Give the int16 master ``bits`` bits of room above its current largest value (docs/numerics.md §6).

        The master is shifted right exactly (its values are multiples of 2**8 before any update) and its exponent
        raised by ``bits``: the real weights and the int8 datapath are unchanged, the weights may later grow to
        2**bits times their present range, and a step of the same master units is 2**bits larger in real terms.
        """
        if not 0 <= bits <= 8:
            raise ValueError(f"weight headroom must be 0..8 bits, got {bits}")
        if bits == 0:
            return
        if self.master is None or self.master_e is None:
            raise ValueError("weight headroom needs 16-bit weight accumulators")
        if bool((self.master.remainder(1 << bits) != 0).any()):
            raise ValueError("weight headroom is given before training (the master must be a multiple of 2**bits)")
        self.master = self.master >> bits  # exact: m and e (the datapath's rescale of it) stay as they are
        self.master_e += bits

    @property
    def shape(self) -> torch.Size:
        return self.m.shape

    def tensors(self) -> dict[str, Tensor]:
        """The integer state that defines this parameter (for checkpoints and hashes)."""
        out = {"m": self.m}
        if self.master is not None:
            out["master"] = self.master
        if self.velocity is not None:
            out["velocity"] = self.velocity
        if self.step_residual is not None:
            out["step_residual"] = self.step_residual
        return out

    def to(self, device: torch.device | str) -> "IntParameter":
        self.m = self.m.to(device)
        if self.master is not None:
            self.master = self.master.to(device)
        if self.grad is not None:
            self.grad = self.grad.to(device)
        if self.velocity is not None:
            self.velocity = self.velocity.to(device)
        if self.step_residual is not None:
            self.step_residual = self.step_residual.to(device)
        return self

    def __repr__(self) -> str:
        return f"IntParameter(shape={tuple(self.m.shape)}, e={self.e}, accumulator_bits={self.accumulator_bits})"


class Module:
    """A layer: ``forward(x, ctx) -> IntTensor`` and ``backward(err, ctx) -> err``.

    ``ctx`` is a dict owned by the caller, one per call: ``forward`` writes what
    ``backward`` needs into it when it is given (training), so nothing about a
    call is kept on the layer.  ``backward`` stores weight gradients in
    ``IntParameter.grad`` but never updates weights.
    """

    def __init__(self) -> None:
        self.training = True
        self.runtime = Runtime()
        #: False where nothing below this layer needs an error (the first weighted layer).
        self.propagate_error = True
        #: Running whole-batch bit width of this layer's activation rescale (fixed point; None before training).
        self.calibration: int | None = None
        #: Evaluation uses the calibrated shift (batch-independent) rather than the batch's own.
        self.static_inference = False
        #: Bits added to the calibrated width for the static shift (the logits' site: OUTPUT_HEADROOM).
        self.static_headroom = 0
        #: Bits of resolution the activation rescale buys by saturating the largest values (docs/numerics.md §2;
        #: 0 at the logits' site).
        self.clip_bits = 0
        #: k > 0: the clip is the largest up to ``clip_bits`` that saturates at most 2**-k of the batch (§2).
        self.clip_share = 0

    def rescale_activation(self, t: Tensor | cpu_add.AlignedPair, ctx: dict | None) -> tuple[Tensor, int]:
        """``rescale(t, 7, act_mode)``: whole-batch shift in training (which updates the calibration when
        ``ctx`` is given); the calibrated static shift in evaluation when ``static_inference`` is on.
        The batch's shift is ``clip_bits`` below the one that fits its largest value (fewer where ``clip_share``
        bounds the saturated share).  ``t``: an int32 tensor or a sum not yet formed (``Runtime.rescale``)."""
        if self.training:
            out, shift = self.runtime.rescale(t, 7, "activation", clip_bits=self.clip_bits,
                                              clip_share=self.clip_share)
            if ctx is not None:
                self.calibration = calibrate(self.calibration, shift + 7)
            return out, shift
        if self.static_inference and self.calibration is not None:
            shift = static_shift(self.calibration, headroom=self.static_headroom)
            return self.runtime.rescale_static(t, 7, shift, "activation"), shift
        return self.runtime.rescale(t, 7, "activation", clip_bits=self.clip_bits, clip_share=self.clip_share)

    def forward(self, x: IntTensor, ctx: dict | None = None) -> IntTensor:  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, err: IntTensor, ctx: dict) -> IntTensor | None:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, x: IntTensor, ctx: dict | None = None) -> IntTensor:
        return self.forward(x, ctx)

    def named_parameters(self) -> list[tuple[str, IntParameter]]:
        """``(name, parameter)`` pairs, names relative to this layer (``"weight"``, ``"bias"``)."""
        return []

    def parameters(self) -> list[IntParameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> list[tuple[str, Tensor]]:
        """Integer state that is not learned by the update (running statistics), by name; empty for most layers."""
        return []

    def load_buffers(self, state: dict[str, Tensor]) -> None:
        """Restore ``named_buffers()``; names it lacks leave the layer without them (as before training)."""
        if state:
            raise ValueError(f"{type(self).__name__} has no buffers, got {sorted(state)}")

    def children(self) -> list["Module"]:
        return []

    def modules(self) -> list["Module"]:
        """This layer and every layer inside it, depth first."""
        return [self] + [m for child in self.children() for m in child.modules()]

    def set_runtime(self, runtime: Runtime) -> None:
        self.runtime = runtime
        for child in self.children():
            child.set_runtime(runtime)

    def train(self, mode: bool = True) -> "Module":
        self.training = mode
        for child in self.children():
            child.train(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def set_static_inference(self, on: bool) -> None:
        self.static_inference = on
        for child in self.children():
            child.set_static_inference(on)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
