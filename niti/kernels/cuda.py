"""Exact int8 × int8 → int32 products on CUDA through ``torch._int_mm`` (docs/numerics.md §1).

cuBLASLt's int8 GEMM behind ``torch._int_mm`` needs ``M > 16`` and ``K``,
``N`` multiples of 8, and it is fastest (and most widely supported) with a
row-major ``a`` and a column-major ``b`` (the "TN" layout).  ``int_mm_cuda``
pads with zeros and copies into that layout only when it must, then slices
the padding off: zero rows and columns add nothing to any sum, so the result
is exactly ``a @ b``.

Overflow: this function does not split K.  ``matmul.int_matmul`` calls it only
with ``K ≤ MAX_K_INT32 = (2**31 - 1) // 127**2``, so for mantissas in
[-127, 127] every partial sum, in whatever order the tensor cores add the
terms, is bounded by ``K · 127² ≤ 2**31 - 1``.  That matters on the GPU
because int8 tensor-core accumulators saturate rather than wrap: an
out-of-range sum would be silently clipped, not merely wrapped.  The bound
assumes the datapath's symmetric clip (docs/numerics.md §1): an operand holding
-128 could exceed it for ``K > 131071`` (``128² · 131072 = 2**31``).
Zero padding of K adds only zero terms, so it never loosens the bound.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch
from torch import Tensor

__all__ = ["CONV_BACKEND_ENV", "MIN_M", "int_mm_cuda", "padded_shape", "triton_conv2d"]

#: Environment switch for CUDA convolutions: "triton" (default, when importable) or "im2col".
CONV_BACKEND_ENV = "NITI_CUDA_CONV"

#: ``torch._int_mm`` on CUDA rejects ``M <= 16``; pad such M up to this.
MIN_M = 32
_ALIGN = 8


def _round_up(v: int, multiple: int) -> int:
    return -(-v // multiple) * multiple


def padded_shape(m: int, k: int, n: int) -> tuple[int, int, int]:
    """The ``(M, K, N)`` that ``torch._int_mm`` accepts on CUDA for an ``(m, k) @ (k, n)`` product."""
    return (m if m > 16 else MIN_M), _round_up(max(k, 1), _ALIGN), _round_up(max(n, 1), _ALIGN)


def _row_major(t: Tensor, rows: int, cols: int) -> Tensor:
    """``t`` zero-padded to ``(rows, cols)``, row-major (no copy when nothing changes)."""
    if t.shape == (rows, cols):
        return t.contiguous()
    out = t.new_zeros((rows, cols))
    out[:t.shape[0], :t.shape[1]] = t
    return out


def int_mm_cuda(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` exactly, int32, for CUDA int8 ``a`` (M, K) and ``b`` (K, N) of any size.

    Returns a contiguous ``(M, N)`` int32 tensor.  The caller keeps K within
    the int32-safe bound (see the module docstring).
    """
    if a.device.type != "cuda" or b.device.type != "cuda":
        raise ValueError(f"int_mm_cuda needs CUDA tensors, got {a.device} and {b.device}")
    if a.dtype != torch.int8 or b.dtype != torch.int8 or a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"int_mm_cuda needs 2-D int8 operands, got {a.dim()}-D {a.dtype} and {b.dim()}-D {b.dtype}")
    m, k = a.shape
    k2, n = b.shape
    if k != k2:
        raise ValueError(f"inner dimensions differ: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    if m == 0 or n == 0 or k == 0:
        return torch.zeros((m, n), dtype=torch.int32, device=a.device)
    mp, kp, np_ = padded_shape(m, k, n)
    a_p = _row_major(a, mp, kp)
    b_p = _row_major(b.t(), np_, kp).t()  # column-major (K, N) view of a row-major (N, K) tensor
    out = torch._int_mm(a_p, b_p)
    if (mp, np_) != (m, n):
        out = out[:m, :n].contiguous()
    return out


@functools.lru_cache(maxsize=1)
def _triton_conv() -> ModuleType | None:
    try:
        from . import triton_conv
    except Exception:  # no triton, or no usable Triton backend: im2col + _int_mm serves instead
        return None
    return triton_conv


def triton_conv2d(x: Tensor, weight: Tensor, stride: tuple[int, int],
                  padding: tuple[int, int]) -> tuple[Tensor, object] | None:
    """``conv.conv2d`` through the Triton implicit GEMM, or None where that path does not apply.

    None when ``NITI_CUDA_CONV=im2col``, when Triton cannot be imported, or
    when ``triton_conv.supports`` refuses the operands (e.g. ``K · 127²``
    would not fit int32); the caller then uses im2col + ``int_matmul``.
    """
    if os.environ.get(CONV_BACKEND_ENV, "triton") != "triton":
        return None
    module = _triton_conv()
    if module is None or not module.supports(x, weight, stride, padding):
        return None
    return module.conv2d(x, weight, stride, padding)
