"""Where runs, models and artifacts go: the embedded default and remote servers.

(Formerly ``mlflow_ddsp/tracking.py``, which re-exports this module for now.)

With no ``MLFLOW_TRACKING_URI``, mlflow-ddsp uses a SQLite database
``mlflow.db`` in the working directory, with artifacts in ``mlartifacts/``
beside it. MLflow on its own would put each experiment's artifacts under
``mlruns/`` relative to whichever directory first created the experiment, so
runs started from other folders scatter files; we pin the location instead.
"""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from .. import tags as T
from ..errors import TrackingServerUnreachable

__all__ = [
    "DEFAULT_EXPERIMENT",
    "EXPERIMENT_KIND",
    "MODEL_DEVELOPMENT",
    "DEFAULT_DB_FILE",
    "ARTIFACTS_DIR",
    "resolve_tracking_uri",
    "local_artifact_root",
    "embedded_store_folder",
    "embedded_database",
    "prepare_store",
    "check_reachable",
    "ensure_experiment",
    "local_path",
    "owns_location",
]

DEFAULT_EXPERIMENT = "mlflow-ddsp"
EXPERIMENT_KIND = T.EXPERIMENT_KIND  # MLflow's own experiment tag (re-exported: tracking.py named it)
MODEL_DEVELOPMENT = "custom_model_development"
DEFAULT_DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The explicit ``uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / DEFAULT_DB_FILE}"


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def embedded_database(uri: str) -> Path | None:
    """For a SQLite store, its database file; else None."""
    return _sqlite_path(uri)


def embedded_store_folder(uri: str) -> Path | None:
    """For a SQLite store, the folder holding its database (and its artifacts); else None."""
    db = _sqlite_path(uri)
    return db.resolve().parent if db else None


def local_artifact_root(uri: str) -> str | None:
    """For a SQLite store, the ``mlartifacts`` folder beside the database; else None.

    Remote servers choose their own artifact store (``--artifacts-destination``).
    """
    folder = embedded_store_folder(uri)
    return (folder / ARTIFACTS_DIR).as_uri() if folder else None


def prepare_store(uri: str) -> None:
    """Create a new SQLite store with its artifact root beside it (no-op otherwise).

    The store's built-in "Default" experiment takes its artifact location from
    the first process that creates the database; creating it here pins it.

    Safe for processes started at once (issue 20): each builds and migrates the
    database in a temporary file of its own beside it, then hard-links it into
    place only if no ``mlflow.db`` is there yet (atomic; the loser's copy is
    discarded). A store therefore appears complete or not at all: no two MLflow
    migrations ever run on one file (they failed with ``duplicate column name``),
    and a creator killed midway leaves no half-made ``mlflow.db``. Where the
    filesystem has no hard links, an exclusive lock on ``<db>.lock`` guards the
    move instead.
    """
    db = _sqlite_path(uri)
    if db is None or db.exists():
        return
    # heavy (MLflow, SQLAlchemy): imported on first use (tests/test_cli_startup.py)
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{db.name}.creating-", dir=db.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        store = SqlAlchemyStore(f"sqlite:///{tmp}", local_artifact_root(uri))
        store.engine.dispose()  # every change is in the file: nothing left in a connection or journal
        try:
            os.link(tmp, db)
        except FileExistsError:
            pass  # another process made it first: use theirs
        except OSError:
            _move_if_absent(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)


def _move_if_absent(tmp: Path, db: Path) -> None:
    """Rename ``tmp`` to ``db`` unless ``db`` exists, under an exclusive lock of ``<db>.lock``
    (for filesystems without hard links; no lock where ``fcntl`` is missing)."""
    try:
        import fcntl  # POSIX only
    except ImportError:
        fcntl = None
    with open(db.with_name(db.name + ".lock"), "a+b") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not db.exists():
            os.replace(tmp, db)


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast with one line if an HTTP tracking server does not answer.

    MLflow's own client retries for minutes before giving up.
    """
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        problem = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        # refused, reset, timed out, closed without (or in the middle of) a status line
        problem = " ".join(str(getattr(exc, "reason", exc)).split()) or type(exc).__name__
    raise TrackingServerUnreachable(
        f"cannot reach the MLflow tracking server at {uri} ({problem}); start it "
        "(`mlflow server ...`) or set MLFLOW_TRACKING_URI to a reachable server, "
        "or unset it to use the embedded SQLite store"
    )


def ensure_experiment(client, name: str, uri: str) -> str:
    """Return the id of experiment ``name``, creating it with a pinned artifact location."""
    from mlflow.exceptions import MlflowException  # heavy: imported on first use

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        # MLflow's own kind tag: a model-training experiment (the UI's "Model training" side), not GenAI.
        return client.create_experiment(
            name, artifact_location=local_artifact_root(uri), tags={EXPERIMENT_KIND: MODEL_DEVELOPMENT}
        )
    except MlflowException:
        # Another process created it between our lookup and our create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def local_path(location: str) -> Path | None:
    """The local path of a ``file:`` URI or plain path; None for any other scheme."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and location[1:3] in (":\\", ":/")):
        return Path(location)
    return None


def owns_location(uri: str, location: str) -> bool:
    """Whether bytes at ``location`` belong to the store at ``uri``, so that it may delete them.

    An embedded SQLite store owns only local files under the artifact folders
    beside its database (``mlartifacts/``, and ``mlruns/`` where plain MLflow
    or ``mlflow run`` put them), compared as written, not through symlinks
    (a mounted volume is fine): MLflow records absolute artifact paths, so a
    copied store (``cp -r``, also into a parent folder) still points at the
    original's files, which it must never delete. Servers and other schemes
    (``mlflow-artifacts:``, ``s3://``) own what they were given.
    """
    folder = embedded_store_folder(uri)
    path = local_path(location)
    if folder is None or path is None:
        return True
    here = os.path.normpath(str(path))
    for root in (folder / ARTIFACTS_DIR, folder / "mlruns"):
        root_text = os.path.normpath(str(root))
        if here == root_text or here.startswith(root_text + os.sep):
            return True
    return False
