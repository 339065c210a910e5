"""Retries of a background sender while the tracking server is unavailable.

Two threads send to the tracking server on the training's behalf: the checkpoint
queue's committer (``committer.py``) and a run's logging outbox
(``training/outbox.py``). Both follow one rule, kept here: after failed try
number ``n`` wait :func:`retry_delay` (1 s doubling to 30 s), note when the
outage began (warned once), and say how long it lasted when a try succeeds
again. Closing waits for the sender to drain, but gives up after ``bound``
seconds of outage, or of no progress at all when the server's ``/health``
does not answer either (a request hanging on a stopped server is an outage too:
MLflow's own client waits 120 s per try, and retries).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from ..errors import TrackingServerUnavailable

__all__ = ["RETRY_BACKOFF", "retry_delay", "Backoff"]

RETRY_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # seconds between tries while a server is unavailable


def retry_delay(attempt: int) -> float:
    """Seconds to wait after failed try number ``attempt`` (1, 2, ...): doubling from 1 s to 30 s."""
    return RETRY_BACKOFF[min(max(attempt, 1), len(RETRY_BACKOFF)) - 1]


class Backoff:
    """One sender's retry clock: failed tries, the outage's start, the last progress.

    Not locked itself: read and change it under the sender's condition ``cond``,
    which :meth:`pause` and :meth:`wait_drained` wait on.

    Args:
        cond: the sender's condition (notified whenever its work changes).
        probe: raises TrackingServerUnavailable when the server does not answer
            (:func:`~mlflow_ddsp.store.location.check_reachable`); None: a stall alone is an outage.
    """

    def __init__(self, cond: threading.Condition, probe: Callable[[], None] | None = None):
        self.cond = cond
        self.probe = probe
        self.attempt = 0  # failed tries in a row
        self.outage_since: float | None = None  # monotonic time of the first failed try of this outage
        self.last_progress = time.monotonic()

    @property
    def retrying(self) -> bool:
        """Whether the last try failed (the next one should probe the server first)."""
        return self.attempt > 0

    def failed(self) -> tuple[float, bool]:
        """A try failed on an outage: returns ``(seconds to wait, whether this outage just began)``."""
        self.attempt += 1
        first = self.outage_since is None
        if first:
            self.outage_since = time.monotonic()
        return retry_delay(self.attempt), first

    def succeeded(self) -> float | None:
        """A try succeeded: returns how long the outage lasted (seconds), None if there was none."""
        now = time.monotonic()
        lasted = None if self.outage_since is None else now - self.outage_since
        self.attempt, self.outage_since, self.last_progress = 0, None, now
        return lasted

    def pause(self, delay: float, stopping: Callable[[], bool]) -> None:
        """Wait ``delay`` seconds before the next try, or until ``stopping()`` (``cond`` held by the caller)."""
        self.cond.wait_for(stopping, timeout=delay)

    def wait_drained(self, drained: Callable[[], bool], bound: float | None) -> bool:
        """Wait until ``drained()`` (read under ``cond``); True if it gave up first.

        Gives up after ``bound`` seconds of outage, or of no progress when the probe
        says the server does not answer; ``bound`` None waits however long it takes.
        """
        started = time.monotonic()
        while True:
            with self.cond:
                if drained():
                    return False
                now, since = time.monotonic(), self.outage_since
                if bound is not None and since is not None and now - max(since, started) >= bound:
                    return True
                stalled = bound is not None and now - max(self.last_progress, started) >= bound
                if not stalled or since is not None:
                    self.cond.wait(timeout=0.5)
                    continue
                if self.probe is None:
                    return True
            try:  # stalled for `bound` s: the sender may be inside MLflow's retries of a dead server
                self.probe()
            except TrackingServerUnavailable:
                return True
            with self.cond:
                self.cond.wait(timeout=0.5)
