"""The committer: one background thread that carries out steps 2-8 of the commit
order (``commit.py``'s module docstring) for the spool's entries, in step order.

Where it stands is one explicit record, :class:`CommitterState`:

    Idle                          nothing being committed; the last commit (if any) is settled
    Committing(step)              steps 2-6 of the spool's entry ``step`` (create ... register)
    Settling(step, version, link) ``version`` is registered (past the commit point); left to do:
                                  its links (``link``; None once written), then the plan (7-8)
    Outage(since, settling)       the server has been unavailable since ``since`` (monotonic s);
                                  ``settling`` is what to finish first when it answers (None: the spool)

A failure other than an outage leaves the state where it was (a Settling stays
Settling: the next try finishes it) and is held in :class:`Pending` until the
facade raises it at the next ``save``, ``flush`` or ``close``.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from ..errors import LeaseLostError, TrackingServerUnavailable
from ..store import CheckpointVersion
from ..store.location import check_reachable
from .backoff import RETRY_BACKOFF
from .commit import Committed, QueueSetup, commit_entry, link, set_aside_all, settle
from .pending import Committing, CommitterState, Idle, Outage, Pending, Settling
from .spool import SpooledSave
from .spool_writer import lower_priority

__all__ = ["Idle", "Committing", "Settling", "Outage", "CommitterState", "Pending", "Committer"]

log = logging.getLogger(__name__)


class Committer:
    """The committer thread of one queue (see the module docstring)."""

    def __init__(self, setup: QueueSetup, pending: Pending, crash_hook: Callable[[int], Callable[[str], None]]):
        self.setup = setup
        self.pending = pending
        self.crash_hook = crash_hook
        # A daemon: a process exiting during an outage must not hang in MLflow's request
        # retries; dying mid-commit is a crash the commit order is designed for.
        self._thread = threading.Thread(target=self._run, name=f"mlflow-ddsp-commit-{setup.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    # -- one entry, in the caller's thread or the committer's ----------------
    def commit_now(self, entry: SpooledSave, **options) -> CheckpointVersion | None:
        """Steps 2-8 for ``entry``, synchronously (start-up recovery, ``register_file``)."""
        version = self._commit(entry, **options)
        self.finish()
        return version

    def _commit(self, entry: SpooledSave, *, spooled: bool = True, **options) -> CheckpointVersion | None:
        result = commit_entry(self.setup, entry, self.crash_hook(entry.step), spooled=spooled,
                              unspool=lambda e, v: self._unspool(e, v, spooled), forget=self._forget,
                              **options)  # fmt: skip
        if result is None:
            return None
        self._settle_next(result)
        return result.version

    def _unspool(self, entry: SpooledSave, version: CheckpointVersion, spooled: bool) -> None:
        """After the commit point: remember the version, take the entry out of the spool."""
        p = self.pending
        with p.cond:
            p.last_version = version
            p.known_version = max(p.known_version, version.version)
            p.committed_step = entry.step
            p.state = Settling(entry.step, version, None)
            if spooled:
                p.spooled.pop(entry.step, None)
        if spooled:
            self.setup.spool.remove(entry)

    def _settle_next(self, result: Committed) -> None:
        with self.pending.cond:
            settling = self.pending.settling
            if settling is not None and settling.version == result.version:
                self.pending.state = Settling(settling.step, result.version, result.link)

    def _forget(self, entry: SpooledSave) -> None:
        with self.pending.cond:
            self.pending.spooled.pop(entry.step, None)

    def finish(self) -> None:
        """What is left of the registered step, in order: links, then the plan; each once."""
        p = self.pending
        with p.cond:
            settling = p.settling
        if settling is None:
            return
        if settling.link is not None:
            link(self.setup, settling.link)
            settling = Settling(settling.step, settling.version, None)
            with p.cond:
                p.state = settling
        settle(self.setup, self.crash_hook(settling.step))
        with p.cond:
            p.state = Idle()

    # -- the thread ----------------------------------------------------------
    def _run(self) -> None:
        lower_priority()
        while True:
            job = self._next_job()
            if job is None:
                return
            entry, step = job
            try:
                if self.pending.backoff.retrying:
                    check_reachable(self.setup.store.tracking_uri)  # a cheap probe before MLflow's long retries
                version = self._commit(entry) if entry is not None else None
                self.finish()
            except TrackingServerUnavailable as exc:
                self._outage(exc)
                continue
            except BaseException as exc:  # noqa: BLE001 - handed to the caller at save/flush/close
                self._failed(step, exc)
                continue
            self._succeeded(step, version)

    def _next_job(self) -> tuple[SpooledSave | None, int | None] | None:
        """Wait for work; None once stopping. Finishing a registered step comes first."""
        p = self.pending
        with p.cond:
            while not p.stopping and (p.failure is not None or p.held or p.paused or not p.has_work()):
                p.cond.wait()
            if p.stopping:
                return None
            settling = p.settling
            if settling is not None:
                p.state = settling
                return None, settling.step
            if not p.spooled:
                return None, None
            entry = min(p.spooled.values(), key=lambda e: e.step)
            p.state = Committing(entry.step)
            return entry, entry.step

    def _outage(self, exc: TrackingServerUnavailable) -> None:
        p = self.pending
        with p.cond:
            delay, first = p.backoff.failed()
            p.state = Outage(p.backoff.outage_since, p.settling)
            waiting = p.waiting()
            attempt = p.backoff.attempt
            p.cond.notify_all()
        if first or attempt % 10 == 0:
            log.warning(
                "%s: %s; %s wait%s; training goes on, retrying (every %g s at most)",
                self.setup.name, exc, self.setup.spool.describe(waiting) if waiting else "the last save's plan",
                "" if len(waiting) == 1 else "s", RETRY_BACKOFF[-1],
            )  # fmt: skip
        with p.cond:
            p.backoff.pause(delay, lambda: p.stopping)

    def _failed(self, step: int | None, exc: BaseException) -> None:
        p = self.pending
        if isinstance(exc, LeaseLostError):  # a fenced writer's uncommitted saves leave the spool
            with p.cond:
                entries = p.waiting()
                p.spooled.clear()
            set_aside_all(self.setup, entries, exc)
        with p.cond:
            p.state = p.settling or Idle()
            p.failure = (step, exc)
            future = p.futures.pop(step, None) if step is not None else None
            p.cond.notify_all()
        if future is not None and not future.done():
            future.set_exception(exc)

    def _succeeded(self, step: int | None, version: CheckpointVersion | None) -> None:
        p = self.pending
        with p.cond:
            p.state = p.settling or Idle()
            lasted = p.backoff.succeeded()
            future = p.futures.pop(step, None) if step is not None else None
            last = p.last_version
            p.cond.notify_all()
        if lasted is not None:
            log.warning("%s: the tracking server answers again after %.0f s; committing the spool",
                        self.setup.name, lasted)  # fmt: skip
        if future is not None and not future.done():
            future.set_result(version if version is not None else last)
