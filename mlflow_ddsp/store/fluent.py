"""MLflow's module-level ("fluent") API: process-wide state, and loading a local model folder.

Everything here acts on the process, not on one store: the fluent active run, MLflow's
asynchronous logging queue, the global tracking URI (switched for one call under a lock),
the installed MLflow version, and ``mlflow.pyfunc.load_model`` of a verified local copy.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

from ..errors import RegistryError, one_line

__all__ = ["active_run_id", "flush_async_logging", "global_tracking_uri", "load_pyfunc", "mlflow_version"]

# Guards the process-wide tracking URI while a local registry needs it (see global_tracking_uri).
_GLOBAL_URI_LOCK = threading.Lock()


def active_run_id(tracking_uri: str | None) -> str | None:
    """The id of the fluent active run (``mlflow.start_run()``), or None.

    Only when ``tracking_uri`` is None: the fluent active run belongs to the global
    tracking URI, so a store opened on an explicit URI never adopts it.
    """
    if tracking_uri is not None:
        return None
    import mlflow  # heavy: imported on first use (tests/test_cli_startup.py)

    run = mlflow.active_run()
    return run.info.run_id if run else None


def flush_async_logging() -> None:
    """Wait until metrics handed to MLflow's asynchronous logging have been sent."""
    import mlflow  # heavy: imported on first use

    mlflow.flush_async_logging()


def mlflow_version() -> str:
    """The installed MLflow's version string (recorded with every checkpoint's lineage)."""
    import mlflow  # heavy: imported on first use

    return mlflow.__version__


@contextlib.contextmanager
def global_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at ``tracking_uri`` for one call, under a lock.

    MLflow's local (SQLite) registry resolves a ``models:/<id>`` source with a
    fresh ``MlflowClient()``, i.e. through the global tracking URI, not ours
    (a TODO in ``SqlAlchemyStore.create_model_version``). A server resolves it
    against its own store, so remote URIs need nothing. Pinned by
    ``tests/test_mlflow_contract.py`` (``_use_tracking_uri`` is private).
    """
    if tracking_uri.startswith(("http://", "https://")):
        yield
        return
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri  # heavy: first use

    with _GLOBAL_URI_LOCK, _use_tracking_uri(tracking_uri):
        yield


def load_pyfunc(path: str | os.PathLike):
    """``mlflow.pyfunc.load_model`` of a local model folder (already verified by the caller).

    Raises:
        RegistryError: MLflow could not load it (one line, MLflow's reason).
        OSError: a file could not be read.
    """
    import mlflow.pyfunc  # heavy: imported on first use
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.pyfunc.load_model(str(path))
    except MlflowException as exc:
        raise RegistryError(one_line(f"load the MLflow model in {path}: {exc.message}")) from exc
