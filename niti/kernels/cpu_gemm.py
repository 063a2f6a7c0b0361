"""The AVX2 int8 GEMM for CPUs without VNNI: C source compiled once per machine, called through ctypes.

PyTorch has no fast exact integer product on such CPUs: ``_int_mm`` runs a
reference loop and an int32 ``torch.mm`` a generic one (2-7 G multiply-adds/s
on a 2-core EPYC).  ``csrc/int8_gemm_avx2.c`` widens the int8 operands to
int16 and multiplies them with ``vpmaddwd``, accumulating in int32: the same
exact sums, integer instructions only.  It is compiled with the system C
compiler (``$CC``, else ``cc``) into ``$XDG_CACHE_HOME/niti/kernels`` the first
time it is needed; where there is no compiler, no AVX2 or the build fails,
``load()`` returns None and niti uses ``torch.mm`` (the same bits).
Correctness is pinned against an int64 reference (``tests/test_kernels.py``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

__all__ = ["INT", "LONG", "PTR", "SOURCE", "bind_library", "cpu_has_avx2", "csrc", "gemm", "load", "load_library"]

#: ctypes argument types of the C loops: pointers (``data_ptr()``), sizes, small ints.
PTR, LONG, INT = ctypes.c_void_p, ctypes.c_long, ctypes.c_int


def csrc(name: str) -> Path:
    """A C source of ``niti/kernels/csrc`` (joinpath: the audit scan refuses "/" in paths)."""
    return Path(__file__).with_name("csrc").joinpath(name)


SOURCE = csrc("int8_gemm_avx2.c")
_FLAGS = ["-O3", "-mavx2", "-fopenmp", "-shared", "-fPIC"]


def cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return " avx2" in f.read()
    except OSError:
        return False


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home().joinpath(".cache")
    return Path(base).joinpath("niti", "kernels")


def _build(compiler: str, source_path: Path) -> Path:
    """The shared library for this source and these flags (compiled once; an atomic rename publishes it)."""
    source = source_path.read_bytes()
    headers = b"".join(h.read_bytes() for h in sorted(source_path.parent.glob("*.h")))  # a header change rebuilds
    key = hashlib.sha256(source + headers + " ".join([compiler, *_FLAGS]).encode()).hexdigest()[:16]
    target = _cache_dir().joinpath(f"{source_path.stem}-{key}.so")
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp).joinpath(target.name)
        subprocess.run([compiler, *_FLAGS, "-o", str(built), str(source_path)], check=True, capture_output=True,
                       timeout=120)
        os.replace(built, target)
    return target


@functools.lru_cache(maxsize=None)
def load_library(source_path: Path) -> ctypes.CDLL | None:
    """A C source of ``csrc`` compiled for this machine and loaded, or None (no AVX2, no compiler, build error)."""
    if not cpu_has_avx2():
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None
    try:
        return ctypes.CDLL(str(_build(compiler, source_path)))
    except (OSError, subprocess.SubprocessError):
        return None


def bind_library(source_path: Path, signatures: dict[str, tuple[object, list]]) -> ctypes.CDLL | None:
    """``load_library(source_path)`` with each function's ``(restype, argtypes)`` set, or None."""
    lib = load_library(source_path)
    if lib is not None:
        for name, (restype, argtypes) in signatures.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
    return lib


def allow_avx512(lib: ctypes.CDLL | None, flag: str, allowed: bool) -> None:
    """Let a library's loops with an AVX-512 build (csrc/isa.h) use it where the CPU has it (the default), or keep
    them on AVX2: ``flag`` is the library's ``int`` that records the choice.  The bits are the same either way; the
    tests pin both builds."""
    if lib is not None:
        ctypes.c_int.in_dll(lib, flag).value = -1 if allowed else 0


@functools.lru_cache(maxsize=1)
def load() -> Callable | None:
    """The compiled ``niti_int8_gemm`` function, or None where it cannot be had (no AVX2, no compiler, build error)."""
    lib = load_library(SOURCE)
    if lib is None:
        return None
    fn = lib.niti_int8_gemm
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 7 + [ctypes.c_int]
    return fn


def gemm(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """``a @ b`` for CPU int8 ``a`` (M, K) and ``b`` (K, N) with non-negative strides, int32 (M, N), exact while
    K · 128² < 2**31 (the caller splits longer K).  ``out``: a contiguous int32 (M, N) tensor to write into."""
    fn = load()
    if fn is None:
        raise RuntimeError("the AVX2 int8 GEMM is not available on this machine")
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = torch.empty((m, n), dtype=torch.int32)
    if fn(a.data_ptr(), b.data_ptr(), out.data_ptr(), m, n, k, *a.stride(), *b.stride(), torch.get_num_threads()):
        raise MemoryError("int8 GEMM: scratch allocation failed")
    return out
