"""Training: data (``data``), the PyTorch loop (``loop``), MLflow logging (``tracker``)
and the session that wires them to the checkpoint queue (``session``)."""

from .loop import TrainLoop, TrainingError, ValidationResult
from .session import TrainResult, train

__all__ = ["TrainLoop", "TrainResult", "TrainingError", "ValidationResult", "train"]
