"""Fault injection at the named points of the save protocol, for crash-safety tests.

Set ``MLFLOW_DDSP_CRASH_AT=<point>`` (or ``<point>@<step>`` to crash only while
saving that step) and the process SIGKILLs itself when it reaches the point:
no cleanup handlers, no flushing, exactly like a power cut or an OOM kill.
``MLFLOW_DDSP_FAIL_AT`` (same syntax) raises :class:`InjectedFault` there
instead, as a server that stops answering mid-save would: the process lives on
and the failure surfaces at the next ``save`` or ``close``.
The points are the steps of the commit order documented in ``commit.py``
(:data:`CRASH_POINTS`, in that order). A save that stores a weight file it depends on
(its step "depend", between ``after_spool`` and ``after_create``) passes, when the store
has no copy yet, ``dependencies.py``'s own points, with the save's step:
``dependency_after_create`` (PENDING, nothing uploaded), ``dependency_after_upload``,
``dependency_after_verify`` (size verified, still PENDING) and ``dependency_after_finalize``
(READY: stored), listed as ``dependencies.DEPENDENCY_CRASH_POINTS``.
"""

from __future__ import annotations

import os
import signal

from ..errors import RegistryError

__all__ = ["CRASH_ENV", "FAIL_ENV", "CRASH_POINTS", "InjectedFault", "crash_point"]

CRASH_ENV = "MLFLOW_DDSP_CRASH_AT"
FAIL_ENV = "MLFLOW_DDSP_FAIL_AT"


class InjectedFault(RegistryError):
    """Raised at a protocol point named by ``MLFLOW_DDSP_FAIL_AT`` (tests only)."""

CRASH_POINTS = (
    "after_write",  # files written to a temporary folder of the local spool
    "after_spool",  # ... renamed to a spool entry: durable on this machine
    "after_create",  # LoggedModel created (PENDING), nothing uploaded
    "mid_upload",  # checkpoint uploaded, manifest not yet
    "after_upload",  # every file uploaded, not yet verified
    "after_finalize",  # LoggedModel READY, no model version yet
    "after_register",  # model version created: the commit point
    "after_unspool",  # the spool entry removed
    "after_alias",  # alias moved to the new version
    "after_delete_version",  # previous rolling version deleted from the registry
    "after_delete_bytes",  # ... and its artifact bytes
    "after_delete_record",  # ... and its LoggedModel record: save complete
)


def _named(env: str, point: str, step: int) -> bool:
    wanted = os.environ.get(env)
    if not wanted:
        return False
    name, _, at_step = wanted.partition("@")
    return name == point and (not at_step or int(at_step) == step)


def crash_point(point: str, step: int) -> None:
    """SIGKILL this process if ``MLFLOW_DDSP_CRASH_AT`` names ``point`` (and ``step``);
    raise InjectedFault if ``MLFLOW_DDSP_FAIL_AT`` does."""
    if _named(CRASH_ENV, point, step):
        os.kill(os.getpid(), signal.SIGKILL)
    if _named(FAIL_ENV, point, step):
        raise InjectedFault(f"injected failure at {point} (step {step}, {FAIL_ENV})")
