"""niti: training deep neural networks with integer arithmetic only (NITI, Wang et al. 2022)."""

from . import audit, kernels, models, nn, numerics, optim
from .audit import integer_only
from .models import build, from_torch
from .numerics import IntTensor, RoundingPolicy
from .optim import GbSchedule

__version__ = "0.1.0"


def load(run_or_checkpoint):  # noqa: ANN001, ANN201 - imported lazily: the training loop pulls in data and I/O
    """The trained model saved in a run directory or ``checkpoint.pt`` (digest and fields verified)."""
    from .train import load as _load

    return _load(run_or_checkpoint)

__all__ = ["GbSchedule", "IntTensor", "RoundingPolicy", "audit", "build", "from_torch", "integer_only", "kernels", "load", "models",
           "nn", "numerics", "optim", "__version__"]
