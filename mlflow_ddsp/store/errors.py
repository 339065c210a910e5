"""The one translation of MLflow's errors into mlflow-ddsp's (:mod:`mlflow_ddsp.errors`).

Decided, in this order, from what MLflow and the libraries under it give as data:

1. MLflow's error code (``MlflowException.error_code``): ``UNAUTHENTICATED`` / ``PERMISSION_DENIED``
   (HTTP 401/403), ``RESOURCE_DOES_NOT_EXIST``, the 5xx codes;
2. the HTTP status of a ``requests`` response (artifact transfers through the server's proxy);
3. the exception types along the ``__cause__``/``__context__`` chain (a connection refused,
   timed out, reset, or cut in the middle of an answer; ``requests``' ``RetryError`` after 5xx).

Where MLflow keeps nothing but text, one small function per string recognises it, each
pinned by a contract test of the same name in ``tests/test_mlflow_contract.py`` that
provokes the real MLflow error: :func:`_download_failed_on_connection`,
:func:`_unique_key_collision`, :func:`_lost_concurrent_rename`.
"""

from __future__ import annotations

import contextlib
import http.client
import os
from typing import Iterator

from ..errors import (
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

__all__ = ["calling", "error_code", "is_connection_error", "outage", "refused"]

# MLflow's error codes (``databricks.proto``; RestException maps HTTP statuses to them).
UNAUTHENTICATED = "UNAUTHENTICATED"  # HTTP 401
PERMISSION_DENIED = "PERMISSION_DENIED"  # HTTP 403
DOES_NOT_EXIST = "RESOURCE_DOES_NOT_EXIST"
ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
INTERNAL_ERROR = "INTERNAL_ERROR"


def error_code(exc: BaseException) -> str | None:
    """MLflow's error code of ``exc`` (``RESOURCE_DOES_NOT_EXIST``...), None for other exceptions."""
    return getattr(exc, "error_code", None)


def _auth_status(exc: BaseException) -> int | None:
    """401 or 403 when the server refused the request for its credentials or permissions, else None.

    Decided from MLflow's error code (REST calls) or the HTTP response's status
    (artifact transfers through the server's proxy raise ``requests.HTTPError``),
    never from message text.
    """
    code = error_code(exc)
    if code == UNAUTHENTICATED:
        return 401
    if code == PERMISSION_DENIED:
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
    # requests/urllib3 come with MLflow; imported on first use like it (tests/test_cli_startup.py).
    import requests
    import urllib3

    kinds: list[type] = [
        http.client.HTTPException, ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
        urllib3.exceptions.ProtocolError, requests.exceptions.ChunkedEncodingError,
    ]  # fmt: skip
    try:
        import botocore.exceptions as boto  # optional extra: only with an S3 artifact store
    except ImportError:
        return tuple(kinds)
    return (*kinds, boto.HTTPClientError, boto.IncompleteReadError)


def _unreachable_kinds() -> tuple[type, ...]:
    """Exception types meaning the server could not be reached or did not answer in time."""
    import requests  # comes with MLflow; imported on first use

    kinds: list[type] = [ConnectionError, TimeoutError, requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    try:
        import botocore.exceptions as boto  # optional extra: only with an S3 artifact store
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
    links = [e for e in _chain(exc) if not isinstance(e, http.client.InvalidURL)]
    if any(isinstance(e, _broken_kinds()) for e in links):
        return "broken"
    if any(isinstance(e, _unreachable_kinds()) for e in links):
        return "unreachable"
    if _download_failed_on_connection(exc):
        return "broken"
    return None


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a failure to reach the server
    or a connection to it that broke: an outage (see :func:`_connection_failure`)."""
    return _connection_failure(exc) is not None


_is_connection_error = is_connection_error  # the name tests/test_mlflow_contract.py pins

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
    """True for MLflow's text-only report of failed downloads when a failure was a connection's.

    Pinned by ``tests/test_mlflow_contract.py::test_download_failed_on_connection``."""
    message = str(getattr(exc, "message", exc))
    return message.startswith(_DOWNLOAD_FAILURES) and any(w in message for w in _CONNECTION_WORDS)


def _unique_key_collision(exc: BaseException) -> bool:
    """Two writers inserted the same tag or alias row at once (MLflow's SQL store keeps only text):
    SQLite says ``(sqlite3.IntegrityError) UNIQUE constraint failed``, PostgreSQL
    ``(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint``.

    Pinned by ``tests/test_mlflow_contract.py::test_unique_key_collision``."""
    text = str(exc)
    return "IntegrityError" in text or "UniqueViolation" in text or "duplicate key value violates unique" in text


def _lost_concurrent_rename(exc: BaseException) -> bool:
    """A rename found its row gone between MLflow's read and its update: SQLAlchemy's
    ``StaleDataError`` (``expected to update 1 row(s); 0 were matched``), which MLflow's SQL
    store passes on as a BAD_REQUEST with only the text (seen on PostgreSQL under a lease takeover).

    Pinned by ``tests/test_mlflow_contract.py::test_lost_concurrent_rename``."""
    text = str(exc)
    return "0 were matched" in text or "StaleData" in text


def _server_error_status(exc: BaseException) -> int | None:
    """The HTTP 5xx status when the server failed the request (e.g. its database is down), else None.

    From MLflow's error code (``INTERNAL_ERROR``, ``TEMPORARILY_UNAVAILABLE``...
    map to 5xx) or, when MLflow's retries of a 5xx answer ran out, from the
    ``requests`` ``RetryError`` they ended with; never from message text.
    """
    import requests  # comes with MLflow; imported on first use

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int) and status >= 500:
        return status
    get_status = getattr(exc, "get_http_status_code", None)
    if callable(get_status) and error_code(exc) not in (None, INTERNAL_ERROR):
        status = get_status()
        if isinstance(status, int) and status >= 500:
            return status
    if any(isinstance(e, requests.exceptions.RetryError) for e in _chain(exc)):
        return 500
    return None


def refused(tracking_uri: str, action: str, status: int, needs: tuple[str, str] | None) -> RegistryError:
    """The one-line error for a request the server's auth refused (401/403)."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if status == 401:
        who = f"the credentials of user {user!r}" if user else "a request without credentials"
        return NotAuthenticatedError(
            f"{action}: the tracking server {tracking_uri} refused {who} (HTTP 401); "
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a valid user"
        )
    who = f"user {user!r}" if user else "this user"
    lacks = f"the {needs[0]} permission on {needs[1]}" if needs else "the permission this needs"
    return PermissionDeniedError(
        f"{action}: {who} lacks {lacks} (HTTP 403); an MLflow admin can grant it "
        "(auth client `grant_user_permission`, or the UI)"
    )


def outage(tracking_uri: str, action: str, exc: BaseException, detail: str) -> TrackingServerUnavailable | None:
    """The one-line outage error for ``exc`` (the same request may succeed later), or None.

    Every way a connection fails is an outage (issue 20): refused or timed out
    (:class:`TrackingServerUnreachable`), broken during the request or in the middle of
    the answer (:class:`TrackingServerDisconnected`), and HTTP 5xx answers.
    """
    failure = _connection_failure(exc)
    if failure == "broken":
        return TrackingServerDisconnected(one_line(
            f"{action}: the connection to the tracking server {tracking_uri} broke before the answer "
            f"was complete ({detail})"
        ))  # fmt: skip
    if failure == "unreachable":
        return TrackingServerUnreachable(one_line(
            f"{action}: tracking server {tracking_uri} is unreachable ({detail})"
        ))  # fmt: skip
    status = _server_error_status(exc)
    if status:
        return TrackingServerUnavailable(one_line(
            f"{action}: tracking server {tracking_uri} failed the request (HTTP {status}: {detail})"
        ))  # fmt: skip
    return None


def _translated(tracking_uri: str, action: str, exc: Exception, detail: str, needs) -> MlflowDdspError:
    """Ours for ``exc`` (MLflow's or an OSError): refused, not found, an outage, else RegistryError."""
    status = _auth_status(exc)
    if status:
        return refused(tracking_uri, action, status, needs)
    if error_code(exc) == DOES_NOT_EXIST:
        return CheckpointNotFoundError(one_line(f"{action}: {detail}"))
    return outage(tracking_uri, action, exc, detail) or RegistryError(one_line(f"{action}: {detail}"))


@contextlib.contextmanager
def calling(tracking_uri: str, action: str, needs: tuple[str, str] | None = None) -> Iterator[None]:
    """Translate MLflow's errors raised inside into ours.

    Args:
        tracking_uri: the store's URI, named in the messages.
        action: what was being done, for the message.
        needs: (MLflow permission, resource) the request needs, named when the server
            refuses it (HTTP 403), e.g. ``("EDIT", "registered model 'singer'")``.
    Raises:
        NotAuthenticatedError, PermissionDeniedError: HTTP 401/403.
        CheckpointNotFoundError: ``RESOURCE_DOES_NOT_EXIST``.
        TrackingServerUnavailable (and its kinds): an outage.
        RegistryError: any other MLflow error or OSError.
    """
    from mlflow.exceptions import MlflowException  # heavy: imported on first use (tests/test_cli_startup.py)

    try:
        yield
    except MlflowException as exc:
        raise _translated(tracking_uri, action, exc, exc.message, needs) from exc
    except OSError as exc:
        raise _translated(tracking_uri, action, exc, str(exc), needs) from exc
    except MlflowDdspError:
        raise
    except Exception as exc:
        # Neither MLflow's nor an OSError: a bucket reached directly raises botocore's own.
        ours = outage(tracking_uri, action, exc, f"{type(exc).__name__}: {exc}")
        if ours is None:
            raise
        raise ours from exc
