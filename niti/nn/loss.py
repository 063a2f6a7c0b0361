"""Integer cross-entropy backward (docs/numerics.md §7): a precise softmax gradient without floats.

The softmax is computed in base 2 with fixed-point exponents: each logit
``M · 2**e`` is multiplied by log2(e) in Q30, the row maximum is subtracted
exactly, the difference is rounded to ``EXP_FRAC_BITS`` fractional bits, and
``2**d`` is a table entry (the fraction, Q30) shifted right by the integer
part.  Every probability is then within about 0.001 of the exact softmax for
any int8 logits and any exponent (measured and tested over e = -20..+12), each
row of the gradient sums to exactly zero, and no intermediate can overflow
int64 whatever the exponent (very small exponents make every difference round
to zero, i.e. a uniform softmax; very large ones make every non-maximum
entry underflow to zero).
"""

from __future__ import annotations

from math import isqrt

import torch
from torch import Tensor

from ..numerics import IntTensor, round_shift
from ..runtime import Runtime

__all__ = ["LOG2E_Q30", "EXP_FRAC_BITS", "GRAD_BITS", "LOSS_SHIFT", "SOFTMAXES", "exp2_table", "softmax_grad",
           "softmax_grad_coarse", "cross_entropy_backward"]

#: ``precise``: this module's softmax; ``coarse``: the first version's whole-power-of-two one (ablations only).
SOFTMAXES = ("precise", "coarse")

#: log2(e) in Q30: round(2**30 / ln 2) = 1549082005 (relative error 2e-10).
LOG2E_Q30 = 1549082005
#: Fractional bits of the base-2 exponent difference (one step = 2**-10 in log2, 0.07 % in probability).
EXP_FRAC_BITS = 10
#: Table entries are 2**(j / 2**EXP_FRAC_BITS) in Q30 (values in [2**30, 2**31)).
_TABLE_BITS = 30
#: The gradient is ``2**GRAD_BITS · (softmax - onehot)``; rounding each entry costs at most 2**-21.
GRAD_BITS = 20
#: ``GRAD_BITS - 7``: the right shift that maps the gradient onto the int8 error (1.0 ↦ 128).
LOSS_SHIFT = GRAD_BITS - 7
#: A base-2 exponent difference at or below -2**16 (in units of 2**-EXP_FRAC_BITS) is 2**-64 or less: zero.
_D_FLOOR = -(1 << 16)


def _pow2_fraction_table(frac_bits: int, out_bits: int, guard: int = 64) -> list[int]:
    """``round(2**(out_bits + j / 2**frac_bits))`` for ``j < 2**frac_bits``, with Python integers only.

    ``2**(2**-i)`` is built by repeated integer square roots with ``guard``
    extra bits; entry ``j`` is the product of the roots selected by its bits.
    """
    one = 1 << guard
    roots = []  # roots[i] = 2**(2**-(i+1)) in Q(guard)
    r = 2 << guard
    for _ in range(frac_bits):
        r = isqrt(r << guard)
        roots.append(r)
    table = []
    for j in range(1 << frac_bits):
        v = one
        for i in range(frac_bits):  # bit (frac_bits-1-i) of j selects 2**(2**-(i+1))
            if (j >> (frac_bits - 1 - i)) & 1:
                v = (v * roots[i]) >> guard
        table.append((v * (1 << out_bits) + (one >> 1)) >> guard)
    return table


_TABLE = torch.tensor(_pow2_fraction_table(EXP_FRAC_BITS, _TABLE_BITS), dtype=torch.int64)
_TABLES: dict[torch.device, Tensor] = {}


def exp2_table(device: torch.device) -> Tensor:
    """The int64 table ``2**(j / 2**EXP_FRAC_BITS)`` in Q30 on ``device`` (cached)."""
    t = _TABLES.get(device)
    if t is None:
        t = _TABLES[device] = _TABLE.to(device)
    return t


def _exp2_weights(m: Tensor, e: int) -> Tensor:
    """``P ≈ 2**30 · exp(x - rowmax(x))`` for ``x = m · 2**e``, int64, for any exponent ``e``."""
    t = m * LOG2E_Q30  # x · log2(e) in units of 2**(e - 30); |t| < 2**38
    diff = t - t.amax(dim=1, keepdim=True)  # <= 0, exact
    shift = 30 - EXP_FRAC_BITS - e  # units of 2**(e-30) -> units of 2**-EXP_FRAC_BITS
    if shift > 0:
        # Nearest, ties toward +inf; |diff| < 2**39, so any shift >= 62 gives 0 exactly as a larger one would.
        s = min(shift, 62)
        d = (diff + (1 << (s - 1))) >> s
    else:
        # A left shift: differences already at or below the floor stay there (their 2**d is 0 anyway),
        # so clamping first keeps d within int64 for any exponent.
        d = diff.clamp_min(_D_FLOOR) << min(-shift, 40)
    d = d.clamp_min(_D_FLOOR)
    whole = d >> EXP_FRAC_BITS  # floor, <= 0
    frac = d - (whole << EXP_FRAC_BITS)  # in [0, 2**EXP_FRAC_BITS)
    return exp2_table(m.device)[frac] >> (-whole).clamp_max(63)


def _check_labels(labels: Tensor, n: int, k: int) -> None:
    """``n`` class indices in ``[0, k)``: reads their range (a host synchronisation when they sit on a GPU)."""
    if labels.shape != (n,) or (n and (int(labels.min()) < 0 or int(labels.max()) >= k)):
        raise ValueError(f"labels must be {n} class indices in [0, {k}), got shape {tuple(labels.shape)}")


def softmax_grad(logits: IntTensor, labels: Tensor, *, check_labels: bool = True) -> Tensor:
    """``G ≈ 2**GRAD_BITS · (softmax(logits) - onehot(labels))`` in int64; each row sums to exactly 0.

    Off-label entries are ``P · 2**GRAD_BITS / Z`` rounded to nearest; the
    label entry takes minus the sum of the others.  ``check_labels=False`` skips the range check (a host
    read) for labels the caller has already checked on the host.
    """
    m = logits.m.to(torch.int64)
    n, k = m.shape
    if check_labels:
        _check_labels(labels, n, k)
    if k >= 1 << 20:
        raise ValueError(f"at most 2**20 classes are supported (int64 softmax sums), got {k}")
    p = _exp2_weights(m, logits.e)  # each row's maximum is exactly 2**30
    z = p.sum(dim=1, keepdim=True)  # <= k · 2**31
    g = torch.div((p << (GRAD_BITS + 1)) + z, z << 1, rounding_mode="floor")  # P·2**20 / Z, nearest; < 2**52
    rows = torch.arange(n, device=m.device)
    g[rows, labels] -= g.sum(dim=1)
    return g


def softmax_grad_coarse(logits: IntTensor, labels: Tensor, *, check_labels: bool = True) -> Tensor:
    """The first version's gradient (log-probabilities rounded to whole powers of two), on the 2**11 scale.

    Kept only to measure what the precise softmax buys (the ablation in
    results/); it raises ``OverflowError`` at absurdly small exponents.
    """
    m = logits.m.to(torch.int64)
    n, k = m.shape
    if check_labels:
        _check_labels(labels, n, k)
    e = logits.e
    if e > -7:
        s = torch.div(m * 47274, 1 << 15, rounding_mode="trunc")  # log2(e) in Q15
        s = s * (1 << min(e, 8)) if e >= 0 else torch.div(s, 1 << -e, rounding_mode="trunc")
        s = (s - (s.amax(dim=1, keepdim=True) - 10)).clamp_min(0)
        p = torch.bitwise_left_shift(torch.ones_like(s), s) - 1
    else:  # second-order Taylor of e^x, scaled by 2**(1-2e)
        if k * (1 << (2 - 2 * e)) * (1 << 11) > 2**63 - 1:
            raise OverflowError(f"logit exponent {e} too small for the coarse softmax's Taylor branch")
        p = (1 << (1 - 2 * e)) + m * (1 << (1 - e)) + m * m
    z = p.sum(dim=1, keepdim=True)
    g = torch.div(p << 11, z, rounding_mode="trunc")
    g[torch.arange(n, device=m.device), labels] -= g.sum(dim=1)
    return g


def cross_entropy_backward(logits: IntTensor, labels: Tensor, runtime: Runtime,
                           softmax: str = "precise", *, check_labels: bool = True) -> IntTensor:
    """The int8 error (exponent 0, i.e. 127 ≈ a probability of 1) of the cross-entropy loss w.r.t. ``logits``.

    ``check_labels=False``: the labels were range-checked on the host before they were copied (a training step).
    """
    if softmax not in SOFTMAXES:
        raise ValueError(f"softmax must be one of {SOFTMAXES}, got {softmax!r}")
    if softmax == "precise":
        g, shift = softmax_grad(logits, labels, check_labels=check_labels), LOSS_SHIFT
    else:  # the first version's 2**11 scale and shift 4: bit-identical to it, random draws included
        g, shift = softmax_grad_coarse(logits, labels, check_labels=check_labels), 4
    runtime.record("softmax_grad", g)
    noise = None
    if runtime.mode("loss") == "stochastic":
        noise = runtime.uniform(1 << shift, tuple(g.shape), batched=True, device=g.device)
    err = round_shift(g, shift, runtime.mode("loss"), noise=noise).clamp(-127, 127).to(torch.int8)
    return IntTensor(err, 0)
