"""Every MLflow call the checkpoint queue makes, with MLflow's errors wrapped.

The queue, the lease and the CLI talk to MLflow only through ``RegistryStore``.
It hides the differences between the embedded SQLite store and a server
(version numbers are ``int`` from one and ``str`` from the other) and turns
``MlflowException`` into our own errors at this edge.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple, Sequence

from .. import tags as T
from ..errors import (
    CheckpointIntegrityError,
    CheckpointNotFoundError,
    MlflowDdspError,
    NotAuthenticatedError,
    PermissionDeniedError,
    RegistryError,
    TrackingServerDisconnected,
    TrackingServerUnavailable,
    TrackingServerUnreachable,
    one_line,
)
from ..tracking import (
    ARTIFACTS_DIR,
    check_reachable,
    embedded_store_folder,
    ensure_experiment,
    prepare_store,
    resolve_tracking_uri,
)
from .files import MANIFEST_FILE, Manifest
from .records import CheckpointVersion, Integrity, QueueModel


def auxiliary_note(version: CheckpointVersion, differences: Sequence) -> str:
    """One line: which auxiliary files of ``version`` differ, and that its checkpoint is intact."""
    return (
        f"{version.label}: its checkpoint and config are intact, but "
        + "; ".join(d.describe() for d in differences)
        + " (an auxiliary file: the version is kept and resumed from; serving refuses it while that file differs)"
    )

__all__ = ["RegistryStore", "LoggedModelRef", "RunRecord"]

_PAGE = 1000
# Guards the process-wide tracking URI while a local registry needs it (see create_version).
_GLOBAL_URI_LOCK = threading.Lock()


class LoggedModelRef:
    """Where a checkpoint's files live: a LoggedModel id, its artifact URI, and
    the registered model whose queue wrote it (tag ``mlflow_ddsp.queue``; None if
    not written by a queue)."""

    __slots__ = ("model_id", "artifact_location", "queue", "tags")

    def __init__(self, model_id: str, artifact_location: str, queue: str | None = None, tags: Mapping[str, str] | None = None):
        self.model_id = model_id
        self.artifact_location = artifact_location
        self.queue = queue
        self.tags = dict(tags or {})


def _local_path(location: str) -> Path | None:
    """The local path of a ``file:`` URI or plain path; None for any other scheme."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and location[1:3] in (":\\", ":/")):
        return Path(location)
    return None


# MLflow's error codes for HTTP 401 and 403 (``databricks.proto``; RestException maps statuses to them).
_UNAUTHENTICATED = "UNAUTHENTICATED"
_PERMISSION_DENIED = "PERMISSION_DENIED"


def _auth_status(exc: BaseException) -> int | None:
    """401 or 403 when the server refused the request for its credentials or permissions, else None.

    Decided from MLflow's error code (REST calls) or the HTTP response's status
    (artifact transfers through the server's proxy raise ``requests.HTTPError``),
    never from message text.
    """
    code = getattr(exc, "error_code", None)
    if code == _UNAUTHENTICATED:
        return 401
    if code == _PERMISSION_DENIED:
        return 403
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if status in (401, 403) else None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it was raised from or while handling (``__cause__``/``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        yield current
        seen.add(id(current))
        current = current.__cause__ or current.__context__


def _broken_kinds() -> tuple[type, ...]:
    """Exception types meaning a connection broke after it was made: reset, closed without an
    answer or in the middle of one (``IncompleteRead``, ``RemoteDisconnected``, urllib3's
    ``ProtocolError``, requests' ``ChunkedEncodingError``; botocore's for a bucket reached directly)."""
    import http.client

    import requests
    import urllib3

    kinds: list[type] = [
        http.client.HTTPException, ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
        urllib3.exceptions.ProtocolError, requests.exceptions.ChunkedEncodingError,
    ]  # fmt: skip
    try:
        import botocore.exceptions as boto
    except ImportError:
        return tuple(kinds)
    return (*kinds, boto.HTTPClientError, boto.IncompleteReadError)


def _unreachable_kinds() -> tuple[type, ...]:
    """Exception types meaning the server could not be reached or did not answer in time."""
    import requests

    kinds: list[type] = [ConnectionError, TimeoutError, requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    try:
        import botocore.exceptions as boto
    except ImportError:
        return tuple(kinds)
    return (*kinds, boto.ConnectionError)


def _connection_failure(exc: BaseException) -> str | None:
    """``"broken"``, ``"unreachable"``, or None: how the connection to the server failed, if it did.

    Decided by type along the ``__cause__``/``__context__`` chain: MLflow's REST client
    raises a plain ``MlflowException`` while handling the ``requests`` error its retries
    ended with. Only MLflow's report of failed downloads keeps nothing but text
    (:func:`_download_failed_on_connection`). ``http.client.InvalidURL`` is a wrong URI, not an outage.
    """
    import http.client

    links = [e for e in _chain(exc) if not isinstance(e, http.client.InvalidURL)]
    if any(isinstance(e, _broken_kinds()) for e in links):
        return "broken"
    if any(isinstance(e, _unreachable_kinds()) for e in links):
        return "unreachable"
    if _download_failed_on_connection(exc):
        return "broken"
    return None


def _is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a failure to reach the server
    or a connection to it that broke: an outage (see :func:`_connection_failure`)."""
    return _connection_failure(exc) is not None


# MLflow's ArtifactRepository.download_artifacts collects the failures of its download threads
# and raises a new MlflowException outside any handler: the failures survive only as text.
_DOWNLOAD_FAILURES = "The following failures occurred while downloading"
# How urllib3, requests, http.client, the OS and botocore word a failed or broken connection.
_CONNECTION_WORDS = (
    "Connection broken:", "Connection aborted.", "Response ended prematurely", "IncompleteRead(",
    "Remote end closed connection", "Connection reset by peer", "Connection refused", "Read timed out",
    "Max retries exceeded", "Could not connect to the endpoint URL", "Connection was closed before we received",
    "Read timeout on endpoint URL", "Connect timeout on endpoint URL", "An error occurred while reading from response stream",
)  # fmt: skip


def _download_failed_on_connection(exc: BaseException) -> bool:
    """True for MLflow's text-only report of failed downloads when a failure was a connection's."""
    message = str(getattr(exc, "message", exc))
    return message.startswith(_DOWNLOAD_FAILURES) and any(w in message for w in _CONNECTION_WORDS)


def _server_error_status(exc: BaseException) -> int | None:
    """The HTTP 5xx status when the server failed the request (e.g. its database is down), else None.

    From MLflow's error code (``INTERNAL_ERROR``, ``TEMPORARILY_UNAVAILABLE``...
    map to 5xx) or, when MLflow's retries of a 5xx answer ran out, from the
    ``requests`` ``RetryError`` they ended with; never from message text.
    """
    import requests

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int) and status >= 500:
        return status
    get_status = getattr(exc, "get_http_status_code", None)
    if callable(get_status) and getattr(exc, "error_code", None) not in (None, "INTERNAL_ERROR"):
        status = get_status()
        if isinstance(status, int) and status >= 500:
            return status
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, requests.exceptions.RetryError):
            return 500
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _named_by(version: CheckpointVersion, exc: CheckpointNotFoundError) -> CheckpointNotFoundError:
    """``exc``'s message, starting with the version's label (once)."""
    message = str(exc)
    return CheckpointNotFoundError(message if message.startswith(version.label) else f"{version.label}: {message}")


def _unique_key_collision(exc: BaseException) -> bool:
    """Two writers inserted the same tag or alias row at once (MLflow's SQL store keeps only text):
    SQLite says ``(sqlite3.IntegrityError) UNIQUE constraint failed``, PostgreSQL
    ``(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint``."""
    text = str(exc)
    return "IntegrityError" in text or "UniqueViolation" in text or "duplicate key value violates unique" in text


class RunRecord(NamedTuple):
    """What deciding to continue a run needs: its place, status and tags (MLflow's strings)."""

    run_id: str
    experiment_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    lifecycle_stage: str  # active, deleted
    tags: dict
    start_time_ms: int


class RegistryStore:
    """MLflow tracking + model registry access for one tracking URI.

    Args:
        tracking_uri: explicit URI; default as in :func:`mlflow_ddsp.tracking.resolve_tracking_uri`.
    """

    def __init__(self, tracking_uri: str | None = None):
        from mlflow import MlflowClient

        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        check_reachable(self.tracking_uri)
        prepare_store(self.tracking_uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    # -- error translation -------------------------------------------------
    def _refused(self, action: str, status: int, needs: tuple[str, str] | None) -> RegistryError:
        """The one-line error for a request the server's auth refused (401/403)."""
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        if status == 401:
            who = f"the credentials of user {user!r}" if user else "a request without credentials"
            return NotAuthenticatedError(
                f"{action}: the tracking server {self.tracking_uri} refused {who} (HTTP 401); "
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a valid user"
            )
        who = f"user {user!r}" if user else "this user"
        lacks = f"the {needs[0]} permission on {needs[1]}" if needs else "the permission this needs"
        return PermissionDeniedError(
            f"{action}: {who} lacks {lacks} (HTTP 403); an MLflow admin can grant it "
            "(auth client `grant_user_permission`, or the UI)"
        )

    @contextlib.contextmanager
    def _calling(self, action: str, needs: tuple[str, str] | None = None) -> Iterator[None]:
        """Translate MLflow's errors raised inside into ours.

        Args:
            action: what was being done, for the message.
            needs: (MLflow permission, resource) the request needs, named when the server
                refuses it (HTTP 403), e.g. ``("EDIT", "registered model 'singer'")``.
        """
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            status = _auth_status(exc)
            if status:
                raise self._refused(action, status, needs) from exc
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise CheckpointNotFoundError(one_line(f"{action}: {exc.message}")) from exc
            outage = self._outage(action, exc, exc.message)
            if outage is not None:
                raise outage from exc
            raise RegistryError(one_line(f"{action}: {exc.message}")) from exc
        except OSError as exc:
            status = _auth_status(exc)
            if status:
                raise self._refused(action, status, needs) from exc
            outage = self._outage(action, exc, str(exc))
            if outage is not None:
                raise outage from exc
            raise RegistryError(one_line(f"{action}: {exc}")) from exc
        except MlflowDdspError:
            raise
        except Exception as exc:
            # Neither MLflow's nor an OSError: a bucket reached directly raises botocore's own.
            outage = self._outage(action, exc, f"{type(exc).__name__}: {exc}")
            if outage is None:
                raise
            raise outage from exc

    def _outage(self, action: str, exc: BaseException, detail: str) -> TrackingServerUnavailable | None:
        """The one-line outage error for ``exc`` (the same request may succeed later), or None.

        Every way a connection fails is an outage (issue 20): refused or timed out
        (:class:`TrackingServerUnreachable`), broken during the request or in the middle of
        the answer (:class:`TrackingServerDisconnected`), and HTTP 5xx answers.
        """
        failure = _connection_failure(exc)
        if failure == "broken":
            return TrackingServerDisconnected(one_line(
                f"{action}: the connection to the tracking server {self.tracking_uri} broke before the answer "
                f"was complete ({detail})"
            ))  # fmt: skip
        if failure == "unreachable":
            return TrackingServerUnreachable(one_line(
                f"{action}: tracking server {self.tracking_uri} is unreachable ({detail})"
            ))  # fmt: skip
        status = _server_error_status(exc)
        if status:
            return TrackingServerUnavailable(one_line(
                f"{action}: tracking server {self.tracking_uri} failed the request (HTTP {status}: {detail})"
            ))  # fmt: skip
        return None

    def _repo(self, artifact_uri: str):
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        return get_artifact_repository(artifact_uri, tracking_uri=self.tracking_uri)

    # -- experiments and runs ----------------------------------------------
    def experiment_id(self, name: str) -> str:
        with self._calling(f"open experiment {name!r}", needs=("EDIT", f"experiment {name!r}")):
            return ensure_experiment(self.client, name, self.tracking_uri)

    def foreign_experiment_location(self, experiment_id: str) -> str | None:
        """The experiment's artifact location if this store does not own it (a copied
        embedded store still pointing at the original's folder), else None.
        Servers own their locations: nothing is asked of them."""
        if embedded_store_folder(self.tracking_uri) is None:
            return None
        with self._calling(f"read experiment {experiment_id}", needs=("READ", f"experiment {experiment_id}")):
            location = self.client.get_experiment(experiment_id).artifact_location
        return None if self.owns_location(location) else location

    def experiment_of_run(self, run_id: str) -> str:
        with self._calling(f"look up run {run_id}"):
            return self.client.get_run(run_id).info.experiment_id

    def log_metrics(
        self, run_id: str, metrics: Mapping[str, float], step: int, model_id: str | None = None, *,
        synchronous: bool = True,
    ) -> None:  # fmt: skip
        """Log metrics on the run at ``step`` in one call; with ``model_id`` they are linked
        to that model too (the MLflow UI then compares checkpoints by them).

        ``synchronous=False`` hands them to MLflow's asynchronous logging queue: the
        caller does not wait on the server (see :meth:`flush_async_logging`)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step), model_id=model_id) for k, v in metrics.items()]
        with self._calling(f"log metrics to run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            self.client.log_batch(run_id, metrics=batch, synchronous=synchronous)

    def log_metric_points(self, run_id: str, points: Sequence[tuple[str, float, int, int]]) -> None:
        """Log ``(key, value, timestamp_ms, step)`` values on the run in one request (at most 1,000)."""
        from mlflow.entities import Metric

        batch = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in points]
        with self._calling(f"log metrics to run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            self.client.log_batch(run_id, metrics=batch)

    def create_run(self, experiment_id: str, run_name: str, tags: Mapping[str, str] | None = None) -> str:
        """A new run in ``experiment_id``; returns its id."""
        with self._calling(f"create run {run_name!r}", needs=("EDIT", f"experiment {experiment_id}")):
            return self.client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {})).info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Mark a run ``FINISHED``, ``FAILED`` or ``KILLED``."""
        with self._calling(f"end run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            self.client.set_terminated(run_id, status)

    def run_record(self, run_id: str) -> RunRecord | None:
        """The run's experiment, status, lifecycle and tags; None if it does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            with self._calling(f"read run {run_id}", needs=("READ", f"the experiment of run {run_id}")):
                raise
        return RunRecord(run.info.run_id, run.info.experiment_id, run.info.status, run.info.lifecycle_stage,
                         dict(run.data.tags), int(run.info.start_time or 0))  # fmt: skip

    def find_runs(self, experiment_id: str, tags: Mapping[str, str], max_results: int = 20) -> list[RunRecord]:
        """Live (not deleted) runs of ``experiment_id`` carrying every tag of ``tags``, newest start first."""
        from mlflow.entities import ViewType

        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        with self._calling(f"search runs of experiment {experiment_id}", needs=("READ", f"experiment {experiment_id}")):
            runs = self.client.search_runs([experiment_id], query, run_view_type=ViewType.ACTIVE_ONLY,
                                           max_results=max_results, order_by=["attributes.start_time DESC"])  # fmt: skip
        return [RunRecord(r.info.run_id, r.info.experiment_id, r.info.status, r.info.lifecycle_stage,
                          dict(r.data.tags), int(r.info.start_time or 0)) for r in runs]  # fmt: skip

    def reopen_run(self, run_id: str, drop_tags: Sequence[str] = ()) -> None:
        """Set a run's status back to RUNNING (a training continues it) and remove ``drop_tags`` from it."""
        with self._calling(f"reopen run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            self.client.update_run(run_id, status="RUNNING")
        tags = self.run_tags(run_id)
        for key in drop_tags:
            if key in tags:
                with self._calling(f"untag run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
                    self.client.delete_tag(run_id, key)

    def log_model_output(self, run_id: str, model_id: str, step: int) -> None:
        """Record LoggedModel ``model_id`` as an output of run ``run_id`` at ``step``: MLflow's own
        run -> model link (what ``mlflow.<flavor>.log_model`` writes), which fills the run page's
        "Logged models" (the UI reads ``run.outputs.model_outputs``). Idempotent: a link that
        exists is not written again (MLflow refuses a second one)."""
        from mlflow.entities import LoggedModelOutput

        if any(linked == model_id for linked, _ in self.run_model_outputs(run_id)):
            return
        with self._calling(f"link LoggedModel {model_id} to run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            self.client.log_outputs(run_id, [LoggedModelOutput(model_id, int(step))])

    def run_model_outputs(self, run_id: str) -> list[tuple[str, int]]:
        """``(model_id, step)`` of every LoggedModel recorded as an output of the run."""
        with self._calling(f"read run {run_id}", needs=("READ", f"the experiment of run {run_id}")):
            outputs = self.client.get_run(run_id).outputs
        return [(o.model_id, int(o.step)) for o in (outputs.model_outputs if outputs else [])]

    def log_model_params(self, model_id: str, params: Mapping[str, object]) -> None:
        """Params on a LoggedModel (the experiment's Models tab shows them as columns)."""
        with self._calling(f"log params to LoggedModel {model_id}", needs=("EDIT", f"the experiment of LoggedModel {model_id}")):
            self.client.log_model_params(model_id, {k: str(v) for k, v in params.items()})

    def run_tags(self, run_id: str) -> dict[str, str]:
        with self._calling(f"read run {run_id}", needs=("READ", f"the experiment of run {run_id}")):
            return dict(self.client.get_run(run_id).data.tags)

    def run_params(self, run_id: str) -> dict[str, str]:
        with self._calling(f"read run {run_id}", needs=("READ", f"the experiment of run {run_id}")):
            return dict(self.client.get_run(run_id).data.params)

    def set_run_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        if tags:
            with self._calling(f"tag run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
                self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, run_id: str, params: Mapping[str, object], *, value_limit: int = 6000) -> None:
        """Log params not yet on the run (a resumed run keeps its own), in batches of MLflow's limit (100);
        values are cut to ``value_limit`` characters (MLflow's limit)."""
        from mlflow.entities import Param

        with self._calling(f"log params to run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            existing = self.client.get_run(run_id).data.params
            batch = [Param(k, str(v)[:value_limit]) for k, v in params.items() if k not in existing]
            for i in range(0, len(batch), 100):
                self.client.log_batch(run_id, params=batch[i : i + 100])

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        with self._calling(f"log {artifact_file} to run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            self.client.log_text(run_id, text, artifact_file)

    def log_artifacts(self, run_id: str, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file or every file of a folder to the run's artifacts under ``artifact_path``."""
        with self._calling(f"upload {local_path} to run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            if Path(local_path).is_dir():
                self.client.log_artifacts(run_id, str(local_path), artifact_path)
            else:
                self.client.log_artifact(run_id, str(local_path), artifact_path)

    def log_image(self, run_id: str, image, key: str, step: int) -> None:
        """An image ``[H, W, C]`` as the run's step-indexed image ``key`` (the UI's slider)."""
        with self._calling(f"log image {key} to run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            self.client.log_image(run_id, image, key=key, step=step)

    def log_dataset(self, run_id: str, name: str, path: str, digest: str, context: str, n_files: int) -> None:
        """Record a local folder as the run's dataset input (name, source path, digest, context).

        Built from MLflow's public entities: a ``local`` source whose JSON is
        ``{"uri": <absolute path>}``, as ``mlflow.data``'s local-folder source writes it.
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag

        entity = Dataset(name=name, digest=digest[:36], source_type="local",
                         source=json.dumps({"uri": str(Path(path).resolve())}))  # fmt: skip
        tags = [InputTag("mlflow.data.context", context), InputTag(T.DATASET_FILES, str(n_files))]
        with self._calling(f"log dataset {name!r} to run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            self.client.log_inputs(run_id, datasets=[DatasetInput(entity, tags)])

    @staticmethod
    def flush_async_logging() -> None:
        """Wait until metrics handed to MLflow's asynchronous logging have been sent."""
        import mlflow

        mlflow.flush_async_logging()

    # -- registered models ---------------------------------------------------
    def ensure_registered_model(self, name: str, description: str) -> None:
        """Create ``name`` unless it exists; one that vanishes while being created is created again."""
        for _ in range(3):
            if self._create_registered_model(name, {}, description) != "vanished":
                return
        raise RegistryError(
            f"could not create registered model {name!r}: it vanished three times while being created; "
            "another process is deleting it"
        )

    def registered_model_exists(self, name: str) -> bool:
        try:
            self.registered_model_tags(name)
        except CheckpointNotFoundError:
            return False
        return True

    def registered_model_tags(self, name: str) -> dict[str, str]:
        with self._calling(f"read registered model {name!r}", needs=("READ", f"registered model {name!r}")):
            return dict(self.client.get_registered_model(name).tags)

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        from mlflow.exceptions import MlflowException

        # Two processes creating the same tag at once collide on the unique key (the
        # writer lease's binding, measured on SQLite); last writer wins, as for aliases.
        for attempt in range(3):
            try:
                self.client.set_registered_model_tag(name, key, value)
                return
            except MlflowException as exc:
                if not _unique_key_collision(exc) or attempt == 2:
                    with self._calling(f"tag registered model {name!r}", needs=("EDIT", f"registered model {name!r}")):
                        raise

    def registered_model_created(self, name: str) -> tuple[dict[str, str], int]:
        """Registered model ``name``'s tags and its creation time (the server's clock, ms since the epoch).

        The creation time is set by the server and cannot be written by any client
        (the writer lease binds its holder to it). Raises CheckpointNotFoundError if absent.
        """
        with self._calling(f"read registered model {name!r}", needs=("READ", f"registered model {name!r}")):
            rm = self.client.get_registered_model(name)
        return dict(rm.tags), int(rm.creation_timestamp or 0)

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        """Remove tag ``key`` from registered model ``name`` (an absent tag: nothing to do)."""
        with self._calling(f"untag registered model {name!r}", needs=("EDIT", f"registered model {name!r}")):
            self.client.delete_registered_model_tag(name, key)

    def try_create_registered_model(self, name: str, tags: Mapping[str, str], description: str) -> bool:
        """Create ``name`` atomically; False if it already exists (a unique-name mutex), or
        existed and vanished meanwhile (see :meth:`_create_registered_model`)."""
        return self._create_registered_model(name, tags, description) == "created"

    def _create_registered_model(self, name: str, tags: Mapping[str, str], description: str) -> str:
        """``"created"``, ``"exists"``, or ``"vanished"``: the name existed but was gone
        before the server could say so. MLflow's SQL store answers a duplicate insert by
        reading the existing model back, and a concurrent rename or delete in between
        (the lease's takeover, seen on PostgreSQL) turns that read into
        RESOURCE_DOES_NOT_EXIST. Nothing was created then; the caller decides again.
        """
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name, tags=dict(tags), description=description)
            return "created"
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_ALREADY_EXISTS":
                return "exists"
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return "vanished"
            with self._calling(f"create registered model {name!r}", needs=("USE", "the workspace (creating registered models)")):
                raise
        raise AssertionError("unreachable: _calling re-raises")

    def try_rename_registered_model(self, name: str, new_name: str) -> bool:
        """Rename atomically; False if ``name`` vanished first (someone else renamed it)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.rename_registered_model(name, new_name)
            return True
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS"):
                return False
            if "0 were matched" in str(exc) or "StaleData" in str(exc):
                return False  # lost a concurrent rename (PostgreSQL reports it this way)
            with self._calling(f"rename registered model {name!r}", needs=("EDIT", f"registered model {name!r}")):
                raise
        return False

    def delete_registered_model(self, name: str) -> None:
        with contextlib.suppress(CheckpointNotFoundError), self._calling(
            f"delete registered model {name!r}", needs=("MANAGE", f"registered model {name!r}")
        ):
            self.client.delete_registered_model(name)

    def record_experiment(self, name: str, experiment_id: str) -> list[str]:
        """Remember that queue ``name`` writes into ``experiment_id``; return all recorded ids.

        On a server the tag is written even when unchanged: it is the queue's first
        write, so a user without EDIT on the registered model is refused at start
        (:class:`PermissionDeniedError`), not at the first save.
        """
        recorded = self.experiment_ids(name)
        known = experiment_id in recorded
        if not known:
            recorded.append(experiment_id)
        if not known or self.tracking_uri.startswith(("http://", "https://")):
            self.set_registered_model_tag(name, T.EXPERIMENT_IDS, json.dumps(recorded))
        return recorded

    def experiment_ids(self, name: str) -> list[str]:
        try:
            value = self.registered_model_tags(name).get(T.EXPERIMENT_IDS, "[]")
            ids = json.loads(value)
            return [str(i) for i in ids] if isinstance(ids, list) else []
        except (CheckpointNotFoundError, ValueError):
            return []

    # -- aliases ------------------------------------------------------------
    def alias_version(self, name: str, alias: str) -> int | None:
        with self._calling(f"read alias {name}@{alias}", needs=("READ", f"registered model {name!r}")):
            aliases = self.client.get_registered_model(name).aliases
        version = aliases.get(alias)
        return int(version) if version is not None else None

    def registered_model(self, name: str) -> tuple[dict[str, str], dict[str, int]]:
        """Registered model ``name``'s tags, and its aliases -> version numbers, in one request."""
        with self._calling(f"read registered model {name!r}", needs=("READ", f"registered model {name!r}")):
            rm = self.client.get_registered_model(name)
        return dict(rm.tags), {alias: int(version) for alias, version in rm.aliases.items()}

    def set_alias(self, name: str, alias: str, version: int) -> None:
        from mlflow.exceptions import MlflowException

        # Two writers creating the same alias at once can collide on the unique
        # key (measured); one retry resolves it, last writer wins as usual.
        for attempt in range(3):
            try:
                self.client.set_registered_model_alias(name, alias, str(version))
                return
            except MlflowException as exc:
                if not _unique_key_collision(exc) or attempt == 2:
                    with self._calling(f"point alias {name}@{alias} at v{version}", needs=("EDIT", f"registered model {name!r}")):
                        raise

    def delete_alias(self, name: str, alias: str) -> None:
        with contextlib.suppress(CheckpointNotFoundError), self._calling(
            f"delete alias {name}@{alias}", needs=("MANAGE", f"registered model {name!r}")
        ):
            self.client.delete_registered_model_alias(name, alias)

    # -- model versions -----------------------------------------------------
    @staticmethod
    def _version(mv) -> CheckpointVersion:
        return CheckpointVersion(
            name=mv.name,
            version=int(mv.version),
            source=mv.source or "",
            run_id=mv.run_id or None,
            created_ms=int(mv.creation_timestamp or 0),
            tags=dict(mv.tags or {}),
            description=mv.description or "",
            aliases=tuple(mv.aliases or ()),
        )

    def list_versions(self, name: str) -> list[CheckpointVersion]:
        """Every live version of ``name``, lowest number first (empty if the model is absent)."""
        out: list[CheckpointVersion] = []
        token = None
        with self._calling(f"list versions of {name!r}", needs=("READ", f"registered model {name!r}")):
            while True:
                page = self.client.search_model_versions(
                    f"name = '{name}'", max_results=_PAGE, page_token=token
                )
                out += [self._version(mv) for mv in page]
                token = page.token
                if not token:
                    break
        return sorted(out, key=lambda v: v.version)

    def get_version(self, name: str, version: int) -> CheckpointVersion:
        with self._calling(f"read {name} v{version}", needs=("READ", f"registered model {name!r}")):
            return self._version(self.client.get_model_version(name, str(version)))

    def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        with self._calling(f"tag {name} v{version}", needs=("EDIT", f"registered model {name!r}")):
            self.client.set_model_version_tag(name, str(version), key, value)

    def delete_version_tag(self, name: str, version: int, key: str) -> None:
        with contextlib.suppress(CheckpointNotFoundError), self._calling(f"untag {name} v{version}", needs=("MANAGE", f"registered model {name!r}")):
            self.client.delete_model_version_tag(name, str(version), key)

    @contextlib.contextmanager
    def _global_uri_for_local_registry(self) -> Iterator[None]:
        """Point MLflow's process-wide tracking URI at this store for one call.

        MLflow's local (SQLite) registry resolves a ``models:/<id>`` source with a
        fresh ``MlflowClient()``, i.e. through the global tracking URI, not ours
        (a TODO in ``SqlAlchemyStore.create_model_version``). A server resolves it
        against its own store, so remote URIs need nothing.
        """
        if self.tracking_uri.startswith(("http://", "https://")):
            yield
            return
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        with _GLOBAL_URI_LOCK, _use_tracking_uri(self.tracking_uri):
            yield

    def create_version(
        self,
        name: str,
        files: LoggedModelRef,
        run_id: str | None,
        tags: Mapping[str, str],
        description: str,
    ) -> CheckpointVersion:
        with self._calling(f"register a version of {name!r}", needs=("EDIT", f"registered model {name!r}")), self._global_uri_for_local_registry():
            mv = self.client.create_model_version(
                name,
                source=f"models:/{files.model_id}",
                run_id=run_id,
                tags=dict(tags),
                description=description,
                model_id=files.model_id,
                await_creation_for=0,  # a models:/ source is READY at once
            )
        return self._version(mv)

    def delete_version(self, name: str, version: int) -> None:
        with contextlib.suppress(CheckpointNotFoundError), self._calling(
            f"delete {name} v{version}", needs=("MANAGE", f"registered model {name!r}")
        ):
            self.client.delete_model_version(name, str(version))

    # -- LoggedModels: a checkpoint's files ---------------------------------
    def create_files(
        self, experiment_id: str, name: str, run_id: str | None, tags: Mapping[str, str]
    ) -> LoggedModelRef:
        """Create a PENDING LoggedModel to hold one checkpoint's files."""
        with self._calling("create a LoggedModel for a checkpoint", needs=("EDIT", f"experiment {experiment_id}")):
            lm = self.client.create_logged_model(
                experiment_id, name=name, source_run_id=run_id, tags=dict(tags)
            )
        return LoggedModelRef(lm.model_id, lm.artifact_location, dict(tags).get(T.QUEUE), tags)

    def get_files(self, model_id: str) -> LoggedModelRef:
        with self._calling(f"read LoggedModel {model_id}", needs=("READ", f"the experiment of LoggedModel {model_id}")):
            lm = self.client.get_logged_model(model_id)
        return LoggedModelRef(lm.model_id, lm.artifact_location, (lm.tags or {}).get(T.QUEUE), lm.tags)

    def logged_model_metrics(self, model_id: str) -> dict[str, float]:
        """The metrics linked to a checkpoint's LoggedModel (``save(metrics=...)``), newest step wins."""
        with self._calling(f"read LoggedModel {model_id}", needs=("READ", f"the experiment of LoggedModel {model_id}")):
            metrics = self.client.get_logged_model(model_id).metrics or []
        out: dict[str, tuple[int, float]] = {}
        for m in metrics:
            if m.key not in out or m.step >= out[m.key][0]:
                out[m.key] = (m.step, m.value)
        return {k: v for k, (_, v) in out.items()}

    def link_version(self, model_id: str, name: str, version: int) -> None:
        """Tag the LoggedModel with MLflow's ``mlflow.modelVersions`` (what ``mlflow.register_model``
        writes): the UI's "Registered models" column then links it to its version."""
        value = json.dumps([{"name": name, "version": str(version)}])
        with self._calling(f"link LoggedModel {model_id} to {name} v{version}", needs=("EDIT", f"the experiment of LoggedModel {model_id}")):
            self.client.set_logged_model_tags(model_id, {T.MLFLOW_MODEL_VERSIONS: value})

    def set_description(self, name: str, version: int, description: str) -> None:
        with self._calling(f"describe {name} v{version}", needs=("EDIT", f"registered model {name!r}")):
            self.client.update_model_version(name, str(version), description=description)

    def owns_location(self, location: str) -> bool:
        """Whether bytes at ``location`` belong to this store, so that it may delete them.

        An embedded SQLite store owns only local files under the artifact folders
        beside its database (``mlartifacts/``, and ``mlruns/`` where plain MLflow
        or ``mlflow run`` put them), compared as written, not through symlinks
        (a mounted volume is fine): MLflow records absolute artifact paths, so a
        copied store (``cp -r``, also into a parent folder) still points at the
        original's files, which it must never delete. Servers and other schemes
        (``mlflow-artifacts:``, ``s3://``) own what they were given.
        """
        folder = embedded_store_folder(self.tracking_uri)
        path = _local_path(location)
        if folder is None or path is None:
            return True
        here = os.path.normpath(str(path))
        for root in (folder / ARTIFACTS_DIR, folder / "mlruns"):
            root_text = os.path.normpath(str(root))
            if here == root_text or here.startswith(root_text + os.sep):
                return True
        return False

    def upload(self, files: LoggedModelRef, local_path: str | os.PathLike) -> None:
        with self._calling(f"upload {Path(local_path).name} to {files.artifact_location}", needs=("EDIT", f"the experiment of LoggedModel {files.model_id}")):
            self._repo(files.artifact_location).log_artifact(str(local_path))

    def list_sizes(self, files: LoggedModelRef) -> dict[str, int]:
        """Top-level file name -> size in bytes, as the artifact store reports it."""
        with self._calling(f"list {files.artifact_location}", needs=("READ", f"the experiment of LoggedModel {files.model_id}")):
            infos = self._repo(files.artifact_location).list_artifacts()
        return {Path(i.path).name: int(i.file_size or 0) for i in infos if not i.is_dir}

    def finalize(self, files: LoggedModelRef) -> None:
        with self._calling(f"finalize LoggedModel {files.model_id}", needs=("EDIT", f"the experiment of LoggedModel {files.model_id}")):
            self.client.finalize_logged_model(files.model_id, "READY")

    def download(
        self,
        files: LoggedModelRef,
        names: Sequence[str],
        dst: str | os.PathLike,
        listed: Mapping[str, int] | None = None,
    ) -> Path:
        """Download the named files into ``dst``.

        Whether a file exists is decided from a listing of the folder
        (``listed``, or one made here), not from the text of a download error.

        Raises:
            CheckpointNotFoundError: a named file is not in the store.
        """
        listed = self.list_sizes(files) if listed is None else listed
        missing = [n for n in names if n not in listed]
        if missing:
            raise CheckpointNotFoundError(f"{', '.join(missing)} missing from {files.artifact_location}")
        repo = self._repo(files.artifact_location)
        for name in names:
            with self._calling(f"download {name} from {files.artifact_location}", needs=("READ", f"the experiment of LoggedModel {files.model_id}")):
                try:
                    repo.download_artifacts(name, dst_path=str(dst))
                except (FileNotFoundError, OSError) as exc:
                    if _is_connection_error(exc):
                        raise
                    raise CheckpointNotFoundError(
                        f"{name} is missing from {files.artifact_location}"
                    ) from exc
        return Path(dst)

    def read_manifest(
        self, files: LoggedModelRef, dst: str | os.PathLike, listed: Mapping[str, int] | None = None
    ) -> Manifest:
        path = self.download(files, [MANIFEST_FILE], dst, listed) / MANIFEST_FILE
        return Manifest.from_json(path.read_bytes(), source=f"{files.artifact_location}/{MANIFEST_FILE}")

    def delete_bytes(self, files: LoggedModelRef) -> None:
        """Free a LoggedModel's artifact bytes, including its now-empty folder.

        Registry and LoggedModel deletions are metadata only; this is what
        actually frees storage (locally and through ``--serve-artifacts``).
        """
        location = files.artifact_location.rstrip("/")
        parent, sep, leaf = location.rpartition(f"/models/{files.model_id}")
        with self._calling(f"delete files at {location}", needs=("MANAGE", f"the experiment of LoggedModel {files.model_id}")):
            if sep and leaf in ("", "/artifacts"):
                # <root>/models/<id>/artifacts: remove <id> itself, not just its contents.
                self._repo(f"{parent}/models").delete_artifacts(files.model_id)
            else:
                self._repo(location).delete_artifacts()

    def delete_record(self, model_id: str) -> None:
        with contextlib.suppress(CheckpointNotFoundError), self._calling(
            f"delete LoggedModel {model_id}", needs=("MANAGE", f"the experiment of LoggedModel {model_id}")
        ):
            self.client.delete_logged_model(model_id)

    def queue_models(self, queue: str, experiment_ids: Sequence[str]) -> list[QueueModel]:
        """Live LoggedModels tagged as written by ``queue`` in the given experiments."""
        if not experiment_ids:
            return []
        out: list[QueueModel] = []
        token = None
        with self._calling(f"list checkpoint files of {queue!r}", needs=("READ", f"experiments {', '.join(experiment_ids)}")):
            while True:
                page = self.client.search_logged_models(
                    list(experiment_ids),
                    filter_string=f"tags.`{T.QUEUE}` = '{queue}'",
                    max_results=_PAGE,
                    page_token=token,
                )
                out += [
                    QueueModel(
                        model_id=m.model_id,
                        status=str(getattr(m.status, "name", m.status)).upper(),
                        artifact_location=m.artifact_location,
                        created_ms=int(m.creation_timestamp or 0),
                        tags=dict(m.tags or {}),
                    )
                    for m in page
                ]
                token = page.token
                if not token:
                    break
        return out

    # -- integrity checks ---------------------------------------------------
    def files_of(self, version: CheckpointVersion) -> LoggedModelRef:
        if version.model_id is None:
            raise CheckpointNotFoundError(f"{version.label} was not written by mlflow-ddsp")
        return self.get_files(version.model_id)

    def check(self, version: CheckpointVersion) -> tuple[Integrity, str | None]:
        """Download ``version`` and check every byte (see :meth:`inspect`).

        Returns:
            ``(INTACT, None)``; ``(MISSING, why)`` when the store holds no file of
            it (deleted, or the store is not mounted); ``(DAMAGED, why)`` when an
            essential file (``model_<N>.pt``, ``config.yaml``) or the manifest is not
            as registered, or its LoggedModel is gone; ``(AUXILIARY, why)`` when only
            other files differ (issue 20: those never decide a checkpoint's fate).
            ``why`` is one line naming the file and, where it is there, both sha256.
        Raises:
            RegistryError: the store cannot be read (unreachable, no permission):
                nothing can be concluded.
        """
        import tempfile

        with tempfile.TemporaryDirectory(prefix="mlflow-ddsp-check-") as tmp:
            try:
                manifest, differences = self.inspect(version, tmp)
            except CheckpointIntegrityError as exc:
                return Integrity.DAMAGED, str(exc)
            except CheckpointNotFoundError as exc:
                if version.model_id is None:
                    return Integrity.DAMAGED, str(exc)
                try:
                    listed = self.list_sizes(self.files_of(version))
                except CheckpointNotFoundError:
                    return Integrity.DAMAGED, f"{version.label}: its LoggedModel {version.model_id} is gone"
                return (Integrity.DAMAGED if listed else Integrity.MISSING), f"{version.label}: {exc}"
        essential = [d for d in differences if d.name in manifest.essential_files]
        if essential:
            return Integrity.DAMAGED, f"{version.label}: " + "; ".join(d.describe() for d in essential)
        if differences:
            return Integrity.AUXILIARY, auxiliary_note(version, differences)
        return Integrity.INTACT, None

    def inspect(self, version: CheckpointVersion, dst: str | os.PathLike) -> tuple[Manifest, list]:
        """Download the files of ``version`` that are there into ``dst``; list those that differ.

        The manifest must match the sha256 recorded before its upload; every file it
        lists is then compared with it, a missing one included. Unlike
        :meth:`fetch_verified` (serving, export: every byte must match) nothing is
        raised for a file that differs: the caller decides (issue 20: only the
        essential files decide a checkpoint's fate).

        Returns:
            The manifest and a list of :class:`~mlflow_ddsp.checkpoint.files.FileDifference`.
        Raises:
            CheckpointNotFoundError: the manifest (or the LoggedModel) is gone.
            CheckpointIntegrityError: the manifest changed since registration.
        """
        from .files import compare_files, sha256_file

        try:
            files = self.files_of(version)
            listed = self.list_sizes(files)
            manifest = self.read_manifest(files, dst, listed)
        except CheckpointNotFoundError as exc:
            raise _named_by(version, exc) from exc
        digest = sha256_file(Path(dst) / MANIFEST_FILE)
        expected = version.manifest_sha256 or files.tags.get(T.MANIFEST_SHA256)
        if digest.sha256 != expected:
            raise CheckpointIntegrityError(
                f"{version.label}: manifest.json is {digest.size} bytes with sha256 {digest.sha256}, "
                f"expected sha256 {expected} (recorded at registration)"
            )
        present = [n for n in manifest.files if n in listed]
        try:
            self.download(files, present, dst, listed)
        except CheckpointNotFoundError:
            pass  # gone between the listing and the download: compare_files names it
        return manifest, compare_files(dst, manifest)

    def fetch_verified(self, version: CheckpointVersion, dst: str | os.PathLike) -> Manifest:
        """Download every file of ``version`` into ``dst`` and check it against its tags.

        The manifest is trusted only if its sha256 matches the one recorded in
        the database before its upload (a tag of the LoggedModel); every other
        file must then match the manifest.

        Raises:
            CheckpointNotFoundError: a file is gone (the message names the version and the file).
            CheckpointIntegrityError: a file differs from what was registered.
        """
        try:
            return self._fetch_verified(version, dst)
        except CheckpointNotFoundError as exc:
            raise _named_by(version, exc) from exc

    def _fetch_verified(self, version: CheckpointVersion, dst: str | os.PathLike) -> Manifest:
        from .files import sha256_file, verify_files

        files = self.files_of(version)
        listed = self.list_sizes(files)
        manifest = self.read_manifest(files, dst, listed)
        digest = sha256_file(Path(dst) / MANIFEST_FILE)
        # Recorded on the LoggedModel when it was created (on the version by older releases).
        expected = version.manifest_sha256 or files.tags.get(T.MANIFEST_SHA256)
        if digest.sha256 != expected:
            raise CheckpointIntegrityError(
                f"{version.label}: manifest.json changed since registration "
                f"(sha256 {digest.sha256[:12]}..., expected {str(expected)[:12]}...)"
            )
        self.download(files, [n for n in manifest.files], dst, listed)
        verify_files(dst, manifest, label=version.label)
        return manifest
