"""Integer cross-entropy backward (DESIGN §1.7) against a Python-int reference and float softmax."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from niti.nn.loss import cross_entropy_backward, softmax_grad_2p11
from niti.numerics import IntTensor, RoundingPolicy, round_shift
from niti.runtime import Runtime


def tdiv(a: int, b: int) -> int:
    """Python-int division truncating toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def ref_grad_row(row: list[int], e: int, label: int) -> list[int]:
    """DESIGN §1.7 steps 1–2 for one row, with unbounded Python ints."""
    if e > -7:
        s = [tdiv(m * 47274, 2**15) for m in row]
        s = [v * 2**e if e >= 0 else tdiv(v, 2 ** (-e)) for v in s]
        top = max(s)
        p = [2 ** max(0, v - (top - 10)) - 1 for v in s]
    else:
        p = [2 ** (1 - 2 * e) + m * 2 ** (1 - e) + m * m for m in row]
    z = sum(p)
    g = [tdiv(v * 2**11, z) for v in p]
    g[label] -= sum(g)
    return g


def _grad(rows: list[list[int]], e: int, labels: list[int]) -> torch.Tensor:
    return softmax_grad_2p11(IntTensor(torch.tensor(rows, dtype=torch.int8), e), torch.tensor(labels))


WORKED_M = [100, 50, -20, 0, 90, 10, 5, -100, 60, 70]


def test_design_worked_example() -> None:
    got = _grad([WORKED_M], -4, [3])
    assert got.dtype == torch.int64
    assert got[0].tolist() == [1191, 36, 0, -2044, 595, 1, 1, 0, 73, 147]
    assert ref_grad_row(WORKED_M, -4, 3) == got[0].tolist()  # the reference agrees with the design


def test_worked_example_error_after_the_shift() -> None:
    g = [1191, 36, 0, -2044, 595, 1, 1, 0, 73, 147]
    logits = IntTensor(torch.tensor([WORKED_M], dtype=torch.int8), -4)
    for mode in ("nearest", "pseudo_stochastic", "truncate"):
        err = cross_entropy_backward(logits, torch.tensor([3]), Runtime(RoundingPolicy(loss=mode)))
        want = round_shift(torch.tensor(g), 4, mode).clamp(-127, 127)
        assert err.e == 0 and err.m.dtype == torch.int8
        assert err.m[0].tolist() == want.tolist()
    err = cross_entropy_backward(logits, torch.tensor([3]), Runtime(RoundingPolicy(loss="nearest")))
    assert err.m[0].tolist() == [74, 2, 0, -127, 37, 0, 0, 0, 5, 9]  # -2044/16 = -127.75 clips at -127


rows_strategy = st.integers(1, 6).flatmap(
    lambda n: st.integers(2, 12).flatmap(
        lambda k: st.tuples(
            st.lists(st.lists(st.integers(-127, 127), min_size=k, max_size=k), min_size=n, max_size=n),
            st.lists(st.integers(0, k - 1), min_size=n, max_size=n))))


@settings(max_examples=300, deadline=None)
@given(rows_strategy, st.integers(-23, 12))
def test_matches_python_reference(rows_labels, e: int) -> None:
    rows, labels = rows_labels
    got = _grad(rows, e, labels)
    assert got.tolist() == [ref_grad_row(r, e, y) for r, y in zip(rows, labels)]


@settings(max_examples=300, deadline=None)
@given(rows_strategy, st.one_of(st.integers(-23, -7), st.integers(-6, 8)))
def test_every_row_sums_to_zero(rows_labels, e: int) -> None:
    """Both branches, the Taylor one (e <= -7) included."""
    rows, labels = rows_labels
    got = _grad(rows, e, labels)
    assert got.sum(dim=1).tolist() == [0] * len(rows)
    # The label column carries the negative mass, every other entry is >= 0.
    for i, y in enumerate(labels):
        others = torch.cat([got[i, :y], got[i, y + 1:]])
        assert int(got[i, y]) <= 0 and bool((others >= 0).all())


@pytest.mark.parametrize("e", list(range(-12, 4)))
def test_direction_close_to_float_softmax_minus_onehot(e: int) -> None:
    g = torch.Generator().manual_seed(100 + e)
    m = torch.randint(-127, 128, (32, 10), generator=g, dtype=torch.int8)
    y = torch.randint(0, 10, (32,), generator=g)
    got = softmax_grad_2p11(IntTensor(m, e), y).to(torch.float64) / 2**11
    ref = torch.softmax(m.to(torch.float64) * 2.0**e, dim=1) - torch.nn.functional.one_hot(y, 10)
    cos = float(got.flatten() @ ref.flatten() / (got.norm() * ref.norm()))
    # Measured: >= 0.993 over e in -12..3 (the exp2 branch quantises log2 to integers); Taylor >= 0.9998.
    assert cos >= 0.98
    if e <= -8:
        assert cos >= 0.9999
    # And in absolute terms the scaled gradient is within a few percent of the float one.
    assert float((got - ref).abs().max()) <= 0.35


def test_overflow_guard_raises_for_absurdly_small_exponents() -> None:
    rows, labels = [[127, -127, 0, 5, 9, 1, 2, 3, 4, 5]], [0]
    with pytest.raises(OverflowError, match="exponent"):
        _grad(rows, -40, labels)
    with pytest.raises(OverflowError):
        _grad(rows, -24, labels)  # 10 · 2**(2+48) · 2**11 > 2**63 - 1
    # The smallest exponent the guard lets through for 10 classes still computes exactly (no silent wrap).
    assert _grad(rows, -23, labels)[0].tolist() == ref_grad_row(rows[0], -23, 0)
    # More classes: the guard tightens accordingly (1000 · 2**(13 + 42) > 2**63 > 1000 · 2**(13 + 40)).
    wide = [[127] * 999 + [-127]]
    with pytest.raises(OverflowError):
        _grad(wide, -21, [0])
    assert _grad(wide, -20, [0])[0].tolist() == ref_grad_row(wide[0], -20, 0)


@pytest.mark.parametrize("e", [20, 40, 52, 55, 56, 60, 62])
def test_large_positive_exponents_never_wrap(e: int) -> None:
    """A huge logit exponent must give the exact answer or raise, never a wrapped one."""
    rows, labels = [[127, 126, 0, 1], [-5, 3, 3, -127]], [0, 3]
    want = [ref_grad_row(r, e, y) for r, y in zip(rows, labels)]
    try:
        got = _grad(rows, e, labels).tolist()
    except OverflowError:
        return
    assert got == want


def test_stochastic_loss_rounding_is_seeded_and_brackets_the_quotient() -> None:
    g = torch.Generator().manual_seed(7)
    m = torch.randint(-127, 128, (16, 10), generator=g, dtype=torch.int8)
    y = torch.randint(0, 10, (16,), generator=g)
    logits = IntTensor(m, -5)
    grad = softmax_grad_2p11(logits, y)

    def run(seed: int) -> torch.Tensor:
        return cross_entropy_backward(logits, y, Runtime(RoundingPolicy(loss="stochastic"), seed=seed)).m

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    lo = round_shift(grad, 4, "truncate").clamp(-127, 127)
    hi = (lo + grad.sign()).clamp(-127, 127)
    assert bool(((a.to(torch.int64) == lo) | (a.to(torch.int64) == hi)).all())
