"""Exact integer kernels behind one small interface; layers call these without knowing the device."""

from .conv import conv2d, conv2d_grad_input, conv2d_grad_weight, im2col, pair
from .matmul import MAX_K_INT32, int_matmul
from .pool import (avgpool2d_backward, avgpool2d_sum, maxpool2d, maxpool2d_backward, maxpool2d_strided,
                   maxpool2d_strided_backward)

__all__ = [
    "MAX_K_INT32",
    "conv2d",
    "conv2d_grad_input",
    "conv2d_grad_weight",
    "im2col",
    "int_matmul",
    "avgpool2d_backward",
    "avgpool2d_sum",
    "maxpool2d",
    "maxpool2d_backward",
    "maxpool2d_strided",
    "maxpool2d_strided_backward",
    "pair",
]
