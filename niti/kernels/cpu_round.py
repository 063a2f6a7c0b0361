"""The rescale's int32 → int8 rounding pass in C for the CPU (``csrc/round_clip.c``), called through ctypes.

``fused.round_clip`` hands it the common case: an int32 accumulator (a GEMM
output, a summed error) narrowed to int8 with a value-only rounding mode
(``nearest``, ``pseudo_stochastic``, ``truncate``), and ``stochastic`` with
counter-based draws hashed inside the loop (``round_clip_stochastic``).  One
pass that reads 4 bytes and writes 1 per element, vectorised; the compiled chain it replaces
is the reference and the fallback, and ``numerics.round_shift`` the
definition it is tested against (``tests/test_kernels.py``).  Built and loaded
like the AVX2 GEMM (``cpu_gemm.load_library``).
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from .cpu_gemm import INT, LONG, PTR, allow_avx512, bind_library, csrc

__all__ = ["MODES", "SOURCE", "applies", "applies_stochastic", "round_clip", "round_clip_stochastic", "set_avx512"]

SOURCE = csrc("round_clip.c")
#: Rounding modes the C loop implements (value-only: no random draws), by their code in the C source.
MODES = {"nearest": 0, "pseudo_stochastic": 1, "truncate": 2}


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    return bind_library(SOURCE, {
        "niti_round_clip_i32_i8": (None, [PTR, LONG, INT, INT, ctypes.c_int32, PTR, INT]),
        "niti_round_clip_stochastic_i32_i8": (None, [PTR, LONG, INT, ctypes.c_int32, LONG, ctypes.c_uint32,
                                                     ctypes.c_uint32, PTR, INT]),
    })


def set_avx512(allowed: bool) -> None:
    """Both rounding loops on their AVX-512 build where the CPU has it (the default), or on AVX2 (``allow_avx512``)."""
    allow_avx512(_lib(), "niti_round_avx512", allowed)


def applies(t: Tensor, shift: int, mode: str, target_bits: int, out_dtype: torch.dtype) -> bool:
    """Whether the C pass computes this rescale: int32 on the CPU to int8 (``target_bits`` ≤ 7), a value-only
    mode, and a bit width ``shift + target_bits`` ≤ 31 (so ``|t| < 2**31``: no ``-2**31``), library built."""
    return (t.dtype == torch.int32 and out_dtype == torch.int8 and t.device.type == "cpu" and mode in MODES
            and 1 <= target_bits <= 7 and 0 <= shift and shift + target_bits <= 31 and _lib() is not None)


def round_clip(t: Tensor, shift: int, mode: str, target_bits: int) -> Tensor:
    """int8 ``clip(round_shift(t, shift, mode), ±(2**target_bits - 1))`` of int32 ``t`` with ``|t| < 2**31``."""
    lib = _lib()
    if lib is None:
        raise RuntimeError("the C rounding pass is not available here (check cpu_round.applies first)")
    if t.dtype != torch.int32 or mode not in MODES or not 0 <= shift <= 31 - target_bits:
        raise ValueError(f"cpu_round.round_clip needs int32 input, a mode in {tuple(MODES)} and shift + "
                         f"target_bits <= 31; got {t.dtype}, {mode!r}, shift {shift}, target_bits {target_bits}")
    x = t.contiguous()
    out = torch.empty(t.shape, dtype=torch.int8)
    lib.niti_round_clip_i32_i8(x.data_ptr(), x.numel(), shift, MODES[mode], (1 << target_bits) - 1, out.data_ptr(),
                               torch.get_num_threads())
    return out


def applies_stochastic(t: Tensor, shift: int, target_bits: int, out_dtype: torch.dtype) -> bool:
    """Whether ``round_clip_stochastic`` computes this rescale: int32 on the CPU to int8, ``1 <= shift`` and
    ``shift + target_bits <= 31`` (the draw is one word's low bits), library built."""
    return (t.dtype == torch.int32 and out_dtype == torch.int8 and t.device.type == "cpu"
            and 1 <= target_bits <= 7 and 1 <= shift and shift + target_bits <= 31 and _lib() is not None)


def round_clip_stochastic(t: Tensor, shift: int, target_bits: int, start: int, k1: int, k2: int) -> Tensor:
    """int8 stochastic ``clip(round_shift(t, shift), ±(2**target_bits - 1))`` of int32 ``t``, element ``i``'s draw
    the low ``shift`` bits of the counter word of index ``start + i`` under keys ``k1``, ``k2``
    (``counter_bits.words``): the bits ``numerics.rescale`` gives with that draw as its noise."""
    lib = _lib()
    if lib is None:
        raise RuntimeError("the C rounding pass is not available here (check cpu_round.applies_stochastic first)")
    if t.dtype != torch.int32 or not 1 <= shift <= 31 - target_bits or not 0 <= start <= start + t.numel() <= 1 << 32:
        raise ValueError(f"cpu_round.round_clip_stochastic needs int32 input, 1 <= shift <= 31 - target_bits and "
                         f"element indices below 2**32; got {t.dtype}, shift {shift}, target_bits {target_bits}, "
                         f"start {start}")
    x = t.contiguous()
    out = torch.empty(t.shape, dtype=torch.int8)
    lib.niti_round_clip_stochastic_i32_i8(x.data_ptr(), x.numel(), shift, (1 << target_bits) - 1, start, k1, k2,
                                          out.data_ptr(), torch.get_num_threads())
    return out
