"""Stopping a checkpoint queue's parts: :func:`close` (commit what is pending, bounded
by an outage, then release the writer lease) and :func:`abort` (wait for nothing).

:meth:`CheckpointQueue.close <mlflow_ddsp.checkpoint.queue.CheckpointQueue.close>` and
:meth:`~mlflow_ddsp.checkpoint.queue.CheckpointQueue.abort` call these; what stays in
the spool is committed by the next start of a queue of the same registered model on
this machine (``recovery.py``).
"""

from __future__ import annotations

import logging

from ..errors import MlflowDdspError, TrackingServerUnavailable
from ..store.location import check_reachable
from .commit import QueueSetup
from .committer import Committer
from .pending import Pending
from .spool import SpooledSave
from .spool_writer import SpoolWriter

__all__ = ["close", "abort", "release_lease"]

log = logging.getLogger(__name__)


def close(setup: QueueSetup, pending: Pending, committer: Committer, writer: SpoolWriter,
          close_timeout: float) -> tuple[list[SpooledSave], BaseException | None]:  # fmt: skip
    """Wait for the spool to empty (giving up after ``close_timeout`` s of outage), stop the
    threads, release the lease (or leave it to expire when the server is away).

    Returns:
        What stays in the spool (said in one logged line), and the first failure of a
        save to raise (None: none), in that order.
    """
    error: BaseException | None = None
    try:
        writer.wait_written()
    except MlflowDdspError as exc:
        error = exc
    pending.resume()
    gave_up = pending.backoff.wait_drained(pending.drained, close_timeout)
    failure = pending.take_failure()
    left = _stop(pending)
    committer.join(timeout=1.0 if gave_up else None)
    writer.shutdown(wait=True)
    if left:
        why = (f"the tracking server {setup.store.tracking_uri} has been unavailable for {close_timeout:g} s"
               if gave_up else "a save failed")  # fmt: skip
        log.warning(
            "%s: %s: %s stay in the spool and are committed when a queue of %r starts on this machine "
            "(e.g. `mlflow-ddsp train` again)", setup.name, why, setup.spool.describe(left), setup.name,
        )  # fmt: skip
    release_lease(setup, gave_up)
    return left, error or failure


def abort(setup: QueueSetup, pending: Pending, writer: SpoolWriter) -> list[SpooledSave]:
    """Stop at once, waiting for nothing and calling no server; returns what stays in the spool.

    A save being written is left unfinished (the next start removes its temporary
    folder); the lease is abandoned (stale at once for the next start on this machine).
    """
    left = _stop(pending)
    writer.shutdown(wait=False)
    setup.lease.abandon()
    return left


def release_lease(setup: QueueSetup, gave_up: bool) -> None:
    """Release the writer lease; abandon it (stale at once for this machine) when the
    server is away, since releasing is a server call that could hang on MLflow's retries."""
    if not gave_up:
        try:
            check_reachable(setup.store.tracking_uri)
        except TrackingServerUnavailable as exc:
            log.warning("%s: the writer lease is left to expire: %s", setup.name, exc)
            gave_up = True
    if gave_up:
        setup.lease.abandon()
        return
    try:
        setup.lease.release()
    except MlflowDdspError as exc:
        log.warning("could not release the writer lease of %r: %s", setup.name, exc)


def _stop(pending: Pending) -> list[SpooledSave]:
    """Tell the committer to stop; returns the spool's entries not committed."""
    with pending.cond:
        pending.stopping = True
        left = pending.waiting()
        pending.cond.notify_all()
    return left
