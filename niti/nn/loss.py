"""Integer cross-entropy backward (DESIGN §1.7): softmax gradient without floats."""

from __future__ import annotations

import torch
from torch import Tensor

from ..numerics import IntTensor, round_shift
from ..runtime import Runtime

__all__ = ["LOG2E_Q15", "softmax_grad_2p11", "cross_entropy_backward"]

#: log2(e) in Q15: 47274 / 2**15 ≈ 1.442688.
LOG2E_Q15 = 47274
_INT64_MAX = 2**63 - 1


def _tdiv(a: Tensor, b: Tensor | int) -> Tensor:
    """Integer division truncating toward zero."""
    return torch.div(a, b, rounding_mode="trunc")


def _exp2_weights(m: Tensor, e: int) -> Tensor:
    """``P``, integers proportional to exp(logit) per row (§1.7 step 1), int64."""
    if e > -7:
        s = _tdiv(m * LOG2E_Q15, 1 << 15)
        # For e >= 4 any two distinct s differ by >= 16 > 10 after scaling, so only the row maxima survive the
        # clamp below: capping e at 8 changes no result and keeps s * 2**e far from int64 overflow.
        s = s * (1 << min(e, 8)) if e >= 0 else _tdiv(s, 1 << -e)
        s = (s - (s.amax(dim=1, keepdim=True) - 10)).clamp_min(0)
        return torch.bitwise_left_shift(torch.ones_like(s), s) - 1
    # Logits far below 1: second-order Taylor of e^x, scaled by 2**(1-2e).
    return (1 << (1 - 2 * e)) + m * (1 << (1 - e)) + m * m


def softmax_grad_2p11(logits: IntTensor, labels: Tensor) -> Tensor:
    """``G ≈ 2**11 · (softmax(logits) - onehot(labels))`` in int64; each row sums to exactly 0."""
    m = logits.m.to(torch.int64)
    n, k = m.shape
    if labels.shape != (n,) or (n and (int(labels.min()) < 0 or int(labels.max()) >= k)):
        raise ValueError(f"labels must be {n} class indices in [0, {k}), got shape {tuple(labels.shape)}")
    e = logits.e
    if e <= -7:
        # Largest P is 2**(1-2e) + 127·2**(1-e) + 127**2 < 2**(2-2e); Z and P·2**11 must fit int64.
        if k * (1 << (2 - 2 * e)) * (1 << 11) > _INT64_MAX:
            raise OverflowError(f"logit exponent {e} too small for the Taylor branch with {k} classes: "
                                "the int64 softmax sum would overflow")
    p = _exp2_weights(m, e)
    z = p.sum(dim=1, keepdim=True)
    g = _tdiv(p << 11, z)
    rows = torch.arange(n, device=m.device)
    g[rows, labels] -= g.sum(dim=1)
    return g


def cross_entropy_backward(logits: IntTensor, labels: Tensor, runtime: Runtime) -> IntTensor:
    """The int8 error (exponent 0) of the cross-entropy loss w.r.t. int8 ``logits`` (§1.7 step 3)."""
    g = softmax_grad_2p11(logits, labels)
    noise = None
    if runtime.mode("loss") == "stochastic":
        noise = runtime.uniform(1 << 4, tuple(g.shape), batched=True, device=g.device)
    err = round_shift(g, 4, runtime.mode("loss"), noise=noise).clamp(-127, 127).to(torch.int8)
    return IntTensor(err, 0)
