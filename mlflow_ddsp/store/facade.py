"""``RegistryStore``: the one object through which mlflow-ddsp talks to MLflow.

Composed from one part per MLflow concept (:mod:`.runs`, :mod:`.registry`,
:mod:`.logged_models`, :mod:`.users`); every call runs inside :meth:`RegistryStore._calling`,
the one error translation (:func:`mlflow_ddsp.store.errors.calling`).
"""

from __future__ import annotations

from typing import ContextManager

from .errors import calling
from .location import check_reachable, prepare_store, resolve_tracking_uri
from .logged_models import LoggedModelsPart
from .registry import RegistryPart
from .runs import RunsPart
from .users import UsersPart

__all__ = ["RegistryStore"]


class RegistryStore(RunsPart, RegistryPart, LoggedModelsPart, UsersPart):
    """MLflow tracking + model registry access for one tracking URI.

    Hides the differences between the embedded SQLite store and a server (version
    numbers are ``int`` from one and ``str`` from the other) and turns MLflow's
    errors into ours (:mod:`mlflow_ddsp.errors`).

    Args:
        tracking_uri: explicit URI; default as in :func:`mlflow_ddsp.store.location.resolve_tracking_uri`.
    Raises:
        TrackingServerUnreachable: an HTTP server does not answer its health check.
    """

    def __init__(self, tracking_uri: str | None = None):
        from mlflow import MlflowClient  # heavy: imported on first use (tests/test_cli_startup.py)

        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        check_reachable(self.tracking_uri)
        prepare_store(self.tracking_uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _calling(self, action: str, needs: tuple[str, str] | None = None) -> ContextManager[None]:
        """Translate MLflow's errors raised inside into ours (see :func:`mlflow_ddsp.store.errors.calling`)."""
        return calling(self.tracking_uri, action, needs)
