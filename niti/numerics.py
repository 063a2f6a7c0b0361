"""Integer numerics of docs/numerics.md §1–3 and §9: bit widths, rounding, rescale.

A tensor value is ``m · 2**e``: an integer tensor ``m`` and one Python ``int``
exponent ``e`` for the whole tensor.  Every function here uses integer tensor
operations only; nothing is ever cast to a floating-point type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = [
    "INPUT_SCALE_BITS",
    "DEFAULT_ACT_CLIP_BITS",
    "MAX_ACT_CLIP_BITS",
    "check_act_clip_bits",
    "check_act_clip_share",
    "clip_for_share",
    "clip_thresholds",
    "IntTensor",
    "RoundingPolicy",
    "ROUNDING_MODES",
    "bits",
    "max_abs",
    "round_shift",
    "rescale",
    "int_dtype_for_bits",
    "aligned_sum",
    "CALIBRATION_FRAC_BITS",
    "CALIBRATION_DECAY_SHIFT",
    "OUTPUT_HEADROOM",
    "calibrate",
    "static_shift",
]

#: The input's per-channel scale is an integer ``round(2**INPUT_SCALE_BITS / std)`` (docs/numerics.md §8).
INPUT_SCALE_BITS = 12

ROUNDING_MODES = ("nearest", "stochastic", "pseudo_stochastic", "truncate")

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


@dataclass(frozen=True)
class IntTensor:
    """The ``(m, e)`` pair: integer mantissas ``m`` and one integer exponent ``e``."""

    m: Tensor
    e: int

    def __post_init__(self) -> None:
        if self.m.dtype not in _INT_DTYPES:
            raise TypeError(f"IntTensor mantissa must be an integer tensor, got {self.m.dtype}")
        if not isinstance(self.e, int):
            raise TypeError(f"IntTensor exponent must be a Python int, got {type(self.e).__name__}")

    @property
    def shape(self) -> torch.Size:
        return self.m.shape

    def with_m(self, m: Tensor) -> "IntTensor":
        return IntTensor(m, self.e)


@dataclass(frozen=True)
class RoundingPolicy:
    """Rounding mode per role (docs/numerics.md §9).

    The defaults are the reference's except for the errors, which niti rounds stochastically (counter-based
    random bits, §14): nearest rounding leaves a deep network's small errors at zero (chosen on validation,
    §10).  ``reference()`` is the NITI authors' policy.
    """

    activation: str = "nearest"
    error: str = "stochastic"
    gradient: str = "pseudo_stochastic"
    loss: str = "stochastic"

    def __post_init__(self) -> None:
        for role in ("activation", "error", "gradient", "loss"):
            mode = getattr(self, role)
            if mode not in ROUNDING_MODES:
                raise ValueError(f"rounding mode for {role} must be one of {ROUNDING_MODES}, got {mode!r}")

    @classmethod
    def all(cls, mode: str) -> "RoundingPolicy":
        """One mode for every role (the all-PSR / all-nearest ablations)."""
        return cls(mode, mode, mode, mode)

    @classmethod
    def reference(cls) -> "RoundingPolicy":
        """The NITI authors' policy: errors rounded to nearest (niti's default before it chose stochastic)."""
        return cls(error="nearest")

    @classmethod
    def rng_free(cls) -> "RoundingPolicy":
        """The reference policy with the loss on PSR: no random bits anywhere."""
        return replace(cls.reference(), loss="pseudo_stochastic")


def max_abs(t: Tensor) -> int:
    """The largest magnitude in ``t`` as a Python int (0 for an empty tensor)."""
    if t.numel() == 0:
        return 0
    lo, hi = torch.aminmax(t)
    return max(int(hi), -int(lo))


def bits(t: Tensor) -> int:
    """``bit_length(max |t|)``: bits of the largest magnitude, 0 for all zeros (numerics.md §2)."""
    return max_abs(t).bit_length()


def int_dtype_for_bits(target_bits: int) -> torch.dtype:
    """Narrowest signed dtype holding ±(2**target_bits - 1)."""
    if target_bits <= 7:
        return torch.int8
    if target_bits <= 15:
        return torch.int16
    if target_bits <= 31:
        return torch.int32
    return torch.int64


def round_shift(
    t: Tensor,
    shift: int,
    mode: str,
    generator: torch.Generator | None = None,
    *,
    noise: Tensor | None = None,
) -> Tensor:
    """``t / 2**shift`` rounded sign-magnitude with ``mode`` (numerics.md §3); not clipped.

    ``stochastic`` draws ``u`` uniform in ``[0, 2**shift)`` from ``generator``
    unless ``noise`` (already such draws, same shape as ``t``) is given: the
    distributed runtime passes slices of a whole-batch draw that way.
    The result keeps ``t``'s dtype (widened to int32 for int8/int16 inputs so
    intermediate sums cannot wrap; int32 inputs are rounded in int64, so -2**31 keeps its sign).
    """
    if mode not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding mode {mode!r}; expected one of {ROUNDING_MODES}")
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    if shift == 0:
        return t
    out = torch.int64 if (t.dtype == torch.int64 or shift > 30) else torch.int32
    # int32 inputs work in int64: abs(-2**31) wraps in int32 and would flip that value's sign.
    work = torch.int64 if t.dtype in (torch.int32, torch.int64) else out
    x = t.to(work)
    a = x.abs()
    q = a >> shift
    if mode == "nearest":
        q = q + ((a >> (shift - 1)) & 1)  # low >= 2**(shift-1), without overflow
    elif mode == "pseudo_stochastic":
        low = a & ((1 << shift) - 1)
        h = shift // 2
        hi = low >> h
        lo = low & ((1 << h) - 1)
        if shift % 2:
            lo = lo << 1
        q = q + (hi > lo).to(work)
    elif mode == "stochastic":
        low = a & ((1 << shift) - 1)
        if noise is None:
            noise = torch.randint(0, 1 << shift, t.shape, generator=generator, dtype=torch.int64, device=t.device)
        elif noise.shape != t.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != tensor shape {tuple(t.shape)}")
        q = q + (noise.to(work) < low).to(work)
    return torch.where(x < 0, -q, q).to(out)  # |q| <= 2**30 + 1 after a shift >= 1: fits ``out``


def rescale(
    t: Tensor,
    target_bits: int,
    mode: str,
    generator: torch.Generator | None = None,
    *,
    bit_width: int | None = None,
    noise: Tensor | None = None,
) -> tuple[Tensor, int]:
    """Narrow a wide integer tensor to ``target_bits`` magnitude bits (numerics.md §2).

    Returns ``(narrow, shift)`` with ``shift = max(0, bits(t) - target_bits)``;
    the caller adds ``shift`` to the exponent.  The result is clipped to
    ``±(2**target_bits - 1)`` and stored in the narrowest fitting dtype.
    ``bit_width`` overrides ``bits(t)`` (the distributed runtime passes the
    whole-batch width so that every rank shifts alike).
    """
    if target_bits < 1:
        raise ValueError(f"target_bits must be >= 1, got {target_bits}")
    width = bits(t) if bit_width is None else bit_width
    shift = max(0, width - target_bits)
    r = round_shift(t, shift, mode, generator, noise=noise)
    limit = (1 << target_bits) - 1
    return r.clamp(-limit, limit).to(int_dtype_for_bits(target_bits)), shift


def _shift_to(m: Tensor, by: int, dtype: torch.dtype) -> Tensor:
    """``m · 2**by`` as ``dtype``: exact for ``by >= 0``, rounded to nearest (ties away from zero) for ``by < 0``."""
    if by >= 0:
        return m.to(dtype) << by if by else m.to(dtype)
    return round_shift(m.to(dtype), -by, "nearest").to(dtype)


def aligned_sum(terms: list[tuple[Tensor, int, int]]) -> tuple[Tensor, int]:
    """The integer sum of ``m_i · 2**e_i`` and its exponent, for terms ``(m_i, e_i, bits_i)`` (numerics.md §4).

    ``bits_i`` bounds ``|m_i| < 2**bits_i`` (7 for int8).  The sum is int32
    (int64 when a term is int64); its exponent is the smallest ``e_i`` unless
    that could overflow: then it is raised to ``max_i(e_i + bits_i) +
    ceil(log2 n) - 30`` (``- 62`` in int64) and terms below it are shifted
    right with nearest rounding.  Otherwise the sum is exact.  Terms
    broadcast against each other (a bias ``(C,)`` onto ``(N, ..., C)``).
    """
    if not terms:
        raise ValueError("aligned_sum needs at least one term")
    dtype = torch.int64 if any(m.dtype == torch.int64 for m, _, _ in terms) else torch.int32
    headroom = 62 if dtype == torch.int64 else 30
    top = max(e + b for _, e, b in terms)
    e = max(min(e for _, e, _ in terms), top + (len(terms) - 1).bit_length() - headroom)
    total = None
    for m, e_i, _ in terms:
        shifted = _shift_to(m, e_i - e, dtype)
        total = shifted if total is None else total + shifted
    assert total is not None
    return total, e


#: Calibrated bit widths are kept with 8 fractional bits (docs/numerics.md §12).
CALIBRATION_FRAC_BITS = 8
#: Each training step moves the calibration 2**-4 of the way to the step's whole-batch width.
CALIBRATION_DECAY_SHIFT = 4
#: Bits of room above its calibrated width for the logits' static shift: clipped logits tie in the argmax.
OUTPUT_HEADROOM = 1
#: Most bits an activation rescale may trade for resolution by saturating the batch's largest values (§2).
MAX_ACT_CLIP_BITS = 4
#: The default (§10): none yet; c = 2 gains a point on the 40-epoch CIFAR-10 comparison but slows LeNet's
#: first steps (results/mnist-clip/short-run.md), which a share bound (below) avoids.
DEFAULT_ACT_CLIP_BITS = 0


def _check_int_setting(name: str, value: object, top: int) -> int:
    """``value`` if it is an int (not a bool) in ``0..top``, else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise ValueError(f"{name} must be an integer in 0..{top}, got {value!r}")
    return value


def check_act_clip_bits(value: object) -> int:
    """``value`` if it is an int in ``0..MAX_ACT_CLIP_BITS`` (§2), else a ``ValueError`` naming ``act_clip_bits``."""
    return _check_int_setting("act_clip_bits", value, MAX_ACT_CLIP_BITS)


#: Largest k of ``act_clip_share`` (at most 2**-k of a batch's values may saturate, §2).
MAX_ACT_CLIP_SHARE = 30
#: The default (§10): 0, no bound (every activation rescale clips the full ``act_clip_bits``).
DEFAULT_ACT_CLIP_SHARE = 0


def check_act_clip_share(value: object) -> int:
    """``value`` if it is an int in ``0..MAX_ACT_CLIP_SHARE`` (§2), else a ``ValueError`` naming ``act_clip_share``."""
    return _check_int_setting("act_clip_share", value, MAX_ACT_CLIP_SHARE)


def clip_thresholds(width: int, target_bits: int, clip_bits: int) -> list[int]:
    """For c = 1..``clip_bits``: the smallest magnitude that saturates when a tensor of bit width ``width`` is
    rescaled to ``target_bits`` with a shift c bits less than the one that fits it (§2), i.e.
    ``2**(target_bits + max(0, width - target_bits - c))``."""
    return [1 << (target_bits + max(0, width - target_bits - c)) for c in range(1, clip_bits + 1)]


def clip_for_share(counts: Sequence[int], total: int, clip_bits: int, share_bits: int) -> int:
    """The clip c (0..``clip_bits``) an activation rescale takes under a bound of 2**-``share_bits`` on the
    saturated share (§2): the largest c whose count ``counts[c - 1]`` (values at or above ``clip_thresholds``'
    c-th entry) times 2**``share_bits`` is at most ``total`` (the values rescaled).  ``share_bits`` 0 bounds
    nothing: c = ``clip_bits``.  The counts grow with c, so the clips allowed are 0..c."""
    c = 0
    while c < clip_bits and counts[c] << share_bits <= total:
        c += 1
    return c


def calibrate(running: int | None, width: int) -> int:
    """The running bit width (fixed point, ``CALIBRATION_FRAC_BITS``) after a step whose whole-batch width was
    ``width``: the first step sets it, later ones move it ``2**-CALIBRATION_DECAY_SHIFT`` of the way (floor)."""
    target = width << CALIBRATION_FRAC_BITS
    if running is None:
        return target
    return running + ((target - running) >> CALIBRATION_DECAY_SHIFT)


def static_shift(running: int, target_bits: int = 7, headroom: int = 0) -> int:
    """The inference shift of a calibrated site: ``max(0, round(running width) + headroom - target_bits)``
    (halves up).

    Rounding, not the ceiling: the typical batch's shift, so a typical image keeps all 7 bits (the two were
    compared on the validation split: results/static-inference/).  ``headroom``: extra bits above that width,
    ``OUTPUT_HEADROOM`` for the site that produces the logits (docs/numerics.md §12).
    """
    width = (running + (1 << (CALIBRATION_FRAC_BITS - 1))) >> CALIBRATION_FRAC_BITS
    return max(0, width + headroom - target_bits)
