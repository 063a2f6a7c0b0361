"""Counter-based random words in C for the CPU (``csrc/counter_words.c``), called through ctypes.

``counter_bits.words`` computes each word with about twenty int64 tensor passes (the 32-bit products from 16-bit
halves, so that every device gives the same bits); on the CPU that is ~0.2 µs per element, seconds per step once
every error tensor is rounded stochastically. The C loop computes the same hash in uint32 arithmetic, one pass.
``counter_bits.word_reference`` is the definition it is tested against (``tests/test_counter_bits.py``). Built and
loaded like the AVX2 GEMM (``cpu_gemm.load_library``); where it cannot be built the tensor code runs.
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from .cpu_gemm import INT, LONG, PTR, bind_library, csrc

__all__ = ["SOURCE", "available", "words"]

SOURCE = csrc("counter_words.c")
_U32 = ctypes.c_uint32


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    return bind_library(SOURCE, {"niti_counter_words": (None, [LONG, LONG, _U32, _U32, _U32, PTR, INT])})


def available() -> bool:
    """Whether the C loop is built and loaded on this machine."""
    return _lib() is not None


def words(start: int, count: int, k1: int, k2: int, bits: int = 32) -> Tensor:
    """int64 words ``mix(mix(i ^ k1) ^ k2) mod 2**bits`` for ``i`` in ``start .. start + count - 1`` (CPU)."""
    lib = _lib()
    if lib is None:
        raise RuntimeError("the C counter-word loop is not available here (check cpu_counter.available first)")
    if start < 0 or count < 0 or start + count > 1 << 32 or not 0 <= bits <= 32:
        raise ValueError(f"indices must lie in [0, 2**32) and bits in 0..32; got [{start}, {start + count}), {bits}")
    out = torch.empty(count, dtype=torch.int64)
    lib.niti_counter_words(start, count, k1, k2, (1 << bits) - 1, out.data_ptr(), torch.get_num_threads())
    return out
