"""im2col of NHWC int8 activations in C for the CPU (``csrc/im2col.c``), called through ctypes.

``conv.im2col`` builds its columns here when it can: the padding is read as
zeros in the loop (no padded copy of the input) and each in-bounds window row
is one contiguous copy, where PyTorch's strided ``copy_`` walks a 6-D view.
The PyTorch path is the reference and the fallback; pinned against it in
``tests/test_kernels.py``.  Built and loaded like the AVX2 GEMM
(``cpu_gemm.load_library``).
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from .cpu_gemm import INT, LONG, PTR, bind_library, csrc

__all__ = ["SOURCE", "applies", "im2col_into", "im2col_t_into"]

SOURCE = csrc("im2col.c")


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    args = [PTR, LONG, LONG, LONG, LONG, INT, INT, INT, INT, INT, INT, LONG, LONG, PTR, INT]
    return bind_library(SOURCE, {"niti_im2col_nhwc": (None, args), "niti_im2col_t_nhwc": (None, args)})


def applies(x: Tensor, padding: tuple[int, int]) -> bool:
    """Whether the C loop builds these columns: int8 NHWC on the CPU, non-negative padding, library built."""
    return x.dtype == torch.int8 and x.device.type == "cpu" and min(padding) >= 0 and _lib() is not None


def im2col_into(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                out_hw: tuple[int, int], cols: Tensor) -> Tensor:
    """Fill ``cols`` (N·Ho·Wo, kh·kw·C) int8, contiguous, with the columns of NHWC int8 ``x``; returns it."""
    return _fill("niti_im2col_nhwc", False, x, kernel, stride, padding, out_hw, cols)


def im2col_t_into(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                  out_hw: tuple[int, int], cols_t: Tensor) -> Tensor:
    """Fill ``cols_t`` (kh·kw·C, N·Ho·Wo) int8, contiguous, with the transposed columns of NHWC int8 ``x``."""
    return _fill("niti_im2col_t_nhwc", True, x, kernel, stride, padding, out_hw, cols_t)


def _fill(name: str, transposed: bool, x: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
          padding: tuple[int, int], out_hw: tuple[int, int], out: Tensor) -> Tensor:
    lib = _lib()
    if lib is None or not applies(x, padding):
        raise RuntimeError("the C im2col does not apply here (check cpu_im2col.applies first)")
    x = x.contiguous()
    n, h, w, c = x.shape
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = kernel, stride, padding, out_hw
    shape = (kh * kw * c, n * ho * wo) if transposed else (n * ho * wo, kh * kw * c)
    if tuple(out.shape) != shape or out.dtype != torch.int8 or not out.is_contiguous():
        raise ValueError(f"{'cols_t' if transposed else 'cols'} must be contiguous int8 {shape}, got {out.dtype} "
                         f"{tuple(out.shape)}")
    getattr(lib, name)(x.data_ptr(), n, h, w, c, kh, kw, sh, sw, ph, pw, ho, wo, out.data_ptr(),
                       torch.get_num_threads())
    return out
