"""What a checkpoint queue's parts share: the committer's state, the spool's entries,
the futures of saves, and a failure waiting to be raised; all under one condition.

The committer's state (``committer.py`` says what each means) is one record:
``Idle``, ``Committing(step)``, ``Settling(step, version, link)`` or
``Outage(since, settling)``.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Union

from ..errors import CheckpointSaveError, LeaseLostError
from ..store import CheckpointVersion
from .backoff import Backoff
from .commit import Link
from .spool import SpooledSave

__all__ = ["Idle", "Committing", "Settling", "Outage", "CommitterState", "Pending", "NEW"]

NEW = object()  # Pending.saved_already: a step not saved yet


@dataclass(frozen=True)
class Idle:
    pass


@dataclass(frozen=True)
class Committing:
    step: int


@dataclass(frozen=True)
class Settling:
    step: int
    version: CheckpointVersion
    link: Link | None


@dataclass(frozen=True)
class Outage:
    since: float
    settling: Settling | None


CommitterState = Union[Idle, Committing, Settling, Outage]


class Pending:
    """What the facade, the spool writer and the committer share, under one condition ``cond``."""

    def __init__(self, probe: Callable[[], None] | None):
        self.cond = threading.Condition()
        self.state: CommitterState = Idle()
        self.backoff = Backoff(self.cond, probe)
        self.spooled: dict[int, SpooledSave] = {}  # written, not committed
        self.futures: dict[int, Future] = {}  # step -> what save() returned
        self.failure: tuple[int | None, BaseException] | None = None  # surfaces at save/flush/close
        self.held = False  # a failure was raised: no retry until the next save, flush or close
        self.paused = False  # register_file commits in the caller's thread
        self.stopping = False
        self.committed_step: int | None = None  # registered by this queue
        self.known_version = 0  # the newest version number this writer knows (its saves' base)
        self.last_version: CheckpointVersion | None = None

    @property
    def settling(self) -> Settling | None:
        """The registered step whose links or plan are not done yet, if any."""
        state = self.state
        return state if isinstance(state, Settling) else state.settling if isinstance(state, Outage) else None

    @property
    def in_flight(self) -> int | None:
        return self.state.step if isinstance(self.state, Committing) else None

    def has_work(self) -> bool:
        return bool(self.spooled or self.settling is not None)

    def busy(self, writing: bool) -> bool:
        """Whether a save is not committed yet (``writing``: one is being written to the spool)."""
        with self.cond:
            return bool(self.spooled) or self.in_flight is not None or writing

    def drained(self) -> bool:
        return not self.has_work() or self.failure is not None

    def waiting(self) -> list[SpooledSave]:
        return sorted(self.spooled.values(), key=lambda e: e.step)

    def saved_already(self, step: int, restored_step: int | None):
        """For a save of ``step``: :data:`NEW` if it was not saved yet; else what ``save``
        returns, None or the future of that step (committed, restored or spooled already).

        A step registered whose plan failed, or spooled whose commit failed, is tried
        again (its future is returned): nothing is written twice.
        """
        with self.cond:
            if step == self.committed_step:
                settling = self.settling
                if settling is None or settling.step != step:
                    return None
                self.held = False  # its plan failed: apply it again, and follow that
                self.cond.notify_all()
                return self.futures.setdefault(step, Future())
            if step == restored_step:
                return None
            if step in self.spooled:  # saved already, waiting in the spool
                if step in self.futures:
                    return None
                self.held = False  # its commit failed: try again, and follow that
                self.cond.notify_all()
                return self.futures.setdefault(step, Future())
        return NEW

    def resume(self) -> None:
        """Let the committer try again (a save, flush or close after a failure)."""
        with self.cond:
            if self.held:
                self.held = False
                self.cond.notify_all()

    # -- failures, raised in the caller's thread --------------------------------
    def raise_failure(self) -> None:
        """Raise a background failure once; the committer tries again at the next save, flush or close.

        Raises:
            CheckpointSaveError: a save failed (it stays in the spool).
            LeaseLostError: another process took over the registered model.
        """
        with self.cond:
            failure, self.failure = self.failure, None
            if failure is not None:
                self.held = True
        if failure is not None:
            raise save_error(*failure)

    def take_failure(self) -> BaseException | None:
        """The failure not raised yet, as raised, cleared (for ``close``)."""
        with self.cond:
            failure, self.failure = self.failure, None
        return None if failure is None else save_error(*failure)

    def wait_drained(self) -> None:
        """Wait (however long) until nothing is left to commit, or a save failed; raise that."""
        self.resume()
        with self.cond:
            self.cond.wait_for(self.drained)
        self.raise_failure()


def save_error(step: int | None, exc: BaseException) -> BaseException:
    """The error a background failure is raised as in the caller's thread."""
    if isinstance(exc, LeaseLostError):
        return exc
    what = f"the checkpoint of step {step}" if step is not None else "a checkpoint"
    error = CheckpointSaveError(f"saving {what} failed: {exc}")
    error.__cause__ = exc
    return error
