"""Keep freed memory in the process heap, so that a training step does not fault its pages in again every time.

glibc returns large freed blocks to the kernel: a block above the mmap threshold (dynamic, at most 32 MiB) is
unmapped on ``free``, and the heap's free top is trimmed once it exceeds the trim threshold.  A training step
allocates and frees the same large tensors every step, so the next step maps them again and the kernel zeroes
every page on first touch.  Measured (``results/heap-faults/``, one thread): LeNet batch 256 2,289 page faults a
step with glibc's defaults, 90 kept; VGG-small-7 batch 128 15,444 and 512; the integer model's peak memory the same.
Float PyTorch gains as much (and more faults: 212,975 a VGG step, 0 kept, but its peak grows by 300 MiB), so
``niti bench`` applies one policy to both sides (``--heap``; ``results/bench-xeon-amx-v4/heap-keep/``).

Raising the two thresholds keeps freed blocks for reuse instead.  This only changes where glibc takes memory from;
no value computed changes.  Set ``NITI_HEAP=release`` to keep glibc's defaults.  Elsewhere than glibc (macOS,
musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["KEEP_THRESHOLD", "keep_freed_memory", "child_env"]

KEEP_THRESHOLD = 1 << 30
"""Blocks up to 1 GiB come from the heap and stay there when freed; the heap's free top is never trimmed below it."""

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_applied = False


def _opted_out() -> bool:
    value = os.environ.get("NITI_HEAP", "keep").strip().lower()
    if value not in ("keep", "release"):
        raise ValueError(f"NITI_HEAP must be 'keep' or 'release', got {value!r}")
    return value == "release"


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to ``KEEP_THRESHOLD`` bytes in the heap; True where it now does.

    Idempotent.  Called by ``niti.train.fit`` (and so ``niti train``); a script that calls ``train_step``
    itself may call it once at start.  False where the C library is not glibc or ``NITI_HEAP=release``.
    """
    global _applied
    if _applied:
        return True
    if _opted_out():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: libc's where it has mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # Setting either by hand turns glibc's dynamic thresholds off, so both are set.
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, KEEP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_THRESHOLD))
    return _applied


def child_env(policy: str) -> dict[str, str]:
    """Environment variables that give a fresh process (any program on glibc) the heap ``policy``.

    ``"keep"``: glibc's ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` at ``KEEP_THRESHOLD`` (what
    ``keep_freed_memory`` sets in-process) and ``NITI_HEAP=keep``; ``"release"``: ``NITI_HEAP=release`` and neither
    glibc variable, i.e. glibc's defaults.  The caller removes inherited ``MALLOC_*`` variables for "release".
    """
    if policy == "keep":
        return {"MALLOC_MMAP_THRESHOLD_": str(KEEP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(KEEP_THRESHOLD),
                "NITI_HEAP": "keep"}
    if policy == "release":
        return {"NITI_HEAP": "release"}
    raise ValueError(f"heap policy must be 'keep' or 'release', got {policy!r}")
