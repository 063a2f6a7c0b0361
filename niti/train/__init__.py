"""Training loop, checkpoints and metrics."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .loop import TrainingInterrupted, build_model, fit, load, load_model

__all__ = ["CheckpointError", "TrainConfig", "TrainingInterrupted", "build_model", "fit", "load", "load_checkpoint",
           "load_model", "save_checkpoint"]
