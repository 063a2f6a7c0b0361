"""``niti.audit.integer_only`` (DESIGN §3): it must see every aten op and fail on floating point."""

from __future__ import annotations

import pytest
import torch
from torch.utils._pytree import tree_flatten

import niti
from niti.audit import FloatingPointOpError, integer_only

X = torch.arange(6, dtype=torch.int32)
FLOAT_OUTSIDE = torch.ones(3)

FLOAT_CASES = {
    "factory default dtype": lambda: torch.zeros(2),
    "float literal": lambda: torch.tensor([1.5]),
    "cast .float()": lambda: X.float(),
    "cast to bfloat16": lambda: X.to(torch.bfloat16),
    "true division": lambda: X / 2,
    "float scalar multiply": lambda: X * 0.5,
    "float scalar add": lambda: X + 1.5,
    "clamp with float bounds": lambda: X.clamp(0.5, 3.5),
    "sum into float64": lambda: X.sum(dtype=torch.float64),
    "complex factory": lambda: torch.zeros(2, dtype=torch.complex64),
    "random floats": lambda: torch.rand(3).to(torch.int32),
    "log2 (the reference's range estimate)": lambda: torch.log2(X),
    "sqrt": lambda: torch.sqrt(X),
    "float tensor from outside": lambda: FLOAT_OUTSIDE + 1,
    "empty_like float16": lambda: torch.empty_like(X, dtype=torch.float16),
}


@pytest.mark.parametrize("name", list(FLOAT_CASES))
def test_float_ops_raise(name: str) -> None:
    with pytest.raises(FloatingPointOpError, match=r"aten\.\w+.*integer_only"):
        with integer_only():
            FLOAT_CASES[name]()


def test_integer_ops_pass_and_are_counted() -> None:
    with integer_only() as audit:
        a = torch.randint(-127, 128, (32, 32), dtype=torch.int8)
        b = torch._int_mm(a, a.t().contiguous())
        c = torch.div(b, 3, rounding_mode="trunc") >> 2
        d = torch.where(c > 0, c, torch.zeros((), dtype=c.dtype)).sum()
        e = X // 2
    assert audit.ops >= 6
    assert d.dtype == torch.int64 and e.dtype == torch.int32


def test_error_is_a_runtime_error_naming_the_dtype() -> None:
    assert issubclass(FloatingPointOpError, RuntimeError)
    with pytest.raises(FloatingPointOpError, match="float32"):
        with integer_only():
            X.float()


def test_mode_is_left_after_an_error() -> None:
    with pytest.raises(FloatingPointOpError):
        with integer_only():
            torch.zeros(2)
    assert float(torch.ones(2).sum()) == 2.0  # floats work again outside


def test_nested_counting_is_per_context() -> None:
    with integer_only() as outer:
        X + 1
        with integer_only() as inner:
            X + 2
    assert inner.ops >= 1 and outer.ops >= 1


class StrictAudit(integer_only):
    """Test-side tightening: also refuse Python float scalars handed to any aten op."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        leaves, _ = tree_flatten((args, kwargs or {}))
        scalars = [v for v in leaves if isinstance(v, float)]
        if scalars:
            raise FloatingPointOpError(f"{func} got Python float scalars {scalars}")
        return super().__torch_dispatch__(func, types, args, kwargs)


def test_strict_audit_catches_float_scalars_the_plain_one_allows() -> None:
    with integer_only():
        torch.full((2,), 2.7, dtype=torch.int32)  # a float converted to int: no float *tensor* exists
    with pytest.raises(FloatingPointOpError, match="Python float"):
        with StrictAudit():
            torch.full((2,), 2.7, dtype=torch.int32)


@pytest.mark.parametrize("accumulator_bits", [8, 16])
def test_lenet_step_passes_even_the_strict_audit(accumulator_bits: int) -> None:
    """No float tensor and not even a float scalar anywhere in a LeNet training step and prediction."""
    model = niti.build("lenet", seed=0, accumulator_bits=accumulator_bits)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 28, 28, 1), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (8,), generator=g)
    with StrictAudit() as audit:
        model.train_step(images, labels)
        pred = model.predict(images)
    assert audit.ops > 100 and model.step == 1
    assert pred.dtype == torch.int64
