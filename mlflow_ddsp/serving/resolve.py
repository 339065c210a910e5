"""Pin a model URI to a concrete version before loading or serving it.

Under training churn the rolling alias moves and its previous version is
deleted within a second; a reader that downloads ``@rolling`` directly can
fail mid-download. Resolving the alias to a version number first, then
loading that number (and re-resolving if it vanished), keeps readers
consistent, and records which version actually answered.
"""

from __future__ import annotations

import logging

from ..checkpoint import CheckpointReader
from ..checkpoint.reader import parse_model_uri
from ..checkpoint.records import CheckpointVersion
from ..errors import CheckpointNotFoundError

__all__ = ["pin_version", "load_model"]

log = logging.getLogger(__name__)


def pin_version(uri: str, *, tracking_uri: str | None = None) -> tuple[str, CheckpointVersion]:
    """``models:/NAME@rolling`` -> (``models:/NAME/12``, that version); logs the choice."""
    ref = parse_model_uri(uri)
    version = CheckpointReader(ref.name, tracking_uri=tracking_uri).resolve(uri)
    pinned = f"models:/{version.name}/{version.version}"
    if pinned != uri:
        log.warning("%s resolved to %s (step %s)", uri, pinned, version.step)
    return pinned, version


def load_model(uri: str, *, tracking_uri: str | None = None, attempts: int = 3):
    """``mlflow.pyfunc.load_model`` of a pinned version, retrying if the alias moved on."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    last: Exception | None = None
    for _ in range(attempts):
        pinned, version = pin_version(uri, tracking_uri=tracking_uri)
        try:
            model = mlflow.pyfunc.load_model(pinned)
            return model
        except (MlflowException, OSError) as exc:  # deleted between resolve and download
            last = exc
            log.warning("%s vanished while loading (%s); resolving %s again", pinned, exc, uri)
    raise CheckpointNotFoundError(f"could not load {uri}: {last}")
