"""Integer layers with explicit forward/backward, the integer loss and input conversion."""

from .input import images_to_int8
from .layers import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential
from .loss import SOFTMAXES, cross_entropy_backward, softmax_grad
from .module import IntParameter, Module

__all__ = [
    "SOFTMAXES",
    "Conv2d",
    "Dropout",
    "Flatten",
    "IntParameter",
    "Linear",
    "MaxPool2d",
    "Module",
    "ReLU",
    "Sequential",
    "cross_entropy_backward",
    "images_to_int8",
    "softmax_grad",
]
