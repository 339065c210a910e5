"""Progress of long work: a tqdm bar on a terminal, a log line every so often elsewhere.

tqdm draws nothing when stderr is not a terminal (``disable=None``), so under
``mlflow run``, CI or ``nohup`` hours of training or preprocessing printed nothing
between checkpoints. :class:`Progress` keeps the bar for terminals and otherwise
logs one line (INFO, logger ``mlflow_ddsp.progress``) at most every
``MLFLOW_DDSP_PROGRESS_SECONDS`` seconds (default 30; 0: at every update)::

    training: step 1200/20000 (6%), loss=0.412, epoch=3, 1.83 step/s, ETA 2h51m
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from .errors import ConfigError

__all__ = ["DEFAULT_INTERVAL_SECONDS", "INTERVAL_ENV", "Progress", "format_duration", "progress_interval"]

log = logging.getLogger(__name__)

INTERVAL_ENV = "MLFLOW_DDSP_PROGRESS_SECONDS"
DEFAULT_INTERVAL_SECONDS = 30.0


def progress_interval() -> float:
    """Seconds between progress lines when not on a terminal (``MLFLOW_DDSP_PROGRESS_SECONDS``).

    Raises:
        ConfigError: the variable is not a number >= 0.
    """
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{INTERVAL_ENV}={text!r} must be a number of seconds >= 0 (default {DEFAULT_INTERVAL_SECONDS:g})")
    return value


def format_duration(seconds: float) -> str:
    """``75`` -> ``'1m15s'``, ``10260`` -> ``'2h51m'``, ``9`` -> ``'9s'``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """tqdm-like progress (``update``, ``set_postfix``, ``close``; a context manager).

    Args:
        desc: what is being done (``training``, ``preprocess``).
        total: units of work in all (None: unknown, no percentage or ETA).
        initial: units already done (a resumed run's step); the rate counts only new ones.
        unit: ``step``, ``file``, ``segment``.
        enabled: False: report nothing at all.
        terminal: draw a tqdm bar; default: whether ``stream`` (stderr) is a terminal.
        interval: seconds between log lines off a terminal; default :func:`progress_interval`.
        clock: monotonic seconds (tests pass their own instead of sleeping).
        stream: where the bar goes (default stderr); lines go to the logger.
        leave: keep the finished bar on the terminal.
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        *,
        initial: int = 0,
        unit: str = "step",
        enabled: bool = True,
        terminal: bool | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        stream: TextIO | None = None,
        leave: bool = True,
    ) -> None:
        self.desc, self.total, self.unit, self.n = desc, total, unit, initial
        self._initial = initial
        self._clock = clock
        self._postfix: dict[str, Any] = {}
        self._bar = None
        self._lines = False
        if not enabled:
            return
        stream = stream if stream is not None else sys.stderr
        if terminal is None:
            terminal = bool(getattr(stream, "isatty", lambda: False)())
        if terminal:
            from tqdm import tqdm

            self._bar = tqdm(
                initial=initial, total=total, unit=unit, desc=desc, file=stream, dynamic_ncols=True, leave=leave
            )
        else:
            self._lines = True
            self._interval = progress_interval() if interval is None else float(interval)
            self._started = self._last = clock()

    def set_postfix(self, refresh: bool = False, **fields: Any) -> None:
        """Values shown with the count (e.g. ``loss='0.412'``); call before :meth:`update`."""
        self._postfix = fields
        if self._bar is not None:
            self._bar.set_postfix(refresh=refresh, **fields)

    def update(self, n: int = 1) -> None:
        """``n`` more units done; off a terminal, log a line when the interval has passed."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines:
            now = self._clock()
            if now - self._last >= self._interval:
                self._last = now
                log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """``desc: step N/TOTAL (P%), key=value..., R unit/s, ETA T``."""
        now = self._clock() if now is None else now
        count = f"{self.unit} {self.n}" + (f"/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else "")
        parts = [count, *(f"{k}={v}" for k, v in self._postfix.items())]
        elapsed = now - self._started if self._lines else 0.0
        done = self.n - self._initial
        if elapsed > 0 and done > 0:
            rate = done / elapsed
            parts.append(f"{rate:.3g} {self.unit}/s")
            if self.total:
                parts.append(f"ETA {format_duration(max(0, self.total - self.n) / rate)}")
        return f"{self.desc}: {', '.join(parts)}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
