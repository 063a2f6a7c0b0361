"""Exact int8 × int8 matrix products on ``torch._int_mm`` (docs/numerics.md §1).

``_int_mm`` accumulates in int32 and wraps silently on overflow, and it
returns garbage for operands with overlapping or zero strides.  ``int_matmul``
guards both: it checks the layouts and splits the reduction dimension into
chunks whose worst case fits int32, summing the partials in int64.

On a CPU without VNNI (no ``avx512_vnni`` / ``avx_vnni`` flag), PyTorch's
``_int_mm`` falls back to a slow reference loop (measured on a 2-core AVX2
EPYC: 0.6 G multiply-adds/s, 11x slower than an int32 ``mm``).  There niti
uses its own AVX2 kernel (``cpu_gemm``: int16 ``vpmaddwd`` products, int32
sums) when it compiles, else widens the operands to int32 and multiplies them
with ``torch.mm``: the same exact int32 accumulation either way, so the same
bits.  ``NITI_CPU_MATMUL=int_mm``, ``=avx2`` or ``=int32`` forces a path.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from . import cpu_gemm

__all__ = ["INT32_MAX", "MAX_K_INT32", "int_matmul", "check_int_mm_layout"]

INT32_MAX = 2**31 - 1
#: Largest reduction length whose worst case (±127 · ±127 per term) fits int32.
MAX_K_INT32 = INT32_MAX // (127 * 127)  # 133,144


def _plain_layout(t: Tensor) -> bool:
    # Strict: even a size-1 dimension must carry the canonical stride.  A (1, K) view with strides (1, 1)
    # counts as "contiguous" in PyTorch, yet _int_mm reads it with the wrong leading dimension.
    r, c = t.shape
    sr, sc = t.stride()
    return (sc == 1 and sr >= max(c, 1)) or (sr == 1 and sc >= r > 1)


def canonical_layout(t: Tensor) -> Tensor:
    """``t``, or a fresh row-major copy of a single row/column whose strides ``_int_mm`` would misread.

    Other bad layouts (overlap, stride 0) are left for ``check_int_mm_layout`` to reject.
    """
    if t.dim() != 2 or min(t.shape) != 1 or _plain_layout(t):
        return t
    return torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)  # fresh row-major strides


def check_int_mm_layout(t: Tensor, name: str) -> None:
    """Raise unless ``t`` is a row-major or column-major 2-D view without overlap."""
    if t.dim() != 2 or t.dtype != torch.int8:
        raise ValueError(f"{name}: expected a 2-D int8 tensor, got {t.dim()}-D {t.dtype}")
    if not _plain_layout(t):
        raise ValueError(f"{name}: _int_mm needs a plain row- or column-major layout, got shape {tuple(t.shape)} "
                         f"strides {t.stride()}")


CPU_MATMUL_ENV = "NITI_CPU_MATMUL"


@functools.lru_cache(maxsize=1)
def cpu_matmul_path() -> str:
    """``"int_mm"`` (int8 VNNI), ``"avx2"`` (niti's kernel) or ``"int32"`` (widened ``torch.mm``): the fastest exact
    CPU product here."""
    forced = os.environ.get(CPU_MATMUL_ENV, "").strip()
    if forced:
        if forced not in ("int_mm", "avx2", "int32"):
            raise ValueError(f"{CPU_MATMUL_ENV} must be int_mm, avx2 or int32, got {forced!r}")
        if forced == "avx2" and cpu_gemm.load() is None:
            raise ValueError(f"{CPU_MATMUL_ENV}=avx2, but the AVX2 kernel cannot be built or run here")
        return forced
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return "int_mm"
    has_vnni = any(flag in flags for flag in (" avx512_vnni", " avx_vnni", " amx_int8"))
    if has_vnni:
        return "int_mm"
    return "avx2" if cpu_gemm.load() is not None else "int32"


def _mm(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    if a.device.type == "cuda":
        from .cuda import int_mm_cuda  # lazy: the CPU path must not need it
        return int_mm_cuda(a, b)
    path = cpu_matmul_path()
    if path == "avx2":
        return cpu_gemm.gemm(a, b, out)
    if path == "int32":
        # Exact: every partial sum is an integer below 2**31 (K <= MAX_K_INT32), as in _int_mm.
        if out is not None:
            return torch.mm(a.to(torch.int32), b.to(torch.int32), out=out)
        return torch.mm(a.to(torch.int32), b.to(torch.int32))
    if out is not None:
        return torch._int_mm(a, b, out=out)
    return torch._int_mm(a, b)


def int_matmul(a: Tensor, b: Tensor, *, out: Tensor | None = None) -> Tensor:
    """``a @ b`` exactly for int8 ``a`` (M, K) and ``b`` (K, N).

    Returns int32 when K ≤ ``MAX_K_INT32`` (no term sum can reach 2**31), else
    int64 from int32 partial products over K-chunks: never wraps, never saturates.
    ``out`` (contiguous int32 (M, N), CPU) receives the unsplit product to reuse its memory;
    it is ignored when K is split.
    """
    a, b = canonical_layout(a), canonical_layout(b)
    check_int_mm_layout(a, "a")
    check_int_mm_layout(b, "b")
    m, k = a.shape
    k2, n = b.shape
    if k != k2:
        raise ValueError(f"inner dimensions differ: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    if m == 0 or n == 0 or k == 0:
        return torch.zeros((m, n), dtype=torch.int32, device=a.device)
    if k <= MAX_K_INT32:
        if out is not None and (out.shape != (m, n) or out.dtype != torch.int32 or not out.is_contiguous()):
            raise ValueError(f"out must be a contiguous int32 {(m, n)} tensor, got {out.dtype} {tuple(out.shape)}")
        return _mm(a, b, out)
    out = torch.zeros((m, n), dtype=torch.int64, device=a.device)
    for k0 in range(0, k, MAX_K_INT32):
        k1 = min(k, k0 + MAX_K_INT32)
        out += _mm(a[:, k0:k1], b[k0:k1])
    return out
