"""Batch norm's per-element table passes in C for the CPU (``csrc/bn_tables.c``), called through ctypes.

The PyTorch path (``fused.bn_error`` then a rescale, ``fused.bn_value_sums``)
materialises an int64 tensor per element and scatters on one thread; these
loops read the int8 error and the int32 value index once per pass and write
int8.  Same bits: the tables are the same, every sum is an exact integer and
the rounding is ``numerics.rescale``'s for the value-only modes.  Built and
loaded like the AVX2 GEMM (``cpu_gemm.load_library``); ``available()`` is
False where it cannot be, and batch norm then takes the PyTorch path.
Pinned against the PyTorch path in ``tests/test_norm.py``.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch import Tensor

from .cpu_gemm import load_library

__all__ = ["MODES", "SOURCE", "available", "error_max", "error_round", "value_sums"]

SOURCE = Path(__file__).with_name("csrc").joinpath("bn_tables.c")  # (joinpath: the audit scan refuses "/")
#: Rounding modes the C loop implements (value-only: no random draws), by their code in the C source.
MODES = {"nearest": 0, "pseudo_stochastic": 1, "truncate": 2}

_P, _L, _I = ctypes.c_void_p, ctypes.c_long, ctypes.c_int


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    lib = load_library(SOURCE)
    if lib is None:
        return None
    lib.niti_bn_error_max.restype = ctypes.c_int64
    lib.niti_bn_error_max.argtypes = [_P, _P, _P, _P, _L, _L, _I]
    lib.niti_bn_error_round.restype = None
    lib.niti_bn_error_round.argtypes = [_P, _P, _P, _P, _L, _L, _I, _I, ctypes.c_int64, _P, _I]
    lib.niti_bn_value_sums.restype = ctypes.c_int
    lib.niti_bn_value_sums.argtypes = [_P, _P, _L, _L, _P, _I]
    return lib


def available(*tensors: Tensor) -> bool:
    """Whether the C loops can run on these tensors (all on the CPU, the library built)."""
    return all(t.device.type == "cpu" for t in tensors) and _lib() is not None


def _plain(t: Tensor, dtype: torch.dtype) -> Tensor:
    if t.dtype != dtype:
        raise ValueError(f"expected {dtype}, got {t.dtype}")
    return t.contiguous()


def error_max(g: Tensor, index: Tensor, table: Tensor, g_table: Tensor) -> int:
    """``max |table[index] + g_table[g's index]|`` over the elements of int8 ``g`` (rows, C) (a Python int)."""
    lib = _lib()
    assert lib is not None
    g, index = _plain(g, torch.int8), _plain(index, torch.int32)
    table, g_table = _plain(table, torch.int64), _plain(g_table, torch.int64)
    rows, ch = g.shape
    return int(lib.niti_bn_error_max(g.data_ptr(), index.data_ptr(), table.data_ptr(), g_table.data_ptr(), rows, ch,
                                     torch.get_num_threads()))


def error_round(g: Tensor, index: Tensor, table: Tensor, g_table: Tensor, shift: int, mode: str,
                limit: int = 127) -> Tensor:
    """int8 ``clip(round_shift(table[index] + g_table[g's index], shift, mode), ±limit)``, ``mode`` in ``MODES``."""
    lib = _lib()
    assert lib is not None
    g, index = _plain(g, torch.int8), _plain(index, torch.int32)
    table, g_table = _plain(table, torch.int64), _plain(g_table, torch.int64)
    rows, ch = g.shape
    out = torch.empty((rows, ch), dtype=torch.int8)
    lib.niti_bn_error_round(g.data_ptr(), index.data_ptr(), table.data_ptr(), g_table.data_ptr(), rows, ch, shift,
                            MODES[mode], limit, out.data_ptr(), torch.get_num_threads())
    return out


def value_sums(index: Tensor, g: Tensor | None, bins: int) -> Tensor | None:
    """int64 ``(bins,)``: per index the sum of ``g`` (int8, ``index``'s shape), or the count when ``g`` is None;
    None when scratch memory ran out (the caller takes the PyTorch path)."""
    lib = _lib()
    assert lib is not None
    index = _plain(index, torch.int32)
    if g is not None:
        g = _plain(g, torch.int8)
    out = torch.empty(bins, dtype=torch.int64)
    failed = lib.niti_bn_value_sums(None if g is None else g.data_ptr(), index.data_ptr(), index.numel(), bins,
                                    out.data_ptr(), torch.get_num_threads())
    return None if failed else out
