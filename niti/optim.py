"""The integer weight update and the gradient-bit-width schedule (docs/numerics.md §5–6).

There is no multiplicative learning rate: ``gb`` sets the step.  The paper's
rule (``step_scale="max"``) rescales each weight gradient to ``gb`` bits (its
largest element then moves ``2**gb`` int8 LSB).  On top of it (all integer):

- the step is multiplied by ``batch / batch_ref`` (``UpdateRule.batch_ref``,
  default 256, the reference's batch), so one gb makes the same progress per
  epoch at any batch size;
- ``gb`` may have a fractional part (``4.5``): the step is multiplied by the
  integer ``round(2**(8 + frac))`` and shifted right by 8, so a schedule can
  decay by less than x2;
- momentum: an int32 velocity per weight, an exponential average with decay
  ``1 - 2**-momentum_shift`` of the scaled gradient (with ``UpdateRule.step_frac_bits``
  fractional bits, 8 by default);
  the step is the velocity, so in steady state a gb means the same step with
  or without momentum; optionally (``UpdateRule.velocity_rescale``) a gb
  change first multiplies the velocity by ``2**(gb_new - gb_old)``, as float
  SGD's learning rate multiplies its whole buffer;
- weight decay: ``2**(gb - decay_shift)`` of the weight joins the gradient
  before the multipliers, so it scales with the step as float's ``lr · wd``;
- optionally (``UpdateRule.step_carry``) each weight keeps what rounding its
  step to a master unit left and adds it to its next step, so sub-unit steps
  add up instead of being rounded away.

With 16-bit weight accumulators the step is in units of the int16 master
weight (``2**-8`` int8 LSB), so ``gb`` may go down to -7.
The schedule is expressed as exact fractions of all training steps.

``UpdateRule.step_scale = "exponent"`` (the default since 2026-12-02)
replaces the per-tensor rescale by float SGD's rule: the gradient's own
exponent (``IntParameter.grad_e``, set by the layer's backward) places the
step, ``2**(gb - EXPONENT_STEP_BIAS)`` times the real gradient summed over
the batch, times ``EXPONENT_BATCH_REF / batch`` (a shift and a Q8
multiplier), so layers and steps keep the relative sizes float SGD gives them
and gb is a learning rate on the mean loss (docs/numerics.md §5).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from .kernels import fused
from .nn.module import IntParameter
from .numerics import round_shift
from .runtime import Runtime

__all__ = ["EXPONENT_BATCH_REF", "EXPONENT_STEP_BIAS", "GB_RANGE", "STEP_SCALES", "GbSchedule", "STEP_FRAC_BITS", "UpdateRule", "VELOCITY_FRAC_BITS", "apply_update", "check_update",
           "format_fraction", "pow2_fraction_q8", "rescaled_velocity"]

#: The gb values a schedule may hold; values below 1 need 16-bit weight accumulators.
GB_RANGE = range(-7, 8)
#: Fractional bits of the velocity (and of the scaled gradient before the step is rounded), below one master unit:
#: the default of ``UpdateRule.step_frac_bits``.
VELOCITY_FRAC_BITS = 8
#: The ``step_frac_bits`` an update takes: at 12 the int32 velocity still holds any step the cap allows.
STEP_FRAC_BITS = range(8, 13)
#: ``step_scale="exponent"``: the step is ``2**(gb - EXPONENT_STEP_BIAS)`` times the real summed gradient. The
#: loss error is 128 · (softmax - onehot) per image, so gb 5 at batch 128 with momentum is float SGD's lr 0.05 with
#: momentum 0.9 on the mean loss (docs/numerics.md §5).
EXPONENT_STEP_BIAS = 20
#: How a gradient becomes a step: "max" (the paper's per-tensor rescale to gb bits) or "exponent" (float SGD's).
STEP_SCALES = ("max", "exponent")
#: ``step_scale="exponent"`` with ``batch_ref`` set: the step is scaled by ``EXPONENT_BATCH_REF / batch``, so gb is
#: float SGD's rate on the mean loss at any batch size (as at batch 128, where the factor is 1).
EXPONENT_BATCH_REF = 128
#: ``step_scale="exponent"``: bits of the largest step of one weight, in master units (one int8 range; int8
#: masters: 7). A larger step is clipped and counted in ``IntParameter.step_clips``.
_EXPONENT_STEP_BITS = {16: 15, 8: 7}
#: Largest denominator of a fractional gb (``4.5``, ``13/4``; the step multiplier is exact to 2**-8 anyway).
_MAX_GB_DENOMINATOR = 64


@functools.lru_cache(maxsize=64)
def pow2_fraction_q8(frac: Fraction) -> int:
    """``round(2**(8 + frac))`` for ``0 <= frac < 1``, computed with integers (an integer ``b``-th root)."""
    if not 0 <= frac < 1:
        raise ValueError(f"frac must be in [0, 1), got {frac}")
    a, b = frac.numerator, frac.denominator
    guard = 32
    target = 1 << ((8 + guard) * b + a)  # r**b <= target: r = floor(2**(8 + guard + a/b))
    lo, hi = 1 << (8 + guard), 1 << (9 + guard)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid**b <= target:
            lo = mid
        else:
            hi = mid
    return (lo + (1 << (guard - 1))) >> guard


def _parse_fraction(text: str, what: str) -> Fraction:
    try:
        return Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{what} must be a number such as 4, 4.5 or 9/2, got {text!r}") from None


def format_fraction(v: Fraction) -> str:
    """``5``, ``4.5``, ``0.75``; ``a/b`` when no short decimal is exact."""
    if v.denominator == 1:
        return str(v.numerator)
    for digits in range(1, 12):
        scaled = v * 10**digits
        if scaled.denominator == 1:
            sign = "-" if v < 0 else ""
            whole, rest = divmod(abs(scaled.numerator), 10**digits)
            return f"{sign}{whole}.{rest:0{digits}d}"
    return f"{v.numerator}/{v.denominator}"


@dataclass(frozen=True)
class UpdateRule:
    """How a weight gradient becomes a step, beyond ``gb`` (docs/numerics.md §5).

    ``batch_ref``: the step is multiplied by ``batch / batch_ref`` (a power of
    two; 0: batch-independent, the paper's rule).  ``momentum_shift`` k: the
    velocity decays by ``2**-k`` per step (0: no momentum).  ``decay_shift`` D:
    weight decay ``2**(gb - D)`` per step at ``batch_ref`` (0: none; the default
    17 is the float twin's ``lr · wd / (1 - μ) ≈ 2**-12`` at gb 5).
    ``step_scale``: "exponent" (the default: ``2**(gb - EXPONENT_STEP_BIAS)``
    times the real summed gradient, float SGD's rule; with ``batch_ref`` set,
    times ``EXPONENT_BATCH_REF / batch`` too, so gb is a rate on the mean loss)
    or "max" (the gradient rescaled to gb bits per tensor, the paper's).
    """

    batch_ref: int = 256
    momentum_shift: int = 3
    #: 17 since 2026-12-02: the float twin's weight decay, 2**-12 of each weight a step at gb 5 (docs/numerics.md
    #: §5, §10; results/cifar-quarter); UpdateRule(decay_shift=0) is the rule without decay.
    decay_shift: int = 17
    #: "exponent" since 2026-12-02 (results/cifar-quarter: the per-tensor rescale was what held the 40-epoch
    #: CIFAR-10 model 2 points below float); UpdateRule(step_scale="max") is numerics 2's first rule.
    step_scale: str = "exponent"
    #: When gb changes between steps the velocity is first multiplied by ``2**(gb_new - gb_old)``, as float SGD's
    #: learning rate multiplies its whole momentum buffer, so a rate decay slows the buffered steps at once
    #: (docs/numerics.md §5). Off by default: on VGG-small-7 / CIFAR-10 it removed the dip after the first decay
    #: but ended level (results/velocity-rescale). Off, the velocity decays into the new rate over ~2**k steps.
    velocity_rescale: bool = False
    #: Each weight keeps what rounding its step to a master unit left (an int16 residual in ``2**-F`` master
    #: units, ``IntParameter.step_residual``) and adds it to its next step, which is rounded to nearest: the
    #: applied steps sum to the velocities' sum within half a master unit, where pseudo-stochastic rounding never
    #: moves a weight whose step is below 1/16 unit and under-applies larger fractions (docs/numerics.md §5).
    step_carry: bool = False
    #: Fractional bits F of the scaled gradient, the velocity and the carried residual below one master unit
    #: (docs/numerics.md §5): the momentum average moves only when its input differs from the velocity by
    #: ``2**(k - 1 - F)`` unit or more, and the weight decay is rounded to ``2**-F`` unit, so the annealed rates'
    #: small steps and decay need more than 8. Configs without the key had 8.
    step_frac_bits: int = VELOCITY_FRAC_BITS

    def __post_init__(self) -> None:
        for flag in ("velocity_rescale", "step_carry"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be a bool, got {getattr(self, flag)!r}")
        if self.batch_ref < 0 or (self.batch_ref and self.batch_ref & (self.batch_ref - 1)):
            raise ValueError(f"batch_ref must be 0 or a power of two, got {self.batch_ref}")
        if not 0 <= self.momentum_shift <= 16:
            raise ValueError(f"momentum_shift must be in 0..16 (0: no momentum), got {self.momentum_shift}")
        if self.decay_shift != 0 and not 8 <= self.decay_shift <= 40:
            raise ValueError(f"decay_shift must be 0 (off) or in 8..40, got {self.decay_shift}")
        if isinstance(self.step_frac_bits, bool) or self.step_frac_bits not in STEP_FRAC_BITS:
            raise ValueError(f"step_frac_bits must be an int in {STEP_FRAC_BITS.start}..{STEP_FRAC_BITS.stop - 1}, "
                             f"got {self.step_frac_bits!r}")
        if self.step_scale not in STEP_SCALES:
            raise ValueError(f"step_scale must be one of {STEP_SCALES}, got {self.step_scale!r}")

    @classmethod
    def paper(cls) -> "UpdateRule":
        """The NITI paper's update: batch-independent, no momentum, no weight decay, per-tensor rescale."""
        return cls(batch_ref=0, momentum_shift=0, decay_shift=0, step_scale="max", velocity_rescale=False,
                   step_carry=False, step_frac_bits=VELOCITY_FRAC_BITS)


@dataclass(frozen=True)
class GbSchedule:
    """``gb = values[i]`` from fraction ``boundaries[i-1]`` of all steps on.

    The default, 5, 5/3, -5/3 at 50/75 %, is the float twin's learning-rate schedule in gb (lr 0.05 with
    ``step_scale="exponent"``, ×0.1 at 50 %, ×0.01 at 75 %; log2 10 ≈ 10/3), chosen on the validation split with
    that step (results/cifar-quarter, results/mnist-sgd).  ``per_tensor()`` is the per-tensor rescale's schedule,
    5, 4, 3, 2 at 25/50/75 % (results/numerics2-mnist); ``reference()`` is the paper's 5, 4, 3 at 50/75 %.

    Values and boundaries are exact ``Fraction``s (ints and decimal strings
    are converted), so placing a step on the schedule never involves a float.
    """

    values: tuple[Fraction, ...] = (Fraction(5), Fraction(5, 3), Fraction(-5, 3))
    boundaries: tuple[Fraction, ...] = (Fraction(1, 2), Fraction(3, 4))

    def __post_init__(self) -> None:
        try:
            values = tuple(v if isinstance(v, Fraction) else Fraction(str(v)) for v in self.values)
            boundaries = tuple(b if isinstance(b, Fraction) else Fraction(str(b)) for b in self.boundaries)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"gb schedule values and boundaries must be numbers, got {self.values} "
                             f"@ {self.boundaries}") from None
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "boundaries", boundaries)
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError("a gb schedule needs exactly one more value than boundaries")
        if any(v.denominator > _MAX_GB_DENOMINATOR for v in self.values):
            raise ValueError(f"fractional gb values need a denominator <= {_MAX_GB_DENOMINATOR}, "
                             f"got {[str(v) for v in self.values]}")
        if any(not GB_RANGE.start <= v <= GB_RANGE.stop - 1 for v in self.values):
            raise ValueError(f"gradient bit widths must be in -7..7 (below 1 only with 16-bit weight accumulators), "
                             f"got {[format_fraction(v) for v in self.values]}")
        if any(a >= b for a, b in zip(self.boundaries, self.boundaries[1:])) or any(not 0 < b < 1 for b in self.boundaries):
            raise ValueError(f"boundaries must be increasing fractions in (0, 1), "
                             f"got {[format_fraction(b) for b in self.boundaries]}")

    def check_accumulator_bits(self, accumulator_bits: int,
                               offsets: tuple[int, ...] | Mapping[str, int] = (),
                               step_scale: str = "max") -> None:
        """Raise unless every gb (plus each per-layer offset) fits ``accumulator_bits``.

        With the per-tensor rescale (``step_scale="max"``) int8 weights cannot take a step below one LSB
        (gb >= 1); the int16 accumulator takes gb down to -7; nothing takes more than 7.  With float SGD's step
        (``"exponent"``) gb is a log2 learning rate, not the step's bit width, and int8 weights take any gb in
        -7..7; their steps below one LSB round (with the gradient's rounding mode) mostly to 0, so the default
        schedule's last quarter (gb -5/3) barely moves int8 weights: int16 accumulators are the default.
        """
        values_of = offsets.values() if isinstance(offsets, Mapping) else offsets
        for offset in set(values_of) or {0}:
            values = [v + offset for v in self.values]
            where = f"gb schedule {self}" + (f" with layer offset {offset:+d}" if offset else "")
            if any(not GB_RANGE.start <= v <= GB_RANGE.stop - 1 for v in values):
                raise ValueError(f"{where} gives gb {[format_fraction(v) for v in values]}, outside -7..7")
            if accumulator_bits == 8 and step_scale == "max" and min(values) < 1:
                raise ValueError(f"{where} has gb <= 0 (a step below one int8 weight LSB), which needs "
                                 f"16-bit weight accumulators (--accumulator-bits 16)")

    @staticmethod
    def parse_offsets(text: str) -> tuple[int, ...] | dict[str, int]:
        """``"0,0,0,0,0,0,2"``: one gb offset per parameter tensor, input to output; or by name,
        ``"classifier.2=2,features.0=-1"`` (a parameter's or a layer's name); ``""``: none."""
        text = text.strip()
        if not text:
            return ()
        items = [v.strip() for v in text.split(",")]
        try:
            if any("=" in v for v in items):
                pairs = [v.partition("=") for v in items]
                if any(not name.strip() or not eq for name, eq, _ in pairs):
                    raise ValueError
                return {name.strip(): int(value) for name, _, value in pairs}
            return tuple(int(v) for v in items)
        except ValueError:
            raise ValueError(f"gb offsets must be comma-separated integers, one per parameter tensor, or "
                             f"NAME=OFFSET pairs, got {text!r}") from None

    @classmethod
    def per_tensor(cls) -> "GbSchedule":
        """The schedule chosen for the per-tensor rescale (``step_scale="max"``): 5, 4, 3, 2 at 25/50/75 %."""
        return cls((Fraction(5), Fraction(4), Fraction(3), Fraction(2)),
                   (Fraction(1, 4), Fraction(1, 2), Fraction(3, 4)))

    @classmethod
    def reference(cls) -> "GbSchedule":
        """The NITI reference schedule: gb 5, then 4 from 50 % and 3 from 75 % of all steps."""
        return cls((Fraction(5), Fraction(4), Fraction(3)), (Fraction(1, 2), Fraction(3, 4)))

    @classmethod
    def constant(cls, gb: int | Fraction) -> "GbSchedule":
        return cls((Fraction(gb),), ())

    @classmethod
    def parse(cls, text: str) -> "GbSchedule":
        """``"5,4,3@0.5,0.75"``, ``"5,4.5,4@1/3,2/3"`` or a single ``"5"`` (parsed exactly, no floats)."""
        values, _, bounds = text.partition("@")
        return cls(tuple(_parse_fraction(v, "a gb value") for v in values.split(",")),
                   tuple(_parse_fraction(b, "a gb boundary") for b in bounds.split(",")) if bounds else ())

    def gb_at(self, step: int, total_steps: int | None) -> Fraction:
        """The gradient bit width for 0-based ``step`` of ``total_steps`` (first value if unknown)."""
        if not total_steps:
            return self.values[0]
        # step / total >= b  <=>  step · den(b) >= num(b) · total: exact integers.
        index = sum(step * b.denominator >= b.numerator * total_steps for b in self.boundaries)
        return self.values[index]

    def __str__(self) -> str:
        if not self.boundaries:
            return format_fraction(self.values[0])
        return (",".join(map(format_fraction, self.values)) + "@"
                + ",".join(map(format_fraction, self.boundaries)))


def _apply_paper_update(param: IntParameter, gb: int, runtime: Runtime) -> None:
    """The paper's rule as one fused pass: ``W = clip(W - clip(rescale(G, gb)))`` (+8 bits for int16 masters)."""
    if param.accumulator_bits == 8:
        mode, shift, noise = runtime.rounding(param.grad, gb, "gradient", batched=False)
        param.m = fused.update(param.m, param.grad, shift, mode, gb, 127, noise)
    else:
        mode, shift, noise = runtime.rounding(param.grad, gb + 8, "gradient", batched=False)
        param.master = fused.update(param.master, param.grad, shift, mode, gb + 8, 32767, noise)
        param.refresh_datapath()
    param.grad = None


def _velocity_bound(target: int, decay: int, mult: int, mult_shift: int) -> int:
    """An upper bound of |scaled gradient| (and so of |velocity|) in Python ints."""
    return (((1 << target) + decay) * mult >> mult_shift) + 2


@dataclass(frozen=True)
class _Plan:
    """The integers of one update (docs/numerics.md §5), validated before any tensor is touched."""

    gb: Fraction
    gb_int: int
    target: int  # bits of the rescaled gradient, in step units · 2**fv
    mult: int
    mult_shift: int
    decay_shift: int | None  # right shift of the weight for weight decay (negative: left); None without decay
    batch_shift: int = 0  # step_scale="exponent": extra right shift of the batch factor EXPONENT_BATCH_REF / batch
    velocity_bound: int = 1 << 31  # |velocity| stays below this (int32)
    frac_bits: int = VELOCITY_FRAC_BITS  # F: the scaled gradient's and the velocity's bits below one master unit


def _plan(param: IntParameter, gb: int | Fraction, rule: UpdateRule, batch: int | None) -> _Plan:
    gb = Fraction(gb)
    if rule.batch_ref and (batch is None or batch < 1):
        raise ValueError(f"a batch-size-aware update needs the batch size (>= 1), got {batch}")
    wide = param.accumulator_bits == 16
    if wide and gb < -7:
        raise ValueError(f"gb must be >= -7 with 16-bit weight accumulators, got {gb}")
    if not wide and gb < 1 and rule.step_scale == "max":
        raise ValueError(f"gb {gb} < 1 needs a 16-bit weight accumulator; {param!r} has 8 bits")
    fv, limit = rule.step_frac_bits, (32767 if wide else 127)
    gb_int = gb.numerator // gb.denominator  # floor
    exponent = rule.step_scale == "exponent"
    target = (_EXPONENT_STEP_BITS[param.accumulator_bits] if exponent else gb_int + (8 if wide else 0)) + fv
    mult, mult_shift = pow2_fraction_q8(gb - gb_int), 8
    batch_shift = 0
    if exponent and rule.batch_ref:
        # EXPONENT_BATCH_REF / batch = 2**(7 - j) · (2**j / batch) with j = ceil(log2 batch): a shift and an
        # integer factor 2**j / batch in [1, 2), folded into p (Q8, rounded to nearest).
        assert batch is not None
        j = (batch - 1).bit_length()
        batch_shift = j - (EXPONENT_BATCH_REF.bit_length() - 1)
        mult = (2 * (mult << j) + batch) // (2 * batch)
    if exponent and param.grad is not None:
        if param.grad_e is None:
            raise ValueError(f"{param!r} has a gradient without an exponent (grad_e); step_scale='exponent' needs it")
        shift = _exponent_step_shift(param, gb_int) + batch_shift
        if not -(target - fv) <= shift <= fv + 62:  # one gradient unit past the step cap, or a shift past 62 bits
            raise ValueError(f"{param!r}: gradient exponent {param.grad_e} puts the step 2**{-shift} master units "
                             f"per unit at gb {gb}, outside what step_scale='exponent' can represent; change gb")
    if rule.batch_ref and not exponent:
        mult, mult_shift = mult * batch, mult_shift + rule.batch_ref.bit_length() - 1
    decay_shift, decay_bound = None, 0
    if rule.decay_shift:
        decay_shift = rule.decay_shift - gb_int - fv
        decay_bound = limit >> decay_shift if decay_shift > 0 else limit << -decay_shift
    velocity_bound = _velocity_bound(target, decay_bound, mult, mult_shift)
    if velocity_bound >= 1 << 31:
        raise ValueError(f"batch {batch} with gb {gb} could overflow the int32 velocity; use a smaller batch "
                         f"or gb")
    return _Plan(gb, gb_int, target, mult, mult_shift, decay_shift, batch_shift, velocity_bound, fv)


def rescaled_velocity(velocity: Tensor, delta: Fraction, bound: int) -> tuple[Tensor, Tensor | None]:
    """``velocity · 2**delta`` (int32), rounded to nearest (ties away from zero), and the count of elements clipped
    to ``±(bound - 1)`` (None when none can be: ``delta <= 0``).

    ``2**delta`` is ``q · 2**(d - 8)`` with ``d = floor(delta)`` and the Q8 mantissa ``q = pow2_fraction_q8(delta
    - d)`` of the update's step multiplier; the product is int64 (|velocity| < 2**31, q < 2**10).
    """
    d = delta.numerator // delta.denominator
    wide = velocity.to(torch.int64) * pow2_fraction_q8(delta - d)
    shift = 8 - d  # the Q8 multiplier's 8 bits (whatever the velocity's own fractional bits)
    wide = round_shift(wide, shift, "nearest") if shift > 0 else wide << -shift
    clipped = None
    if delta > 0:  # only a rate increase can pass the bound
        limit = bound - 1
        clipped = (wide.abs() > limit).sum()
        wide = wide.clamp(-limit, limit)
    return wide.to(torch.int32), clipped


def _exponent_step_shift(param: IntParameter, gb_int: int) -> int:
    """The right shift from ``param.grad`` (exponent ``grad_e``) to master units times ``2**(gb_int - 20)``."""
    assert param.grad_e is not None
    master_e = param.master_e if param.accumulator_bits == 16 else param.e
    assert master_e is not None
    return master_e + EXPONENT_STEP_BIAS - gb_int - param.grad_e


def _exponent_shift(param: IntParameter, plan: _Plan) -> int:
    """``step_scale="exponent"``: the right shift (negative: left) from the summed gradient to the step in master
    units, ``grad · 2**(grad_e + gb_int - EXPONENT_STEP_BIAS - master_e)``; clips a gradient whose step would pass
    ``2**plan.target`` (counted in ``param.step_clips``) so the shift up cannot overflow."""
    assert param.grad is not None
    shift = _exponent_step_shift(param, plan.gb_int) + plan.batch_shift  # within the range _plan checked
    bits = plan.target - plan.frac_bits  # of the step before its fractional bits
    limit = (1 << bits) - 1 if shift <= 0 else ((1 << (bits + shift)) - 1)
    if shift < 0:
        limit >>= -shift
    if fused.max_abs(param.grad) > limit:
        param.count_step_clips((param.grad.abs() > limit).sum())
        param.grad = param.grad.clamp(-limit, limit)
    return shift


def check_update(param: IntParameter, gb: int | Fraction, rule: UpdateRule | None = None,
                 batch: int | None = None) -> None:
    """Raise ``ValueError`` unless ``apply_update(param, gb, ..., rule, batch)`` can run (nothing changes).

    A model checks every weight first, so a refused update never leaves some layers stepped and others not.
    """
    _plan(param, gb, rule or UpdateRule.paper(), batch)


def apply_update(param: IntParameter, gb: int | Fraction, runtime: Runtime, rule: UpdateRule | None = None,
                 batch: int | None = None, gb_before: int | Fraction | None = None) -> None:
    """One integer step of ``param`` (docs/numerics.md §5): rescale, scale, momentum, subtract, clip.

    ``rule`` defaults to the paper's (``UpdateRule.paper()``; models pass
    their own).  ``batch`` is the global batch size (images summed into
    ``param.grad``); it matters only when ``rule.batch_ref`` is set.
    ``gb_before``: the gb of this parameter's previous step (None: none); with
    ``rule.velocity_rescale`` a velocity is multiplied by ``2**(gb - gb_before)``
    before the step.  Invalid settings raise before anything (weights, velocity,
    generators) changes.
    """
    if param.grad is None:
        raise RuntimeError(f"{param!r} has no gradient to apply")
    rule = rule or UpdateRule.paper()
    plan = _plan(param, gb, rule, batch)
    if (rule.velocity_rescale and rule.momentum_shift and param.velocity is not None and gb_before is not None
            and Fraction(gb) != Fraction(gb_before)):
        param.velocity, clipped = rescaled_velocity(param.velocity, Fraction(gb) - Fraction(gb_before),
                                                    plan.velocity_bound)
        if clipped is not None:
            param.count_step_clips(clipped)
    if rule.step_scale == "exponent":
        shift = _exponent_shift(param, plan)
    elif rule == UpdateRule.paper() and plan.gb.denominator == 1:
        _apply_paper_update(param, plan.gb_int, runtime)
        return
    wide = param.accumulator_bits == 16
    w, limit = (param.master, 32767) if wide else (param.m, 127)
    assert w is not None
    fv, target = plan.frac_bits, plan.target

    if rule.step_scale == "max":
        # The paper's shift (never amplifies a gradient already below gb bits), keeping fv more fractional bits.
        mode, shift, _ = runtime.rounding(param.grad, target - fv, "gradient", batched=False)
    else:
        mode = runtime.mode("gradient")  # shift: from _exponent_shift
    grad_noise = step_noise = residual = None
    if mode == "stochastic":  # drawn in this order: the gradient's rounding, then the step's
        if shift > fv:
            grad_noise = runtime.uniform(1 << (shift - fv), tuple(param.grad.shape), batched=False,
                                         device=param.grad.device)
        if not rule.step_carry:  # a carried step is rounded to nearest
            step_noise = runtime.uniform(1 << fv, tuple(w.shape), batched=False, device=w.device)
    if rule.step_carry:
        residual = param.step_residual
        if residual is None or residual.shape != w.shape:
            residual = torch.zeros(w.shape, dtype=torch.int16, device=w.device)
    # One fused pass (int64 inside): |x| < 2**target after the gradient's rounding, the velocity within int32.
    new, velocity, *carried = fused.sgd_update(
        param.grad, w, param.velocity if param.velocity is not None and param.velocity.shape == w.shape else None,
        grad_shift=shift - fv, grad_bits=target, decay_shift=plan.decay_shift, mult=plan.mult,
        mult_shift=plan.mult_shift, momentum_shift=rule.momentum_shift, frac_bits=fv, weight_limit=limit, mode=mode,
        grad_noise=grad_noise, step_noise=step_noise, residual=residual)
    if velocity is not None:
        param.velocity = velocity
    if carried:
        param.step_residual = carried[0]
    if wide:
        param.master = new
        param.refresh_datapath()
    else:
        param.m = new
    param.grad = None
