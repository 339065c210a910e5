"""mlflow-ddsp: train, keep, compare and serve DDSP-SVC voice models on MLflow.

The MLflow model registry is the checkpoint queue: see :class:`CheckpointQueue`.
"""

from .checkpoint import CheckpointQueue, CheckpointReader, RetentionPolicy
from .errors import (
    AudioError,
    CheckpointIntegrityError,
    CheckpointNotFoundError,
    CheckpointSaveError,
    ConfigError,
    LeaseHeldError,
    LeaseLostError,
    MlflowDdspError,
    RegistryError,
    TrackingServerUnavailable,
    TrackingServerUnreachable,
)

__version__ = "0.1.0"

__all__ = [
    "AudioError",
    "CheckpointIntegrityError",
    "CheckpointNotFoundError",
    "CheckpointQueue",
    "CheckpointReader",
    "CheckpointSaveError",
    "ConfigError",
    "LeaseHeldError",
    "LeaseLostError",
    "MlflowDdspError",
    "RegistryError",
    "RetentionPolicy",
    "TrackingServerUnavailable",
    "TrackingServerUnreachable",
    "__version__",
]
