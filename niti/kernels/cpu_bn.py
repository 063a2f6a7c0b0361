"""Batch norm's per-element table passes in C for the CPU (``csrc/bn_tables.c``), called through ctypes.

The PyTorch path (``fused.bn_error`` then a rescale, ``fused.bn_value_sums``,
gathers) needs an int32 index per element, materialises an int64 tensor per
element and scatters on one thread; these loops read the int8 input and error
once per pass (the table entry is computed in the loop) and write int8.  Same
bits: the tables are the same, every sum is an exact integer and the rounding
is ``numerics.rescale``'s for the value-only modes.  Built and
loaded like the AVX2 GEMM (``cpu_gemm.load_library``); ``available()`` is
False where it cannot be, and batch norm then takes the PyTorch path.
Pinned against the PyTorch path in ``tests/test_norm.py``.
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from ..counter_bits import MAX_BITS, DrawKeys
from .cpu_gemm import INT, LONG, PTR, bind_library, csrc

__all__ = ["MODES", "SOURCE", "available", "error_max", "error_round", "error_round_signs", "gather", "value_ranges",
           "value_sums"]

SOURCE = csrc("bn_tables.c")
#: Rounding modes the C loop implements, by their code in the C source (``stochastic``: its counter-based words
#: hashed in the loop from the draw's keys).
MODES = {"nearest": 0, "pseudo_stochastic": 1, "truncate": 2, "stochastic": 4}


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    return bind_library(SOURCE, {
        "niti_bn_range_max": (ctypes.c_int64, [PTR, PTR, PTR, PTR, LONG, LONG]),
        "niti_bn_error_round": (None, [PTR, PTR, PTR, PTR, LONG, LONG, INT, INT, ctypes.c_int64, PTR, LONG, PTR,
                                        INT]),
        "niti_bn_error_round32": (ctypes.c_int, [PTR, PTR, PTR, PTR, LONG, LONG, INT, INT, ctypes.c_int64, PTR,
                                                  LONG, PTR, INT]),
        "niti_bn_error_round32_signs": (ctypes.c_int, [PTR, PTR, PTR, PTR, PTR, PTR, LONG, LONG, INT, INT,
                                                        ctypes.c_int64, PTR, LONG, PTR, INT]),
        "niti_bn_value_sums": (ctypes.c_int, [PTR, PTR, LONG, LONG, PTR, PTR, PTR, PTR, PTR, INT]),
        "niti_bn_gather_int8": (None, [PTR, PTR, LONG, LONG, PTR, INT]),
    })


def available(*tensors: Tensor) -> bool:
    """Whether the C loops can run on these tensors (all on the CPU, the library built)."""
    return all(t.device.type == "cpu" for t in tensors) and _lib() is not None


def _plain(t: Tensor, dtype: torch.dtype) -> Tensor:
    if t.dtype != dtype:
        raise ValueError(f"expected {dtype}, got {t.dtype}")
    return t.contiguous()


def _library() -> ctypes.CDLL:
    lib = _lib()
    if lib is None:
        raise RuntimeError("batch norm's C loops are not available here (check cpu_bn.available first)")
    return lib


def error_max(table: Tensor, mult: Tensor, lo: Tensor, hi: Tensor) -> int:
    """``max |table[x's entry] + mult[c] · g|`` over the elements, from ``value_ranges``' smallest and largest ``g``
    per entry: for one entry ``|t + m·g|`` is convex in ``g``, so its largest value over the entry's elements is at
    one of the two, and entries no element has (``lo > hi``) count 0.  The max over every element without a pass
    over them (a Python int).  ``table``, ``lo`` and ``hi`` are (256, C) (an entry per input value) or (3, C) (per
    sign class, with ``value_ranges``' thresholds)."""
    table, mult = _plain(table, torch.int64), _plain(mult, torch.int64)
    lo, hi = _plain(lo, torch.int8), _plain(hi, torch.int8)
    if lo.shape != table.shape or hi.shape != table.shape or mult.shape != table.shape[1:]:
        raise ValueError(f"lo and hi must have the table's shape {tuple(table.shape)} and mult its channels; got "
                         f"{tuple(lo.shape)}, {tuple(hi.shape)}, {tuple(mult.shape)}")
    return int(_library().niti_bn_range_max(table.data_ptr(), mult.data_ptr(), lo.data_ptr(), hi.data_ptr(),
                                            table.shape[0], table.shape[1]))


def _draw(mode: str, shift: int, keys: DrawKeys | None, count: int) -> tuple[int, ctypes.Array | None]:
    """The C loops' ``start`` and key words for a rounding of ``count`` elements (0 and None unless stochastic)."""
    if mode != "stochastic" or shift == 0:
        return 0, None
    if keys is None or not 0 < shift <= MAX_BITS:
        raise ValueError(f"stochastic rounding needs the draw's keys and a shift in 1..{MAX_BITS}, got {keys}, "
                         f"{shift}")
    if not 0 <= keys.start <= keys.start + count <= 1 << 32:
        raise ValueError(f"a draw covers element indices [0, 2**32); asked for start {keys.start}")
    return keys.start, (ctypes.c_uint32 * 4)(keys.k1, keys.k2, keys.hi1, keys.hi2)


def error_round(g: Tensor, x: Tensor, table: Tensor, mult: Tensor, shift: int, mode: str,
                limit: int = 127, keys: DrawKeys | None = None) -> Tensor:
    """int8 ``clip(round_shift(table[x's entry] + mult[c] · g, shift, mode), ±limit)`` (``mult``: int64 (C,)),
    ``mode`` in ``MODES``.  ``stochastic`` with ``shift > 0`` needs the draw's ``keys`` (``Runtime.counter_keys``): element
    ``i`` (row-major) rounds with the low ``shift`` bits of the draw's words of index ``keys.start + i``, the bits
    ``counter_bits.uniform_bits`` gives ``numerics.rescale`` for that draw."""
    g, x = _plain(g, torch.int8), _plain(x, torch.int8)
    table, mult = _plain(table, torch.int64), _plain(mult, torch.int64)
    rows, ch = g.shape
    start, words = _draw(mode, shift, keys, rows * ch)
    out = torch.empty((rows, ch), dtype=torch.int8)
    args = (g.data_ptr(), x.data_ptr(), table.data_ptr(), mult.data_ptr(), rows, ch, shift, MODES[mode], limit,
            out.data_ptr(), start, words, torch.get_num_threads())
    # Batch norm's own operands (multipliers k · 2**24, shifts 24-49) round in 32-bit lanes; the C function checks
    # that itself (no read of a tensor here) and declines anything else, which the 64-bit loop then rounds.
    if _library().niti_bn_error_round32(*args):
        _library().niti_bn_error_round(*args)
    return out


def error_round_signs(g: Tensor, x: Tensor, rows3: Tensor, above: Tensor, below: Tensor, mult: Tensor, shift: int,
                      mode: str, limit: int = 127, keys: DrawKeys | None = None) -> Tensor | None:
    """``error_round`` with the table batch norm's backward has: an entry that depends on the value ``x`` only
    through a sign (docs/numerics.md §13), given as ``rows3`` (int64 (3, C): the entries of sign −1, 0, +1) and
    per channel ``above`` and ``below`` (int32 (C,): the sign is +1 where ``x > above``, −1 where ``x < below``).
    The 32-bit loop then selects each element's entry from its channel's three instead of gathering it (ResNet-20's
    16-channel layers' real operands, 2**21 elements, stochastic with shift 38-39, one thread: 4.2 -> 3.2 ms, nearest
    2.8 -> 2.1 ms; ResNet-20's 21 layers 55 -> 42 ms a step, 28 -> 21 ms on 2 threads); None where that loop
    declines (the caller takes ``error_round`` with the full table)."""
    g, x = _plain(g, torch.int8), _plain(x, torch.int8)
    rows3, mult = _plain(rows3, torch.int64), _plain(mult, torch.int64)
    above, below = _plain(above, torch.int32), _plain(below, torch.int32)
    rows, ch = g.shape
    if rows3.shape != (3, ch) or above.shape != (ch,) or below.shape != (ch,) or mult.shape != (ch,):
        raise ValueError(f"rows3 must be (3, {ch}), above, below and mult ({ch},); got {tuple(rows3.shape)}, "
                         f"{tuple(above.shape)}, {tuple(below.shape)}, {tuple(mult.shape)}")
    start, words = _draw(mode, shift, keys, rows * ch)
    out = torch.empty((rows, ch), dtype=torch.int8)
    declined = _library().niti_bn_error_round32_signs(
        g.data_ptr(), x.data_ptr(), rows3.data_ptr(), above.data_ptr(), below.data_ptr(), mult.data_ptr(), rows, ch,
        shift, MODES[mode], limit, out.data_ptr(), start, words, torch.get_num_threads())
    return None if declined else out


def value_sums(x: Tensor, g: Tensor | None) -> Tensor | None:
    """int64 (256, C): per (input value, channel) of int8 ``x`` (rows, C) the sum of ``g`` (int8, ``x``'s shape), or
    the count when ``g`` is None; None when scratch memory ran out (the caller takes the PyTorch path)."""
    out = _value_pass(x, g, ranges=False)
    return None if out is None else out[0]


def value_ranges(x: Tensor, g: Tensor, above: Tensor | None = None,
                 below: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor] | None:
    """``value_sums(x, g)`` and, from the same pass, int8 ``lo`` and ``hi``: the smallest and largest ``g`` per
    (input value, channel), (256, C), or given int32 (C,) thresholds ``above`` and ``below`` per (sign class,
    channel), (3, C): rows for ``x < below``, neither, ``x > above`` (batch norm's backward, whose error term depends
    on the value only through that sign; the pass then keeps one sum per element instead of a sum, a minimum and a
    maximum).  ``lo > hi`` where no element has the entry; None when scratch memory ran out."""
    if (above is None) != (below is None):
        raise ValueError("above and below must be given together")
    return _value_pass(x, g, ranges=True, above=above, below=below)


def _value_pass(x: Tensor, g: Tensor | None, ranges: bool, above: Tensor | None = None,
                below: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None] | None:
    x = _plain(x, torch.int8)
    if g is not None:
        g = _plain(g, torch.int8)
    rows, ch = x.shape
    if above is not None and below is not None:
        above, below = _plain(above, torch.int32), _plain(below, torch.int32)
        if above.shape != (ch,) or below.shape != (ch,):
            raise ValueError(f"above and below must be ({ch},), got {tuple(above.shape)}, {tuple(below.shape)}")
    out = torch.empty((256, ch), dtype=torch.int64)
    range_rows = 256 if above is None else 3
    lo, hi = (torch.empty((range_rows, ch), dtype=torch.int8) for _ in range(2)) if ranges else (None, None)
    failed = _library().niti_bn_value_sums(None if g is None else g.data_ptr(), x.data_ptr(), rows, ch,
                                           out.data_ptr(), None if lo is None else lo.data_ptr(),
                                           None if hi is None else hi.data_ptr(),
                                           None if above is None else above.data_ptr(),
                                           None if below is None else below.data_ptr(), torch.get_num_threads())
    return None if failed else (out, lo, hi)


def gather(table: Tensor, x: Tensor) -> Tensor:
    """int8 ``table[x's entry]`` for an int8 (256, C) ``table`` and int8 ``x`` (rows, C)."""
    table, x = _plain(table, torch.int8), _plain(x, torch.int8)
    rows, ch = x.shape
    out = torch.empty((rows, ch), dtype=torch.int8)
    _library().niti_bn_gather_int8(table.data_ptr(), x.data_ptr(), rows, ch, out.data_ptr(), torch.get_num_threads())
    return out
