"""``integer_only()``: prove a region computes with integers only (docs/numerics.md §11).

A ``TorchDispatchMode`` sees every aten op below the Python API.  Any op that
consumes or produces a floating-point (or complex) tensor, or is handed a
Python ``float`` argument (``torch.full(.., 2.7, dtype=int32)``, ``fill_(3.9)``:
a float turned into integers without a float tensor), raises
``FloatingPointOpError`` naming the op, turning "integer-only" into a test.

What it cannot see: Python-side float arithmetic that never reaches an aten op
(``math.log2(t.item())``, a numpy round trip), and code that runs below the
dispatcher (compiled inductor kernels, Triton launches).  The static scan in
``tests/test_audit.py`` covers the first for niti's integer modules; the
compiled == eager and float-word tests cover the second.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["FloatingPointOpError", "HostReads", "integer_only"]


class FloatingPointOpError(RuntimeError):
    """A floating-point tensor appeared inside an ``integer_only()`` region."""


def _float_tensors(tree: object) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(tree)
    return [t for t in leaves if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())]


def _float_scalars(tree: object) -> list[float]:
    leaves, _ = tree_flatten(tree)
    return [v for v in leaves if isinstance(v, (float, complex))]


def _float_dtype_arg(kwargs: dict) -> torch.dtype | None:
    dtype = kwargs.get("dtype")
    if isinstance(dtype, torch.dtype) and (dtype.is_floating_point or dtype.is_complex):
        return dtype
    return None


class integer_only(TorchDispatchMode):
    """Context manager: raise on any aten op touching a floating-point tensor or a Python float.

    ``ops`` counts the ops seen, so a test can check the region did run.
    ``allow_float_scalars=True`` gives the older, weaker check (float tensors only).
    """

    def __init__(self, *, allow_float_scalars: bool = False) -> None:
        super().__init__()
        self.ops = 0
        self.allow_float_scalars = allow_float_scalars

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        self.ops += 1
        if not self.allow_float_scalars and (scalars := _float_scalars((args, kwargs))):
            raise FloatingPointOpError(f"{func} got Python float scalars {scalars[:4]} inside integer_only()")
        bad = _float_tensors((args, kwargs))
        if bad:
            raise FloatingPointOpError(f"{func} consumed a {bad[0].dtype} tensor inside integer_only()")
        dtype = _float_dtype_arg(kwargs)
        if dtype is not None:
            raise FloatingPointOpError(f"{func} was asked for dtype {dtype} inside integer_only()")
        out = func(*args, **kwargs)
        bad = _float_tensors(out)
        if bad:
            raise FloatingPointOpError(f"{func} produced a {bad[0].dtype} tensor inside integer_only()")
        return out


_PACKAGE = Path(__file__).resolve().parent


def _caller_in_package() -> str:
    """``module.py:line`` of the innermost niti frame outside this file (where a host read was asked for)."""
    frame = sys._getframe(2)
    while frame is not None:
        path = Path(frame.f_code.co_filename).resolve()
        if path != Path(__file__).resolve() and _PACKAGE in path.parents:
            return f"{path.relative_to(_PACKAGE.parent)}:{frame.f_lineno}"
        frame = frame.f_back
    return "outside niti"


class HostReads(TorchDispatchMode):
    """Context manager: count the reads of tensor values into Python (issue 18's host synchronisations).

    On a GPU each such read (``int(t)``, ``t.item()``, ``bool(t)``, ``t.tolist()``) waits for the device; on the
    CPU the same calls mark where a GPU step would wait, so a CPU run counts a GPU step's synchronisations.
    ``sites`` maps ``module.py:line`` (the innermost niti frame) to its count; ``total`` sums them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter[str] = collections.Counter()
        self._tolist = None

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func is torch.ops.aten._local_scalar_dense.default:
            self.sites[_caller_in_package()] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> "HostReads":
        # ``tolist`` reads CPU memory without an aten op: count it by wrapping the method while the mode is on.
        original, reads = torch.Tensor.tolist, self

        def counted_tolist(t: torch.Tensor):  # noqa: ANN202
            reads.sites[_caller_in_package()] += 1
            return original(t)

        self._tolist = original
        torch.Tensor.tolist = counted_tolist  # type: ignore[method-assign]
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        torch.Tensor.tolist = self._tolist  # type: ignore[method-assign]
        return super().__exit__(*exc)
