"""The aligned sum of two int8 tensors in C for the CPU (``csrc/add_shifted.c``), called through ctypes.

A residual ``Add`` and the backward's sum of two errors at a branch point are
``numerics.aligned_sum`` of two int8 terms: when the exponents differ by at
most 22 that sum is exact, at the smaller exponent, in int32.  PyTorch forms it
in five passes (two widenings, two shifts, an add); this is one.  Anything else
(a larger gap, other dtypes, another device) returns None and the caller takes
``aligned_sum``, the reference it is pinned against in ``tests/test_kernels.py``.
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from .cpu_gemm import INT, LONG, PTR, bind_library, csrc

__all__ = ["MAX_GAP", "SOURCE", "aligned_pair"]

SOURCE = csrc("add_shifted.c")
#: Exponent gaps up to this keep ``aligned_sum`` of two int8 terms exact at the smaller exponent (30 - 7 - 1).
MAX_GAP = 22


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    return bind_library(SOURCE, {"niti_add_shifted_i8": (None, [PTR, INT, PTR, INT, LONG, PTR, INT])})


def aligned_pair(a: Tensor, ea: int, b: Tensor, eb: int) -> tuple[Tensor, int] | None:
    """``aligned_sum([(a, ea, 7), (b, eb, 7)])`` for int8 ``a``, ``b`` of one shape on the CPU with
    ``|ea - eb| <= MAX_GAP`` (int32, the smaller exponent); None where it does not apply."""
    if (a.dtype != torch.int8 or b.dtype != torch.int8 or a.shape != b.shape or a.device.type != "cpu"
            or b.device.type != "cpu" or abs(ea - eb) > MAX_GAP):
        return None
    lib = _lib()
    if lib is None:
        return None
    a, b = a.contiguous(), b.contiguous()
    e = min(ea, eb)
    out = torch.empty(a.shape, dtype=torch.int32)
    lib.niti_add_shifted_i8(a.data_ptr(), ea - e, b.data_ptr(), eb - e, a.numel(), out.data_ptr(),
                            torch.get_num_threads())
    return out, e
