"""Processes of this machine: a leaf module (standard library only) that checkpoint/, serving/ and training/ share."""

from __future__ import annotations

import os

__all__ = ["pid_running"]


def pid_running(pid: int) -> bool:
    """Whether some process of this PID namespace has ``pid`` (signal 0; another user's counts).

    For temporary folders named after the process that owns them (spool and
    serving folders); a lease holder needs more
    (``checkpoint/lease.py``'s ``_process_alive`` also rules out pid reuse and
    other namespaces).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
