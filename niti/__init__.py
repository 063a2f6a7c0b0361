"""niti: training deep neural networks with integer arithmetic only (NITI, Wang et al. 2022)."""

from . import audit, kernels, models, nn, numerics, optim
from .audit import integer_only
from .models import build, from_torch
from .numerics import IntTensor, RoundingPolicy
from .optim import GbSchedule

__version__ = "0.1.0"

__all__ = ["GbSchedule", "IntTensor", "RoundingPolicy", "audit", "build", "from_torch", "integer_only", "kernels", "models",
           "nn", "numerics", "optim", "__version__"]
