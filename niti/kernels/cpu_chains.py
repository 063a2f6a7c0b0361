"""Fused chains as C loops for the CPU (``csrc/chains.c``), called through ctypes.

``fused.relu_backward``, ``fused.col2im`` and ``fused.sgd_update`` hand their
common cases here: int8 errors, int32 columns, int32/int64 gradients of int8
or int16 weights.  Each function returns None where it does not apply (another
dtype or device, the library not built) and the caller runs the chain (compiled,
or its eager twin), which is the reference these loops are pinned against in
``tests/test_fused.py``.  With these loops a CPU training step compiles nothing,
so a fresh process does not wait for inductor (``benchmarks/first_step.py``).
Built and loaded like the AVX2 GEMM (``cpu_gemm.load_library``).
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from .cpu_gemm import INT, LONG, PTR, allow_avx512, bind_library, csrc

__all__ = ["MODES", "SOURCE", "available", "col2im", "count_at_least", "max_abs", "relu_backward", "set_avx512", "sgd_update"]

SOURCE = csrc("chains.c")
#: Rounding modes of the update's loop, by their code in the C source.
MODES = {"nearest": 0, "pseudo_stochastic": 1, "truncate": 2, "stochastic": 4}
_GRAD = {torch.int32: "i32", torch.int64: "i64"}
_WEIGHT = {torch.int8: "i8", torch.int16: "i16"}


class _SgdArgs(ctypes.Structure):
    """``niti_sgd_args`` of chains.c: the update's settings."""

    _fields_ = [("grad_down", ctypes.c_int), ("g_shift", ctypes.c_int), ("g_limit", ctypes.c_int64),
                ("decay", ctypes.c_int), ("decay_shift", ctypes.c_int), ("mult", ctypes.c_int64),
                ("mult_shift", ctypes.c_int), ("momentum", ctypes.c_int), ("m_shift", ctypes.c_int),
                ("fv", ctypes.c_int), ("w_limit", ctypes.c_int64), ("carry", ctypes.c_int)]


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    sgd = (None, [PTR, PTR, PTR, LONG, ctypes.POINTER(_SgdArgs), INT, PTR, PTR, PTR, PTR, INT, PTR, PTR])
    return bind_library(SOURCE, {
        "niti_relu_backward_i8": (None, [PTR, PTR, LONG, PTR, INT]),
        "niti_col2im_i32": (None, [PTR, LONG, LONG, LONG, INT, INT, LONG, INT, INT, PTR, INT]),
        "niti_count_at_least_i32": (None, [PTR, LONG, PTR, PTR, INT]),
        "niti_max_abs_i32": (ctypes.c_uint32, [PTR, LONG, INT]),
        **{f"niti_sgd_update_{g}_{w}": sgd for g in _GRAD.values() for w in _WEIGHT.values()},
    })


def set_avx512(allowed: bool) -> None:
    """The update's loops on their AVX-512 build where the CPU has it (the default), or on AVX2 (``allow_avx512``)."""
    allow_avx512(_lib(), "niti_chains_avx512", allowed)


def available(*tensors: Tensor) -> bool:
    """Whether the C loops can run on these tensors (all on the CPU, the library built)."""
    return all(t.device.type == "cpu" for t in tensors) and _lib() is not None


def max_abs(t: Tensor) -> int | None:
    """The largest magnitude in a contiguous CPU int32 ``t`` (one pass; 2**31 for -2**31), or None elsewhere."""
    if t.dtype != torch.int32 or not t.is_contiguous() or not available(t):
        return None
    return int(_lib().niti_max_abs_i32(t.data_ptr(), t.numel(), torch.get_num_threads()))


def relu_backward(err: Tensor, y: Tensor) -> Tensor | None:
    """int8 ``err`` where int8 ``y > 0``, else 0; None unless both are int8 of one shape on the CPU."""
    if err.dtype != torch.int8 or y.dtype != torch.int8 or err.shape != y.shape or not available(err, y):
        return None
    err, y = err.contiguous(), y.contiguous()
    out = torch.empty(err.shape, dtype=torch.int8)
    _lib().niti_relu_backward_i8(err.data_ptr(), y.data_ptr(), err.numel(), out.data_ptr(), torch.get_num_threads())
    return out


#: Thresholds one call of the count loop takes.
COUNT_THRESHOLDS = 4
_UINT32_MAX = (1 << 32) - 1


def count_at_least(t: Tensor, thresholds: list[int]) -> list[int] | None:
    """How many of int32 ``t``'s values have a magnitude of at least each threshold (at most ``COUNT_THRESHOLDS``,
    each >= 1); None unless ``t`` is int32 on the CPU."""
    if t.dtype != torch.int32 or not 1 <= len(thresholds) <= COUNT_THRESHOLDS or min(thresholds) < 1 \
            or not available(t):
        return None
    t = t.contiguous()
    padded = [min(th, _UINT32_MAX) for th in thresholds] + [_UINT32_MAX] * (COUNT_THRESHOLDS - len(thresholds))
    limits = torch.tensor(padded, dtype=torch.int64).to(torch.uint32)
    out = torch.zeros(COUNT_THRESHOLDS, dtype=torch.int64)
    _lib().niti_count_at_least_i32(t.data_ptr(), t.numel(), limits.data_ptr(), out.data_ptr(), torch.get_num_threads())
    return out.tolist()[:len(thresholds)]


def col2im(cols: Tensor, kernel: tuple[int, int], padding: tuple[int, int], out: Tensor | None = None) -> Tensor | None:
    """``fused.col2im`` of int32 ``cols`` (n, ho, wo, kh, kw, c) into ``out`` (a new tensor when None; else
    contiguous int32 of the result's shape); None unless ``cols`` is int32 on the CPU with ``kernel``'s taps."""
    n, ho, wo, kh, kw, c = cols.shape
    (ph, pw) = padding
    shape = (n, ho + kh - 1 - 2 * ph, wo + kw - 1 - 2 * pw, c)
    if cols.dtype != torch.int32 or (kh, kw) != tuple(kernel) or min(shape) < 1 or not available(cols):
        return None
    if out is None:
        out = torch.empty(shape, dtype=torch.int32)
    elif tuple(out.shape) != shape or out.dtype != torch.int32 or not out.is_contiguous() or not available(out):
        raise ValueError(f"col2im out must be contiguous int32 {shape} on the CPU, got {out.dtype} {tuple(out.shape)}")
    cols = cols.contiguous()
    _lib().niti_col2im_i32(cols.data_ptr(), n, ho, wo, kh, kw, c, ph, pw, out.data_ptr(), torch.get_num_threads())
    return out


def sgd_update(grad: Tensor, w: Tensor, v: Tensor | None, *, grad_shift: int, grad_limit: int, decay_shift: int | None,
               mult: int, mult_shift: int, momentum_shift: int, frac_bits: int, weight_limit: int, mode: str,
               grad_noise: Tensor | None, step_noise: Tensor | None,
               residual: Tensor | None = None) -> tuple[Tensor, ...] | None:
    """``fused.sgd_update`` (its arguments, ``grad_limit`` = 2**grad_bits − 1) as one C pass: (new weight, new
    velocity or None[, new residual with the step carry]); None where the loop does not apply (dtypes, device, a
    missing draw)."""
    momentum = momentum_shift > 0
    carry = residual is not None
    if momentum and v is None:  # a first step: the velocity starts at 0
        v = torch.zeros(w.shape, dtype=torch.int32, device=w.device)
    stochastic = mode == "stochastic"
    if carry:
        step_noise = None  # a carried step is rounded to nearest
        if residual.dtype != torch.int16 or residual.shape != w.shape or not available(residual):
            return None
    draws = [t for t in (grad_noise, step_noise) if t is not None]
    if (grad.dtype not in _GRAD or w.dtype not in _WEIGHT or mode not in MODES or grad.shape != w.shape
            or (momentum and (v is None or v.dtype != torch.int32 or v.shape != w.shape))
            or (stochastic and ((step_noise is None and not carry) or (grad_shift > 0 and grad_noise is None)))
            or any(t.dtype != torch.int64 or t.shape != w.shape for t in draws)
            or not available(grad, w, *draws, *([v] if momentum and v is not None else []))):
        return None
    args = _SgdArgs(grad_down=int(grad_shift > 0), g_shift=abs(grad_shift), g_limit=grad_limit,
                    decay=0 if decay_shift is None else (1 if decay_shift > 0 else 2),
                    decay_shift=abs(decay_shift or 0), mult=mult, mult_shift=mult_shift, momentum=int(momentum),
                    m_shift=momentum_shift, fv=frac_bits, w_limit=weight_limit, carry=int(carry))
    grad, w = grad.contiguous(), w.contiguous()
    v = v.contiguous() if momentum and v is not None else None
    g_noise = grad_noise.contiguous() if stochastic and grad_noise is not None and grad_shift > 0 else None
    s_noise = step_noise.contiguous() if stochastic and step_noise is not None else None
    new_w = torch.empty(w.shape, dtype=w.dtype)
    new_v = torch.empty(w.shape, dtype=torch.int32) if momentum else None
    r_in = residual.contiguous() if carry else None
    new_r = torch.empty(w.shape, dtype=torch.int16) if carry else None
    fn = getattr(_lib(), f"niti_sgd_update_{_GRAD[grad.dtype]}_{_WEIGHT[w.dtype]}")
    fn(grad.data_ptr(), w.data_ptr(), None if v is None else v.data_ptr(), w.numel(), ctypes.byref(args),
       MODES[mode], None if g_noise is None else g_noise.data_ptr(), None if s_noise is None else s_noise.data_ptr(),
       new_w.data_ptr(), None if new_v is None else new_v.data_ptr(), torch.get_num_threads(),
       None if r_in is None else r_in.data_ptr(), None if new_r is None else new_r.data_ptr())
    return (new_w, new_v, new_r) if carry else (new_w, new_v)
