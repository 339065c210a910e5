"""mlflow-ddsp: train, keep, compare and serve DDSP-SVC voice models on MLflow.

The MLflow model registry is the checkpoint queue: see :class:`CheckpointQueue`.

The queue classes are imported on first use (PEP 562 module ``__getattr__``):
``import mlflow_ddsp`` and ``mlflow-ddsp --help`` load neither torch nor MLflow
(issue 23 point 10); ``from mlflow_ddsp import CheckpointQueue`` works as before.
The error types are light and imported at once.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING

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
    TrackingServerDisconnected,
    TrackingServerUnavailable,
    TrackingServerUnreachable,
)
from .device import passive_openmp_waits as _passive_openmp_waits

# Before any submodule imports torch: libgomp reads how its threads wait once, when torch
# loads it (OMP_WAIT_POLICY=PASSIVE unless the environment chose; see mlflow_ddsp.device).
_passive_openmp_waits()

if TYPE_CHECKING:  # for type checkers and IDEs; at run time they are lazy
    from .checkpoint import CheckpointQueue, CheckpointReader, RetentionPolicy

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
    "TrackingServerDisconnected",
    "TrackingServerUnavailable",
    "TrackingServerUnreachable",
    "__version__",
]

# Public names whose modules import torch and MLflow: name -> the submodule defining it.
_LAZY = {
    "CheckpointQueue": ".checkpoint",
    "CheckpointReader": ".checkpoint",
    "RetentionPolicy": ".checkpoint",
}


def __getattr__(name: str) -> object:
    """Import a lazy public name on first access and cache it in the module (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
