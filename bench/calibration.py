"""What every bench says about the machine it ran on, and a warning when a calibration is off.

Imported by every bench before torch: it sets ``OMP_WAIT_POLICY=PASSIVE`` unless
the environment chose ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` (the rule of
:func:`mlflow_ddsp.device.passive_openmp_waits`, repeated here because importing
``mlflow_ddsp`` loads torch). libgomp reads it once, when torch loads it. With its
default (spin up to 300,000 iterations before sleeping), torch's two threads
collapsed 5-30x on this project's shared 2-core hosts: a thread spinning at a
barrier takes the core from the thread it waits for (``mlflow_ddsp/device.py``
has the measurements). Child processes (upstream's trainer, servers) inherit it.

A bench prints :func:`machine` in its header and calls :func:`check` with each
calibration figure it measures (the work the rest of the run is sized by or
compared to) against what the README's "Measured" section got on an idle host: a
figure off by more than ``factor`` prints one ``WARNING: calibration off`` line
with both figures, so a collapsed run is never read as a result.
"""

from __future__ import annotations

import os

__all__ = ["WAITS", "check", "machine"]


def _passive_waits() -> str:
    chosen = [f"{key}={os.environ[key]}" for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if key in os.environ]
    if chosen:
        return ", ".join(chosen)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "OMP_WAIT_POLICY=PASSIVE"


#: How torch's OpenMP threads wait in this bench process (set at import, before torch loads).
WAITS = _passive_waits()


def machine() -> str:
    """``"2 cores, load average 0.4 / 1.2 / 2.0 (1, 5, 15 min), OMP_WAIT_POLICY=PASSIVE"``."""
    one, five, fifteen = os.getloadavg()
    return f"{os.cpu_count()} cores, load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1, 5, 15 min), {WAITS}"


def check(what: str, measured: float, expected: float, unit: str, *, source: str, higher_is_faster: bool = False,
          factor: float = 2.0) -> str | None:  # fmt: skip
    """Print and return a one-line warning if ``measured`` is off from ``expected`` by more than ``factor``.

    Args:
        what: the figure, e.g. ``"CombSubFast step (batch 2 x 0.5 s)"``.
        measured, expected: in ``unit``; ``expected`` from an idle host (``source`` says which).
        higher_is_faster: True for rates (steps/s, x real time), False for durations.
        factor: how far off (either way) counts as off.

    Returns:
        The warning line, or None when the figure is within ``factor``.
    """
    if not (measured > 0 and expected > 0):
        return None
    slower = expected / measured if higher_is_faster else measured / expected
    if 1 / factor <= slower <= factor:
        return None
    how = f"{slower:.1f}x slower" if slower > 1 else f"{1 / slower:.1f}x faster"
    line = (f"WARNING: calibration off: {what} measured {measured:.3g} {unit}, expected ~{expected:.3g} {unit} "
            f"({source}), {how}; {machine()}: figures from this run are not comparable to the README's")  # fmt: skip
    print(line, flush=True)
    return line
