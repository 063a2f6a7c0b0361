"""Integer layers with explicit forward/backward, the integer loss and input conversion."""

from .input import images_to_int8
from .graph import Graph, Node, Sequential, Tape
from .layers import DROPOUT_MASKS, Add, AvgPool2d, Conv2d, Dropout, Flatten, Identity, Linear, MaxPool2d, ReLU
from .norm import BatchNorm2d
from .loss import SOFTMAXES, cross_entropy_backward, softmax_grad
from .module import IntParameter, Module

__all__ = [
    "DROPOUT_MASKS",
    "SOFTMAXES",
    "Add",
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "Dropout",
    "Flatten",
    "Graph",
    "Identity",
    "IntParameter",
    "Linear",
    "MaxPool2d",
    "Module",
    "Node",
    "ReLU",
    "Sequential",
    "Tape",
    "cross_entropy_backward",
    "images_to_int8",
    "softmax_grad",
]
