"""The registry checkpoint queue.

``policy``, ``rules`` and ``retention`` decide what stays (pure logic); MLflow is
reached only through :mod:`mlflow_ddsp.store`; ``verify`` judges a version's bytes;
``deleter`` is the one deleter; ``files`` and ``staging`` handle bytes and tensors;
``commit`` holds the commit order, which ``queue`` (a facade), ``spool_writer`` and
``committer`` carry out; ``reader`` restores; ``lease`` keeps one writer per
registered model; ``audit`` checks; ``dependencies`` stores the weight files a
version needs. See ARCHITECTURE.md.
"""

from .files import Manifest, checkpoint_filename, load_checkpoint
from ..names import BEST_ALIAS, DEFAULT_ALIAS, validate_alias, validate_model_name
from .policy import RetentionPolicy
from .queue import CheckpointQueue
from .reader import CheckpointReader, RestoredCheckpoint, parse_model_uri
from ..store import CheckpointVersion, RegistryStore

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
