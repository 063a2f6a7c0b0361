"""Counter-based random bits (docs/numerics.md §14): a hash of (seed, stream, draw, element index).

Stochastic rounding and dropout need random integers.  A ``torch.Generator``
lives on one device, has state that must be copied between devices, and its
bits depend on the device it runs on.  Here a random word is instead a pure
function of where it is used: the seed, the purpose (rounding or dropout), the
number of the draw (a host-side counter the runtime keeps) and the element's
index in the *global* batch.  Any device computes the same bits with integer
tensor ops on the tensor's own device, nothing is transferred, and a
data-parallel rank computes its slice without drawing the whole batch.

The mixing function is a 32-bit integer hash with two multiply-xorshift rounds
(the ``lowbias32`` constants of C. Wellons' hash search), applied twice with
two keys.  Every operation runs on int64 values below ``2**49``: the 32-bit
products are formed from 16-bit halves, so nothing wraps and every device
gives the same bits.  ``word_reference`` is the pure-Python definition the
tensor code is tested against.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["MAX_ELEMENTS", "MAX_BITS", "STREAMS", "DrawKeys", "draw_keys", "word_reference", "words", "uniform_bits"]

_MASK32 = (1 << 32) - 1
_MUL1, _MUL2 = 0x7FEB352D, 0x846CA68B
#: Folded into the first key so that all-zero inputs do not give a zero key.
_KEY_BASIS = 0x9E3779B9
#: A tensor draw covers at most this many elements (indices are 32-bit).
MAX_ELEMENTS = 1 << 32
#: At most this many random bits per element (two 32-bit words, the top ones dropped).
MAX_BITS = 62
#: The purposes that draw bits, each its own stream: draws in one never shift the other.
STREAMS = {"rounding": 1, "dropout": 2}


def _mix_int(x: int) -> int:
    """``lowbias32`` on a Python int in ``[0, 2**32)``."""
    x ^= x >> 16
    x = (x * _MUL1) & _MASK32
    x ^= x >> 15
    x = (x * _MUL2) & _MASK32
    return x ^ (x >> 16)


def _fold(words_: list[int]) -> int:
    h = _KEY_BASIS
    for w in words_:
        h = _mix_int(h ^ w)
    return h


def draw_keys(seed: int, stream: str, draw: int, part: int = 0) -> tuple[int, int]:
    """The two 32-bit keys of one draw: a fold of the seed's and the draw number's 32-bit words."""
    if not 0 <= seed < 1 << 64 or not 0 <= draw < 1 << 64:
        raise ValueError(f"seed and draw must be in [0, 2**64), got {seed}, {draw}")
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {tuple(STREAMS)}, got {stream!r}")
    split = [seed & _MASK32, seed >> 32, STREAMS[stream],
             draw & _MASK32, draw >> 32, part]
    k1 = _fold(split)
    return k1, _mix_int(k1 ^ _KEY_BASIS)


class DrawKeys(NamedTuple):
    """What a C loop needs to hash a draw itself: the keys of its words (part 0, and part 1 for bits 32..61) and
    the global index of the first element it rounds."""

    k1: int
    k2: int
    hi1: int
    hi2: int
    start: int

    @classmethod
    def of(cls, seed: int, stream: str, draw: int, start: int) -> "DrawKeys":
        return cls(*draw_keys(seed, stream, draw), *draw_keys(seed, stream, draw, part=1), start)


def word_reference(seed: int, stream: str, draw: int, index: int, part: int = 0) -> int:
    """The 32-bit word of element ``index`` in a draw: the pure-Python definition (tests, hardware models)."""
    k1, k2 = draw_keys(seed, stream, draw, part)
    return _mix_int(_mix_int(index ^ k1) ^ k2)


def _mul32(x: Tensor, c: int) -> Tensor:
    """``x · c mod 2**32`` for int64 ``x`` in ``[0, 2**32)``: two 16-bit partial products, each below 2**48."""
    hi = (x * (c >> 16)) & 0xFFFF
    return (x * (c & 0xFFFF) + (hi << 16)) & _MASK32


def _mix(x: Tensor) -> Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, _MUL1)
    x = x ^ (x >> 15)
    x = _mul32(x, _MUL2)
    return x ^ (x >> 16)


def words(seed: int, stream: str, draw: int, start: int, count: int, device: torch.device | str = "cpu",
          part: int = 0) -> Tensor:
    """The 32-bit words (int64) of elements ``start .. start + count - 1`` of a draw, on ``device``."""
    if start < 0 or count < 0 or start + count > MAX_ELEMENTS:
        raise ValueError(f"a draw covers element indices [0, 2**32); asked for [{start}, {start + count})")
    k1, k2 = draw_keys(seed, stream, draw, part)
    if torch.device(device).type == "cpu" and _c_words() is not None:  # the same hash in one C pass
        return _c_words().words(start, count, k1, k2)
    index = torch.arange(start, start + count, dtype=torch.int64, device=device)
    return _mix(_mix(index ^ k1) ^ k2)


def _c_words():  # noqa: ANN202
    """``niti.kernels.cpu_counter`` where its C loop is built, else None (imported late: kernels import runtime)."""
    from .kernels import cpu_counter

    return cpu_counter if cpu_counter.available() else None


def uniform_bits(seed: int, stream: str, draw: int, bits: int, shape: tuple[int, ...], *, start: int = 0,
                 device: torch.device | str = "cpu") -> Tensor:
    """Int64 integers uniform in ``[0, 2**bits)`` for a tensor of ``shape`` whose first element has global
    index ``start`` (row-major): the low ``bits`` bits of one word, or of two words (the second's part 1)."""
    if not 0 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [0, {MAX_BITS}], got {bits}")
    count = 1
    for n in shape:
        count *= n
    w = words(seed, stream, draw, start, count, device)
    if bits > 32:
        w = w | ((words(seed, stream, draw, start, count, device, part=1) & ((1 << (bits - 32)) - 1)) << 32)
    elif bits < 32:
        w = w & ((1 << bits) - 1)
    return w.reshape(shape)
