"""The aligned sum of two int8 tensors in C for the CPU (``csrc/add_shifted.c``), called through ctypes.

A residual ``Add`` and the backward's sum of two errors at a branch point are
``numerics.aligned_sum`` of two int8 terms: when the exponents differ by at
most 22 that sum is exact, at the smaller exponent, in int32.  PyTorch forms it
in five passes (two widenings, two shifts, an add); ``AlignedPair.total`` is one.
Anything else (a larger gap, other dtypes, another device) makes ``pair`` return
None and the caller takes ``aligned_sum``, the reference it is pinned against in
``tests/test_kernels.py``.

Both sums are rescaled to int8 right after they are formed, so ``pair`` hands the caller an
``AlignedPair``: the sum not yet formed.  ``Runtime.rescale`` takes it as it
takes a tensor and, where the C passes apply, narrows it without an int32
tensor (``pair_max_abs`` for the bit width, ``pair_round_clip`` for the
rounding: each reads the two int8 inputs once); elsewhere ``total()`` forms the
sum and the tensor path runs.  The same bits either way.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from ..counter_bits import DrawKeys
from .cpu_gemm import INT, LONG, PTR, bind_library, csrc

__all__ = ["MAX_GAP", "MODES", "SOURCE", "AlignedPair", "pair", "pair_max_abs", "pair_round_clip"]

SOURCE = csrc("add_shifted.c")
#: Exponent gaps up to this keep ``aligned_sum`` of two int8 terms exact at the smaller exponent (30 - 7 - 1).
MAX_GAP = 22


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    return bind_library(SOURCE, {
        "niti_add_shifted_i8": (None, [PTR, INT, PTR, INT, LONG, PTR, INT]),
        "niti_add_shifted_max_i8": (ctypes.c_int32, [PTR, INT, PTR, INT, LONG, INT]),
        "niti_add_shifted_round_i8": (None, [PTR, INT, PTR, INT, LONG, INT, INT, ctypes.c_int32, LONG,
                                             ctypes.c_uint32, ctypes.c_uint32, PTR, INT]),
    })


#: Rounding modes ``pair_round_clip`` implements, by their code in the C source (``stochastic``: counter words).
MODES = {"nearest": 0, "pseudo_stochastic": 1, "truncate": 2, "stochastic": 4}


@dataclass(frozen=True)
class AlignedPair:
    """``a · 2**sa + b · 2**sb`` for int8 ``a``, ``b`` of one shape on the CPU, ``0 <= sa, sb <= MAX_GAP`` (one of
    them 0): an exact int32 sum (``|sum| <= 2**30``) not yet formed."""

    a: Tensor
    sa: int
    b: Tensor
    sb: int

    @property
    def shape(self) -> torch.Size:
        return self.a.shape

    def total(self) -> Tensor:
        """The int32 sum."""
        out = torch.empty(self.a.shape, dtype=torch.int32)
        _library().niti_add_shifted_i8(self.a.data_ptr(), self.sa, self.b.data_ptr(), self.sb, self.a.numel(),
                                       out.data_ptr(), torch.get_num_threads())
        return out


def _library() -> ctypes.CDLL:
    lib = _lib()
    if lib is None:
        raise RuntimeError("the C aligned sum is not available here (check cpu_add.pair first)")
    return lib


def pair(a: Tensor, ea: int, b: Tensor, eb: int) -> tuple[AlignedPair, int] | None:
    """``aligned_sum([(a, ea, 7), (b, eb, 7)])`` as an ``AlignedPair`` and its exponent (the smaller), for int8
    ``a``, ``b`` of one shape on the CPU with ``|ea - eb| <= MAX_GAP``; None where it does not apply."""
    if (a.dtype != torch.int8 or b.dtype != torch.int8 or a.shape != b.shape or a.device.type != "cpu"
            or b.device.type != "cpu" or abs(ea - eb) > MAX_GAP or _lib() is None):
        return None
    e = min(ea, eb)
    return AlignedPair(a.contiguous(), ea - e, b.contiguous(), eb - e), e


def pair_max_abs(p: AlignedPair) -> int:
    """``max |p.total()|`` (0 for no elements) without forming the sum."""
    return int(_library().niti_add_shifted_max_i8(p.a.data_ptr(), p.sa, p.b.data_ptr(), p.sb, p.a.numel(),
                                                  torch.get_num_threads()))


def pair_round_clip(p: AlignedPair, shift: int, mode: str, target_bits: int, keys: DrawKeys | None = None) -> Tensor:
    """int8 ``clip(round_shift(p.total(), shift, mode), ±(2**target_bits - 1))`` without forming the sum: the bits of
    ``cpu_round.round_clip`` (a value-only ``mode``) or, for ``stochastic`` with ``shift > 0``,
    ``cpu_round.round_clip_stochastic`` with the draw's ``keys`` (``Runtime.counter_keys``)."""
    if mode not in MODES or not 1 <= target_bits <= 7 or not 0 <= shift <= 31 - target_bits:
        raise ValueError(f"pair_round_clip needs a mode in {tuple(MODES)}, 1 <= target_bits <= 7 and shift + "
                         f"target_bits <= 31; got {mode!r}, target_bits {target_bits}, shift {shift}")
    start, k1, k2 = 0, 0, 0
    if mode == "stochastic" and shift > 0:
        if keys is None or not 0 <= keys.start <= keys.start + p.a.numel() <= 1 << 32:
            raise ValueError(f"stochastic rounding needs the draw's keys, its element indices below 2**32; got {keys}")
        start, k1, k2 = keys.start, keys.k1, keys.k2
    out = torch.empty(p.a.shape, dtype=torch.int8)
    _library().niti_add_shifted_round_i8(p.a.data_ptr(), p.sa, p.b.data_ptr(), p.sb, p.a.numel(), shift,
                                         MODES[mode], (1 << target_bits) - 1, start, k1, k2, out.data_ptr(),
                                         torch.get_num_threads())
    return out
