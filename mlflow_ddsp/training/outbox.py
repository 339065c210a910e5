"""Deliver a training run's logging in the background, through server outages.

The training loop hands metrics and validation media to a :class:`RunOutbox`
and goes on; one thread sends them in the order they were logged. While the
tracking server is unreachable or failing (HTTP 5xx) the thread backs off
(1 s doubling to 30 s) and tries the same item again, so what is logged during
an outage arrives when the server is back, with the timestamps of when it was
logged. Memory is bounded: beyond ``max_points`` metric values or ``max_media``
media items the oldest are dropped and counted; :meth:`RunOutbox.close` waits a
bounded time and reports in one line what could not be delivered. A request
that neither answers nor fails (a stopped or wedged server; MLflow's own
client waits 120 s per try, and retries) counts as an outage once nothing was
delivered for the bound and the server's ``/health`` does not answer either.

Any other failure of an item (e.g. a rejected value) drops that item, counted
and logged once, and delivery goes on.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from ..checkpoint.backoff import Backoff
from ..errors import TrackingServerUnavailable

__all__ = ["RunOutbox", "DeliveryReport", "MAX_POINTS", "MAX_MEDIA"]

log = logging.getLogger(__name__)

MAX_POINTS = 200_000  # metric values held while the server is away (~20 MB)
MAX_MEDIA = 16  # spectrogram/audio deliveries held (each a few hundred kB)
_BATCH = 1000  # MLflow's limit of metrics per log_batch request


@dataclass(frozen=True)
class DeliveryReport:
    """What :meth:`RunOutbox.close` could not deliver (all zero: everything arrived)."""

    dropped_points: int = 0
    dropped_media: int = 0
    undelivered_points: int = 0
    undelivered_media: int = 0
    failed_items: int = 0

    @property
    def complete(self) -> bool:
        return not (self.dropped_points or self.dropped_media or self.undelivered_points
                    or self.undelivered_media or self.failed_items)  # fmt: skip

    def describe(self) -> str:
        points = self.dropped_points + self.undelivered_points
        media = self.dropped_media + self.undelivered_media
        parts = []
        if points:
            parts.append(f"{points:,} metric value{'s' if points != 1 else ''}")
        if media:
            parts.append(f"{media} validation media item{'s' if media != 1 else ''}")
        text = " and ".join(parts) + " could not be delivered while the tracking server was unavailable (lost)"
        if self.failed_items:
            text = (text + "; " if parts else "") + f"{self.failed_items} logging call(s) were refused by the server"
        return text


class RunOutbox:
    """An ordered, bounded queue of one run's logging, sent by a background thread.

    Args:
        send_points: sends ``[(key, value, timestamp_ms, step)]`` (at most 1,000) in one request.
        max_points: metric values held at most; the oldest beyond it are dropped.
        max_media: media items held at most; the oldest beyond it are dropped.
        probe: raises TrackingServerUnavailable when the server does not answer
            (e.g. :func:`~mlflow_ddsp.store.location.check_reachable`); asked by :meth:`flush`
            when nothing was delivered for its ``timeout``. None: such a stall is an outage.
    """

    def __init__(self, send_points: Callable[[list[tuple[str, float, int, int]]], None], *,
                 max_points: int = MAX_POINTS, max_media: int = MAX_MEDIA, name: str = "run",
                 probe: Callable[[], None] | None = None):  # fmt: skip
        self._send_points = send_points
        self._max_points = max_points
        self._max_media = max_media
        self._cond = threading.Condition()
        self._backoff = Backoff(self._cond, probe)  # the retry rule every background sender follows
        # One queue keeps the logging order: ("points", [..]) or ("call", description, fn, is_media).
        self._items: collections.deque = collections.deque()
        self._points = 0
        self._media = 0
        self._dropped_points = 0
        self._dropped_media = 0
        self._failed = 0
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"mlflow-ddsp-outbox-{name}", daemon=True)
        self._thread.start()

    # -- producer side (the training loop) ------------------------------------
    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
        """Queue ``metrics`` at ``step``, stamped ``timestamp_ms`` (ms since the epoch; default now);
        never waits on the server."""
        now = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        points = [(str(k), float(v), now, int(step)) for k, v in metrics.items()]
        if not points:
            return
        with self._cond:
            self._items.append(("points", points))
            self._points += len(points)
            while self._points > self._max_points:
                self._drop_oldest("points")
            self._cond.notify_all()

    def call(self, description: str, fn: Callable[[], None], *, media: bool = False) -> None:
        """Queue ``fn`` (one logging request, e.g. an image upload), to run in order."""
        with self._cond:
            self._items.append(("call", description, fn, media))
            if media:
                self._media += 1
                while self._media > self._max_media:
                    self._drop_oldest("media")
            self._cond.notify_all()

    def _drop_oldest(self, kind: str) -> None:
        for i, item in enumerate(self._items):
            if i == 0 and self._busy:
                continue  # being sent
            if kind == "points" and item[0] == "points":
                del self._items[i]
                self._points -= len(item[1])
                self._dropped_points += len(item[1])
                return
            if kind == "media" and item[0] == "call" and item[3]:
                del self._items[i]
                self._media -= 1
                self._dropped_media += 1
                return
        # Only the item being sent is left of that kind: let the bound slip by one item.
        if kind == "points":
            self._max_points = max(self._max_points, self._points)
        else:
            self._max_media = max(self._max_media, self._media)

    @property
    def outage_since(self) -> float | None:
        """When the current outage began (monotonic seconds); None while the server answers."""
        return self._backoff.outage_since

    # -- the sender thread ---------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stopping:
                    self._cond.wait()
                if not self._items:
                    return
                item = self._items[0]
                if item[0] == "points":  # merge queued points into one request
                    points = list(item[1])
                    merged = 1
                    while (merged < len(self._items) and self._items[merged][0] == "points"
                           and len(points) + len(self._items[merged][1]) <= _BATCH):  # fmt: skip
                        points.extend(self._items[merged][1])
                        merged += 1
                self._busy = True
            try:
                if item[0] == "points":
                    for start in range(0, len(points), _BATCH):
                        self._send_points(points[start : start + _BATCH])
                else:
                    item[2]()
            except TrackingServerUnavailable as exc:
                with self._cond:
                    self._busy = False
                    delay, first = self._backoff.failed()
                    if first:
                        log.warning("run logging waits for the tracking server (%s); training goes on", exc)
                    self._backoff.pause(delay, lambda: self._stopping)
                continue
            except Exception as exc:  # noqa: BLE001 - any failure of one item: skipped, counted, logged once
                with self._cond:
                    self._failed += 1
                    first = self._failed == 1
                if first:
                    log.warning("run logging: %s failed and is skipped: %s",
                                "metrics" if item[0] == "points" else item[1], exc)  # fmt: skip
                merged = 1 if item[0] == "call" else merged
            with self._cond:
                self._busy = False
                lasted = self._backoff.succeeded()
                if lasted is not None:
                    log.warning("run logging resumed after %.0f s", lasted)
                if item[0] == "points":
                    for _ in range(merged):
                        self._points -= len(self._items.popleft()[1])
                else:
                    self._items.popleft()
                    if item[3]:
                        self._media -= 1
                self._cond.notify_all()

    # -- end -----------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is sent; False if ``timeout`` s of outage passed first.

        Also False when nothing was delivered for ``timeout`` s and the probe says the
        server does not answer (a request hanging on a stopped server is an outage too).
        """
        return not self._backoff.wait_drained(lambda: not self._items, timeout)

    def close(self, timeout: float) -> DeliveryReport:
        """Deliver what is queued, waiting at most ``timeout`` s of outage; stop; report."""
        self.flush(timeout)
        with self._cond:
            self._stopping = True
            report = DeliveryReport(
                dropped_points=self._dropped_points, dropped_media=self._dropped_media,
                undelivered_points=self._points, undelivered_media=self._media, failed_items=self._failed,
            )  # fmt: skip
            self._items.clear()
            self._cond.notify_all()
        self._thread.join(timeout=1.0)
        if not report.complete:
            log.warning("%s", report.describe())
        return report
