"""Fused integer elementwise chains (docs/numerics.md §1), each run compiled or as its eager twin.

Each chain (rescale's rounding and clip, the weight update, the ReLU
backward, max pooling, col2im) is written once below as plain integer torch
ops: that function is the *eager twin*, readable next to docs/numerics.md.
``Fused`` runs the very same function through ``torch.compile`` (inductor,
C++ on the CPU), which turns a chain of a dozen full-tensor passes into one
loop (measured on one thread: rounding and clipping LeNet's first 2.9 M-element
int32 product took 90 ms as eager ops, 2.5 ms compiled).  ``tests/test_fused.py``
checks compiled == eager == the reference in ``niti.numerics`` bit for bit.

On a CPU where niti's C loops build (AVX2 and a C compiler), the chains a
default training step uses run as those loops instead (``cpu_round``,
``cpu_chains``, the pool's): a step compiles nothing at run time, so a fresh
process does not wait for inductor.  The chains stay the reference the loops
are pinned against and the path everywhere else; under a dispatch mode (the
audit) the loops yield to the eager twins (``c_loops_allowed``).

Compiling: shapes are symbolic (``dynamic=True``), so one compilation serves
every batch size; shifts and clip limits enter as 0-d integer tensors, so
they never recompile either.  Inductor caches compiled code on disk; the
first process on a machine spends seconds per chain compiling.

The eager twin runs instead when
- ``NITI_COMPILE=0`` is set in the environment;
- ``torch.compile`` is missing or fails (one warning, then eager for that
  chain for the rest of the process), or a chain meets more shapes than
  dynamo recompiles for (new shapes then run eagerly);
- a ``TorchDispatchMode`` is active, as under ``niti.audit.integer_only()``:
  dynamo cannot trace under a Python dispatch mode, so the audit sees, and
  checks op by op, the eager twin of every chain;
- the tensors are not on the CPU (CUDA runs the eager ops).

Why the compiled path cannot create floats either: its graph is traced from
the eager twin (the ops the audit checks), every dynamic quantity (shift,
clip limit) enters as an integer tensor, and ``tests/test_fused.py`` scans
the generated C++ of each chain for floating-point types.
"""

from __future__ import annotations

import functools
import os
import types
import warnings
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import cpu_chains, cpu_round

__all__ = ["COMPILE_ENV", "Fused", "c_loops_allowed", "compile_enabled", "max_abs", "round_clip", "update",
           "relu_backward", "maxpool", "maxpool_backward", "col2im", "bn_value_index", "bn_value_counts",
           "bn_value_sums", "bn_gather", "bn_normalise", "bn_error", "sgd_update"]

#: Set to "0" to run every chain eagerly.
COMPILE_ENV = "NITI_COMPILE"

#: Tensors smaller than this run a single-threaded compilation of the chain: a parallel region costs more
#: than the work, and far more when the other core is busy (a thread may wait a scheduler time slice).
_SMALL = 1 << 16


def compile_enabled() -> bool:
    """Whether fused chains may be compiled in this process (``NITI_COMPILE`` not "0")."""
    return os.environ.get(COMPILE_ENV, "1").strip() != "0"


def _dispatch_mode_active() -> bool:
    return _get_current_dispatch_mode() is not None


def c_loops_allowed() -> bool:
    """Whether a chain may run as its C loop (``cpu_chains``, the pool's loops): not under a dispatch mode, so that
    ``niti.audit.integer_only()`` checks the eager twin op by op instead (it cannot see inside a C loop)."""
    return not _dispatch_mode_active()


class Fused:
    """An integer chain: ``fused(*args)`` runs it compiled when it can, else ``fused.eager(*args)``.

    Tensors go in as positional arguments; static choices (a rounding mode, a
    dtype, a window size) as keyword arguments, one compiled variant each.
    ``dynamic=False`` compiles once per input shape instead of once for all
    shapes: for multi-dimensional gathers whose loops are much faster when
    their sizes are known (a model has only a few such shapes).
    """

    def __init__(self, fn: Callable[..., Any], *, dynamic: bool = True) -> None:
        self.eager = fn
        self.dynamic = dynamic
        self._compiled: dict[tuple, Callable[..., Any]] = {}
        self.broken: str | None = None  # why compiling was given up, if it was
        self._limit_warned = False
        functools.update_wrapper(self, fn)

    def use_compiled(self, *tensors: Tensor) -> bool:
        if self.broken is not None or not compile_enabled() or _dispatch_mode_active():
            return False
        if torch.compiler.is_compiling():
            return False  # already inside a traced region: inline the eager twin
        return all(t.device.type == "cpu" for t in tensors if isinstance(t, Tensor))

    def compiled(self, small: bool = False, **static: Any) -> Callable[..., Any]:
        """The chain compiled for one static variant: OpenMP-parallel over any size, or single-threaded.

        Each variant compiles a private copy of the eager twin's code object:
        dynamo caches per code object and stops compiling one after a few
        variants (``recompile_limit``), which several modes and dtypes of one
        chain would otherwise reach.
        """
        key = (small, tuple(sorted(static.items())))
        fn = self._compiled.get(key)
        if fn is None:
            e = self.eager
            variant = types.FunctionType(e.__code__.replace(), e.__globals__, e.__name__, e.__defaults__,
                                         e.__closure__)
            variant.__kwdefaults__ = e.__kwdefaults__
            # dynamic_threads: parallel whatever size the first call had (the sizes are symbolic);
            # threads=1: no parallel region at all.
            options = {"cpp.threads": 1} if small else {"cpp.dynamic_threads": True}
            fn = functools.partial(torch.compile(variant, dynamic=self.dynamic, fullgraph=True, options=options),
                                   **static)
            self._compiled[key] = fn
        return fn

    def __call__(self, *tensors: Tensor, **static: Any) -> Any:
        if self.use_compiled(*tensors):
            try:
                small = max((t.numel() for t in tensors if isinstance(t, Tensor)), default=0) < _SMALL
                return self.compiled(small, **static)(*(_plain(t) for t in tensors))
            except Exception as exc:  # noqa: BLE001 - decided below by re-running eagerly
                out = self.eager(*tensors, **static)  # bad input raises here, with the eager message
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                if type(exc).__name__ == "FailOnRecompileLimitHit":  # too many shapes: these run eagerly
                    if not self._limit_warned:
                        self._limit_warned = True
                        warnings.warn(f"niti: {self.__name__} met too many shapes ({reason}); new ones run eagerly",
                                      RuntimeWarning, stacklevel=2)
                    return out
                self.broken = reason
                warnings.warn(f"niti: compiling {self.__name__} failed ({reason}); running it eagerly",
                              RuntimeWarning, stacklevel=2)
                return out
        return self.eager(*tensors, **static)


def _plain(t: Any) -> Any:
    """``t`` itself, or for a view an alias without view metadata.

    Dynamo guards a view on its base's layout as well; a workspace buffer that
    grew, or a base of another rank, would then recompile the chain for nothing.
    """
    if not isinstance(t, Tensor) or not t._is_view():
        return t
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), t.shape, t.stride())


@functools.lru_cache(maxsize=512)
def _scalar(value: int, dtype: torch.dtype, role: str = "", device: torch.device | None = None) -> Tensor:
    """A 0-d integer tensor, cached per role and never written: dynamic values enter compiled graphs as
    data, so a new shift or clip limit never recompiles (and two roles never share one tensor, which
    dynamo would guard on)."""
    return torch.tensor(value, dtype=dtype, device=device)


# --------------------------------------------------------------- bit width


def max_abs(t: Tensor) -> int:
    """The largest magnitude in ``t`` as a Python int (0 for an empty tensor).

    Eager ``aminmax`` is already one vectorised pass over memory; measured faster
    than the compiled equivalent, so it is not a ``Fused`` chain.  Both ends come
    back in one read (one host synchronisation on a GPU, not two).  A contiguous
    CPU int32 tensor takes the C loop (``cpu_chains.max_abs``; 2.9 M values on one
    core 1.0 -> 0.6 ms with its AVX-512 build).
    """
    if t.numel() == 0:
        return 0
    if c_loops_allowed() and (m := cpu_chains.max_abs(t)) is not None:
        return m
    lo, hi = torch.stack(torch.aminmax(t)).tolist()
    return max(hi, -lo)


def _count_at_least_chain(t: Tensor, thresholds: Tensor, *, n: int) -> Tensor:
    a = t.to(torch.int64).abs()  # int64: |-2**31| fits
    return torch.stack([(a >= thresholds[i]).sum() for i in range(n)])


_count_at_least = Fused(_count_at_least_chain)


def count_at_least(t: Tensor, thresholds: list[int]) -> list[int]:
    """For each threshold (>= 1), how many elements of integer ``t`` have a magnitude at least that large: one pass
    (int32 on the CPU: a C loop, ``cpu_chains.count_at_least``; else compiled), exact in any path."""
    if not thresholds:
        return []
    if t.numel() == 0:
        return [0] * len(thresholds)
    if c_loops_allowed() and (counts := cpu_chains.count_at_least(t, thresholds)) is not None:
        return counts
    limits = torch.tensor(thresholds, dtype=torch.int64, device=t.device)
    return _count_at_least(t.reshape(-1), limits, n=len(thresholds)).tolist()


# ------------------------------------------------------- rounding and clip


def _round_magnitude(a: Tensor, shift: Tensor, mode: str, noise: Tensor | None) -> Tensor:
    """``a >> shift`` rounded with ``mode`` for magnitudes ``a >= 0`` and ``shift >= 1`` (docs/numerics.md §3).

    In int32 the magnitude of -2**31 wraps to -2**31, whose bits are those of 2**31 read unsigned: the quotient
    is masked to the ``32 - shift`` bits a logical shift would leave (a no-op for every other value), so that
    value keeps its sign as in ``numerics.round_shift``'s int64 arithmetic."""
    q = a >> shift
    if a.dtype == torch.int32:
        q = q & (((1 << (31 - shift)) - 1) * 2 + 1)  # 2**(32 - shift) - 1, formed without overflow
    if mode == "nearest":
        return q + ((a >> (shift - 1)) & 1)  # low >= 2**(shift-1), without forming 2**shift
    if mode == "truncate":
        return q
    low = a & ((1 << shift) - 1)
    if mode == "pseudo_stochastic":
        h = shift >> 1
        hi = low >> h
        lo = (low & ((1 << h) - 1)) << (shift & 1)  # doubled when shift is odd: both span ceil(s/2) bits
        return q + (hi > lo).to(a.dtype)
    if mode == "stochastic":
        assert noise is not None
        return q + (noise.to(a.dtype) < low).to(a.dtype)
    raise ValueError(f"unknown rounding mode {mode!r}")


def _round_clip_chain(t: Tensor, shift: Tensor, limit: Tensor, noise: Tensor | None = None, *, mode: str,
                      work: torch.dtype, out: torch.dtype) -> Tensor:
    x = t.to(work)
    q = _round_magnitude(x.abs(), shift, mode, noise)
    r = torch.where(x < 0, -q, q)
    return torch.minimum(torch.maximum(r, -limit), limit).to(out)


def _clip_chain(t: Tensor, limit: Tensor, *, work: torch.dtype, out: torch.dtype) -> Tensor:
    x = t.to(work)
    return torch.minimum(torch.maximum(x, -limit), limit).to(out)


_round_clip = Fused(_round_clip_chain)
_clip = Fused(_clip_chain)


def _work_dtype(t: Tensor, shift: int) -> torch.dtype:
    # As numerics.round_shift: int32 unless the input is int64 or the shift needs 64 bits.
    return torch.int64 if (t.dtype == torch.int64 or shift > 30) else torch.int32


def round_clip(t: Tensor, shift: int, mode: str, target_bits: int, out_dtype: torch.dtype,
               noise: Tensor | None = None) -> Tensor:
    """``clip(round_shift(t, shift, mode), ±(2**target_bits - 1))`` as ``out_dtype``, in one pass.

    Bit-identical to ``numerics.rescale`` given the same shift; ``noise`` are the
    stochastic draws in ``[0, 2**shift)`` (same shape as ``t``).  int32 (or int16, widened
    exactly) → int8 with a value-only mode, or any mode at shift 0, runs as a C loop on the CPU
    (``cpu_round``), where it is built.
    """
    if c_loops_allowed():
        c_mode = "nearest" if shift == 0 else mode  # shift 0 only clips, whatever the mode
        if t.dtype == torch.int16 and t.device.type == "cpu":  # int16 master weights; the chain works in int32 too
            t = t.to(torch.int32)
        if cpu_round.applies(t, shift, c_mode, target_bits, out_dtype):
            return cpu_round.round_clip(t, shift, c_mode, target_bits)
    work = _work_dtype(t, shift)
    limit = _scalar((1 << target_bits) - 1, work, "limit", t.device)
    flat = t.reshape(-1)
    if shift == 0:
        r = _clip(flat, limit, work=work, out=out_dtype)
    else:
        if mode == "stochastic":
            if noise is None or noise.shape != t.shape:
                raise ValueError(f"stochastic rounding needs noise of shape {tuple(t.shape)}, got "
                                 f"{None if noise is None else tuple(noise.shape)}")
            r = _round_clip(flat, _scalar(shift, work, "shift", t.device), limit, noise.reshape(-1), mode=mode, work=work,
                            out=out_dtype)
        else:
            r = _round_clip(flat, _scalar(shift, work, "shift", t.device), limit, mode=mode, work=work, out=out_dtype)
    return r.view(t.shape)


# ---------------------------------------------------------- weight update


def _update_chain(w: Tensor, g: Tensor, shift: Tensor, g_limit: Tensor, w_limit: Tensor,
                  noise: Tensor | None = None, *, mode: str, work: torch.dtype) -> Tensor:
    x = g.to(work)
    if mode == "none":  # shift 0: the gradient already fits
        step = torch.minimum(torch.maximum(x, -g_limit), g_limit)
    else:
        q = _round_magnitude(x.abs(), shift, mode, noise)
        step = torch.minimum(torch.maximum(torch.where(x < 0, -q, q), -g_limit), g_limit)
    new = w.to(work) - step
    return torch.minimum(torch.maximum(new, -w_limit), w_limit).to(w.dtype)


_update = Fused(_update_chain)


def update(w: Tensor, grad: Tensor, shift: int, mode: str, grad_bits: int, weight_limit: int,
           noise: Tensor | None = None) -> Tensor:
    """``clip(w - clip(round_shift(grad, shift), ±(2**grad_bits-1)), ±weight_limit)`` in ``w``'s dtype (numerics.md §5)."""
    if w.shape != grad.shape:
        raise ValueError(f"gradient shape {tuple(grad.shape)} != weight shape {tuple(w.shape)}")
    work = _work_dtype(grad, shift)
    dev = grad.device
    args = [w.reshape(-1), grad.reshape(-1), _scalar(shift, work, "shift", dev),
            _scalar((1 << grad_bits) - 1, work, "g_limit", dev), _scalar(weight_limit, work, "w_limit", dev)]
    if shift > 0 and mode == "stochastic":
        if noise is None or noise.shape != grad.shape:
            raise ValueError(f"stochastic rounding needs noise of shape {tuple(grad.shape)}")
        args.append(noise.reshape(-1))
    return _update(*args, mode=mode if shift > 0 else "none", work=work).view(w.shape)


def _signed_round(t: Tensor, shift: Tensor, mode: str, noise: Tensor | None = None) -> Tensor:
    """``numerics.round_shift`` for ``shift >= 1`` inside a chain: sign-magnitude rounding of ``t / 2**shift``."""
    q = _round_magnitude(t.abs(), shift, mode, noise)
    return torch.where(t < 0, -q, q)


def _sgd_update_chain(grad: Tensor, w: Tensor, v: Tensor, g_shift: Tensor, g_limit: Tensor, decay_shift: Tensor,
                      mult: Tensor, mult_shift: Tensor, m_shift: Tensor, fv: Tensor, w_limit: Tensor,
                      g_noise: Tensor | None = None, s_noise: Tensor | None = None, r: Tensor | None = None, *,
                      mode: str, grad_down: bool, decay: str, momentum: bool,
                      carry: bool = False) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    # docs/numerics.md §5, in int64: the gradient rescaled to fv fractional bits, weight decay, the fractional
    # step and batch scale, the velocity's moving average, the rounded step, the clipped weight.
    x = grad.to(torch.int64)
    if grad_down:
        x = torch.minimum(torch.maximum(_signed_round(x, g_shift, mode, g_noise), -g_limit), g_limit)
    else:
        x = x << g_shift
    w64 = w.to(torch.int64)
    if decay == "right":
        x = x + _signed_round(w64, decay_shift, "nearest")
    elif decay == "left":
        x = x + (w64 << decay_shift)
    x = _signed_round(x * mult, mult_shift, "nearest")
    if momentum:
        v64 = v.to(torch.int64)
        x = v64 + _signed_round(x - v64, m_shift, "nearest")
    if carry:  # the step's remainder is kept for the next step (docs/numerics.md §5): nothing is lost to rounding
        total = x + r.to(torch.int64)
        step = _signed_round(total, fv, "nearest")
        new = torch.minimum(torch.maximum(w64 - step, -w_limit), w_limit)
        return new.to(w.dtype), x.to(torch.int32), (total - (step << fv)).to(torch.int16)
    step = _signed_round(x, fv, mode, s_noise)
    new = torch.minimum(torch.maximum(w64 - step, -w_limit), w_limit)
    return new.to(w.dtype), x.to(torch.int32)


_sgd_update = Fused(_sgd_update_chain)


def sgd_update(grad: Tensor, w: Tensor, v: Tensor | None, *, grad_shift: int, grad_bits: int, decay_shift: int | None,
               mult: int, mult_shift: int, momentum_shift: int, frac_bits: int, weight_limit: int, mode: str,
               grad_noise: Tensor | None = None, step_noise: Tensor | None = None,
               residual: Tensor | None = None) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, Tensor]:
    """One momentum-SGD step of the integer weight ``w`` (docs/numerics.md §5) in one pass: ``(new w, new velocity)``.

    ``grad_shift`` > 0 rounds the gradient down by that many bits with ``mode`` (then clips it to ``grad_bits``),
    ≤ 0 shifts it up; ``decay_shift`` adds ``w · 2**-decay_shift`` (nearest); the result is scaled by
    ``mult / 2**mult_shift`` (nearest), averaged into the int32 velocity ``v`` with weight ``2**-momentum_shift``
    (0: no velocity, ``None`` returned), rounded by ``frac_bits`` with ``mode`` and subtracted; the weight is
    clipped to ±``weight_limit``.  Stochastic rounding takes its draws as ``grad_noise`` and ``step_noise``.

    ``residual`` (int16, ``|r| <= 2**(frac_bits - 1)``; given: the step carry) is added to the fractional step
    before it is rounded to nearest, and what the rounding left is returned as a third result, the next step's
    residual: the applied steps then sum to the fractional steps' sum within half a master unit.
    """
    dev, i64 = w.device, torch.int64
    momentum = momentum_shift > 0
    carry = residual is not None
    if carry and (residual.dtype != torch.int16 or residual.shape != w.shape):
        raise ValueError(f"the step residual must be int16 {tuple(w.shape)}, got {residual.dtype} "
                         f"{tuple(residual.shape)}")
    if c_loops_allowed() and (done := cpu_chains.sgd_update(
            grad, w, v, grad_shift=grad_shift, grad_limit=(1 << grad_bits) - 1, decay_shift=decay_shift, mult=mult,
            mult_shift=mult_shift, momentum_shift=momentum_shift, frac_bits=frac_bits, weight_limit=weight_limit,
            mode=mode, grad_noise=grad_noise, step_noise=step_noise, residual=residual)) is not None:
        return done
    if v is None or not momentum:
        v = torch.zeros(w.shape, dtype=torch.int32, device=dev) if momentum else w
    decay = "" if decay_shift is None else ("right" if decay_shift > 0 else "left")
    out = _sgd_update(
        grad.reshape(-1), w.reshape(-1), v.reshape(-1), _scalar(abs(grad_shift), i64, "sgd.g_shift", dev),
        _scalar((1 << grad_bits) - 1, i64, "sgd.g_limit", dev), _scalar(abs(decay_shift or 0), i64, "sgd.decay", dev),
        _scalar(mult, i64, "sgd.mult", dev), _scalar(mult_shift, i64, "sgd.mult_shift", dev),
        _scalar(momentum_shift, i64, "sgd.m_shift", dev), _scalar(frac_bits, i64, "sgd.fv", dev),
        _scalar(weight_limit, i64, "sgd.w_limit", dev),
        None if grad_noise is None else grad_noise.reshape(-1), None if step_noise is None else step_noise.reshape(-1),
        residual.reshape(-1) if carry else None, mode=mode, grad_down=grad_shift > 0, decay=decay,
        momentum=momentum, carry=carry)
    new, vel = out[0].view(w.shape), (out[1].view(w.shape) if momentum else None)
    return (new, vel, out[2].view(w.shape)) if carry else (new, vel)


# ------------------------------------------------------------------ ReLU
# Multi-dimensional chains take their tensors flattened to few dimensions: dynamo's symbolic sizes
# would otherwise tie equal sizes together (N == C == 128 in VGG) and recompile when they part.


@Fused
def _relu_backward(err: Tensor, y: Tensor) -> Tensor:
    return torch.where(y > 0, err, torch.zeros((), dtype=err.dtype, device=err.device))


def relu_backward(err: Tensor, y: Tensor) -> Tensor:
    """The error where the ReLU output ``y`` is positive (exactly where its input was), else 0."""
    if c_loops_allowed() and (out := cpu_chains.relu_backward(err, y)) is not None:
        return out
    return _relu_backward(err.reshape(-1), y.reshape(-1)).view(err.shape)


# ----------------------------------------------------------- max pooling


def _maxpool_chain(x: Tensor, *, k: int) -> tuple[Tensor, Tensor]:
    # x is (N·Ho, k, Wo, k, C): window (a, b) holds x[a, i, b, j, :] at row-major position i·k + j.
    parts = [x[:, i, :, j] for i in range(k) for j in range(k)]
    out = parts[0]
    for p in parts[1:]:
        out = torch.maximum(out, p)
    # First maximum in row-major order: scan from the last position back to the first.
    index = torch.full(out.shape, k * k - 1, dtype=torch.int8 if k * k < 128 else torch.int32, device=x.device)
    for pos in range(k * k - 2, -1, -1):
        index = torch.where(parts[pos] == out, pos, index)
    return out, index


_maxpool = Fused(_maxpool_chain)


def maxpool(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping k×k max pool of NHWC ``x`` (H, W multiples of k): (out, first-max index), NHWC."""
    n, h, w, c = x.shape
    out, index = _maxpool(x.contiguous().view(n * (h // k), k, w // k, k, c), k=k)
    return out.view(n, h // k, w // k, c), index.view(n, h // k, w // k, c)


def _maxpool_backward_chain(err: Tensor, index: Tensor, *, k: int) -> Tensor:
    a, b, c = err.shape  # (N·Ho, Wo, C)
    e = err.view(a, 1, b, 1, c).expand(a, k, b, k, c)
    idx = index.view(a, 1, b, 1, c).expand(a, k, b, k, c)
    ar = torch.arange(k, dtype=index.dtype, device=index.device)
    pos = ar.view(1, k, 1, 1, 1) * k + ar.view(1, 1, 1, k, 1)  # i·k + j at window cell (i, j)
    return torch.where(idx == pos, e, torch.zeros((), dtype=err.dtype, device=err.device))


_maxpool_backward = Fused(_maxpool_backward_chain)


def maxpool_backward(err: Tensor, index: Tensor, k: int) -> Tensor:
    """Each error to its window's first maximum, zero elsewhere: NHWC (n, ho·k, wo·k, c)."""
    n, ho, wo, c = err.shape
    routed = _maxpool_backward(err.contiguous().view(n * ho, wo, c), index.contiguous().view(n * ho, wo, c), k=k)
    return routed.view(n, ho * k, wo * k, c)


# ---------------------------------------------------------------- col2im


def _col2im_chain(cols: Tensor, *, kernel: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    # cols (n, ho, wo, kh, kw, c): the contribution of output (ho, wo) to input (ho + i - ph, wo + j - pw).
    kh, kw = kernel
    ph, pw = padding
    out = None
    for i in range(kh):
        for j in range(kw):
            # Shift the (i, j) slice into place; negative padding crops what falls outside the input.
            # (constant_pad_nd, not F.pad: F.pad hands the op a float 0.0 as its fill value.)
            part = torch.constant_pad_nd(cols[:, :, :, i, j], (0, 0, j - pw, kw - 1 - j - pw, i - ph, kh - 1 - i - ph))
            out = part if out is None else out + part
    return out


_col2im = Fused(_col2im_chain, dynamic=False)  # 2-3x faster with known sizes (c = 20 in LeNet)


def col2im(cols: Tensor, *, kernel: tuple[int, int], padding: tuple[int, int], out: Tensor | None = None) -> Tensor:
    """Stride-1 col2im: sum each kernel tap's slice of ``cols`` (n, ho, wo, kh, kw, c) into the NHWC input it came
    from (n, ho + kh - 1 - 2ph, wo + kw - 1 - 2pw, c), in ``cols``' dtype; into ``out`` when given."""
    if c_loops_allowed() and (done := cpu_chains.col2im(cols, kernel, padding, out)) is not None:
        return done
    result = _col2im(cols, kernel=kernel, padding=padding)
    return result if out is None else out.copy_(result)


# ------------------------------------------------------------ batch norm (docs/numerics.md §13)
# The PyTorch path (the CPU's C loops are kernels/cpu_bn.py); not compiled chains: gathers and bincounts are
# single eager passes.  An int8 input has 256 values per channel, so every per-element quantity of batch norm that
# depends only on the value (x̂, sign(c), γ·x̂ + β, the error's value-dependent term) is computed once per
# (value, channel) in a (256, C) table and gathered with the element's table index (x + 128)·C + channel.


#: The 256 int8 values as a column (int64): the rows of batch norm's (256, C) value tables.
VALUES = torch.arange(-128, 128, dtype=torch.int64).unsqueeze(1)


def bn_value_index(x: Tensor) -> Tensor:
    """int32 ``(x + 128)·C + c`` for int8 ``x`` (rows, C): each element's row in a (256, C) value table."""
    ch = x.shape[-1]
    # Eager: two vectorised in-place passes, measured faster than a compiled chain here (a gather-free
    # broadcast that inductor does not vectorise for int8 -> int32).
    return x.to(torch.int32).mul_(ch).add_(torch.arange(128 * ch, 129 * ch, dtype=torch.int32, device=x.device))


def bn_value_counts(index: Tensor, channels: int) -> Tensor:
    """How often each (value, channel) occurs: int64 (256, C) from ``bn_value_index``."""
    return torch.bincount(index.reshape(-1), minlength=256 * channels).reshape(256, channels)


def bn_value_sums(index: Tensor, g: Tensor) -> Tensor:
    """Per (value, channel) the sum of ``g`` (int8, the shape of ``index``) over the elements with that value:
    int64 (256, C), exact (integer adds in any order; int32 accumulators while 127 · count < 2**31)."""
    ch = g.shape[-1]
    dtype = torch.int32 if 127 * g.numel() < 1 << 31 else torch.int64
    total = torch.zeros(256 * ch, dtype=dtype, device=g.device)
    return total.index_add_(0, index.reshape(-1), g.reshape(-1).to(dtype)).reshape(256, ch).to(torch.int64)


def bn_gather(table: Tensor, index: Tensor) -> Tensor:
    """``table`` (256, C) looked up per element of ``index`` (rows, C): a tensor of ``index``'s shape."""
    return table.reshape(-1).index_select(0, index.reshape(-1)).reshape(index.shape)


def bn_normalise(x: Tensor, n: int, s: Tensor, r: Tensor, w: Tensor, limit: int) -> tuple[Tensor, Tensor]:
    """``(x̂ int32, sign int8)``: ``clip(round((n·x − s) · r · 2**-w), ±limit)`` per channel (nearest, ties away
    from zero), and the sign of ``n·x − s``, for ``x`` (rows, C) (batch norm applies it to its value tables);
    ``r``, ``w`` int64 (C,), ``w ≥ 0``, ``|n·x − s| · r < 2**62``."""
    c = x.to(torch.int64) * n - s
    a = c.abs() * r
    q = torch.clamp_max((a + (torch.bitwise_left_shift(torch.ones_like(w), w) >> 1)) >> w, limit)
    return torch.where(c < 0, -q, q).to(torch.int32), torch.sign(c).to(torch.int8)


def bn_error(g: Tensor, index: Tensor, table: Tensor, g_table: Tensor) -> Tensor:
    """int64 ``table[index] + g_table[g's index]`` per element: batch norm's input error before its rescale
    (docs/numerics.md §13); ``g`` int8 (rows, C), tables int64 (256, C), no overflow.  Two gathers and an add: no
    element sees a 64-bit multiply or shift (AVX2 has neither as a vector instruction)."""
    out = bn_gather(table, index)
    out += bn_gather(g_table, bn_value_index(g))
    return out
