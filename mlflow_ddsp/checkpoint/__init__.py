"""The registry checkpoint queue.

``policy``, ``retention`` and ``names`` decide (pure logic); ``registry`` talks
to MLflow; ``gc`` is the one deleter; ``files`` and ``staging`` handle bytes and
tensors; ``queue`` owns the commit order; ``reader`` restores; ``lease`` keeps
one writer per registered model; ``audit`` checks.
"""

from .files import Manifest, checkpoint_filename, load_checkpoint
from .names import validate_alias, validate_model_name
from .policy import BEST_ALIAS, DEFAULT_ALIAS, RetentionPolicy
from .queue import CheckpointQueue
from .reader import CheckpointReader, RestoredCheckpoint, parse_model_uri
from .records import CheckpointVersion
from .registry import RegistryStore

__all__ = [
    "CheckpointQueue",
    "CheckpointReader",
    "CheckpointVersion",
    "BEST_ALIAS",
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
