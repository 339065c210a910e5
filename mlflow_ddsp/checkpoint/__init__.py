"""The registry checkpoint queue.

``policy`` and ``reconcile`` decide (pure logic); ``registry`` talks to MLflow;
``files`` and ``staging`` handle bytes and tensors; ``queue`` owns the commit
order; ``reader`` restores; ``lease`` keeps one writer per registered model.
"""

from .files import Manifest, checkpoint_filename, load_checkpoint
from .policy import DEFAULT_ALIAS, RetentionPolicy, validate_alias
from .queue import CheckpointQueue, validate_model_name
from .reader import CheckpointReader, RestoredCheckpoint, parse_model_uri
from .records import CheckpointVersion
from .registry import RegistryStore

__all__ = [
    "CheckpointQueue",
    "CheckpointReader",
    "CheckpointVersion",
    "DEFAULT_ALIAS",
    "Manifest",
    "RegistryStore",
    "RestoredCheckpoint",
    "RetentionPolicy",
    "checkpoint_filename",
    "load_checkpoint",
    "parse_model_uri",
    "validate_alias",
    "validate_model_name",
]
