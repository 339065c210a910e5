"""One writer per registered model: a lease held in the model registry itself.

MLflow has no compare-and-set, but registered model names are unique and a
rename is atomic. The lease for ``voice`` is a registered model named
``voice.writer-lease`` whose tags name the holder:

* acquire: create it. If it exists and its holder is alive, fail fast
  (``LeaseHeldError``) unless told to take over;
* take over (a stale holder, or ``takeover=True``): rename the old lease to a
  unique name, then create ours. Of two processes taking over at once only one
  rename succeeds; the loser retries from the start and finds the winner's
  lease alive;
* hold: a heartbeat thread renews a timestamp tag; before every alias move the
  queue calls :meth:`WriterLease.check`, so a process whose lease was taken
  over stops writing (``LeaseLostError``) instead of fighting the new holder;
* release: delete it.

A holder is stale when its heartbeat is older than its ttl, or at once when it
ran on this machine and its process is gone (a crash, SIGKILL): a crashed
training run restarts without waiting.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Mapping

from .. import tags as T
from ..errors import CheckpointNotFoundError, LeaseHeldError, LeaseLostError, MlflowDdspError
from .registry import RegistryStore

__all__ = ["WriterLease", "LeaseHolder", "lease_model_name", "DEFAULT_LEASE_TTL"]

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = 120.0
_SUFFIX = ".writer-lease"
_ACQUIRE_ATTEMPTS = 5


def lease_model_name(name: str) -> str:
    return name + _SUFFIX


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    """Process start time in clock ticks since boot (Linux), '' if unknown/absent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may contain spaces; fields after ')' are fixed.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _process_identity(pid: int) -> str:
    ticks = _start_ticks(pid)
    return f"{_boot_id()}:{ticks}" if ticks else ""


def _process_alive(pid: int, identity: str) -> bool | None:
    """Whether process ``pid`` of this machine still runs; None if we cannot tell."""
    if identity and _boot_id() and identity.startswith(_boot_id() + ":"):
        # Same machine and boot: the pid is the same process only if its start time matches.
        return _process_identity(pid) == identity
    if identity:
        return None  # another boot of this host name, or another container sharing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease, parsed from the lease model's tags."""

    owner: str
    host: str
    pid: int
    process: str
    heartbeat: float
    ttl: float

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> "LeaseHolder":
        def number(key: str, default: float) -> float:
            try:
                return float(tags.get(key, default))
            except ValueError:
                return default

        return cls(
            owner=tags.get(T.LEASE_OWNER, ""),
            host=tags.get(T.LEASE_HOST, "?"),
            pid=int(number(T.LEASE_PID, -1)),
            process=tags.get(T.LEASE_PROCESS, ""),
            heartbeat=number(T.LEASE_HEARTBEAT, 0.0),
            ttl=number(T.LEASE_TTL, DEFAULT_LEASE_TTL),
        )

    def is_stale(self, now: float) -> bool:
        if self.host == socket.gethostname() and self.pid > 0:
            alive = _process_alive(self.pid, self.process)
            if alive is not None:
                return not alive
        return now - self.heartbeat > self.ttl

    def describe(self, now: float) -> str:
        return f"{self.host} pid {self.pid} (last heartbeat {max(0.0, now - self.heartbeat):.0f} s ago)"


class WriterLease:
    """The right to write checkpoints into one registered model.

    Args:
        store: registry access.
        name: the registered model the lease protects.
        ttl: seconds without a heartbeat after which another machine may take over.
        takeover: take the lease even from a live holder (it is fenced off at its
            next alias move).
    """

    def __init__(self, store: RegistryStore, name: str, *, ttl: float = DEFAULT_LEASE_TTL, takeover: bool = False):
        if ttl <= 0:
            raise ValueError(f"lease ttl={ttl!r} must be > 0 seconds")
        self.store = store
        self.name = name
        self.lock_name = lease_model_name(name)
        self.ttl = float(ttl)
        self.takeover = takeover
        self.owner = uuid.uuid4().hex
        self._held = False
        self._lost: str | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # -- public -------------------------------------------------------------
    @property
    def held(self) -> bool:
        return self._held and self._lost is None

    def acquire(self) -> None:
        """Take the lease or raise LeaseHeldError naming the live holder."""
        for _ in range(_ACQUIRE_ATTEMPTS):
            if self.store.try_create_registered_model(self.lock_name, self._tags(), self._description()):
                self._held = True
                self._start_heartbeat()
                return
            try:
                holder = LeaseHolder.from_tags(self.store.registered_model_tags(self.lock_name))
            except CheckpointNotFoundError:
                continue  # released between our create and our read: try again
            now = time.time()
            stale = holder.is_stale(now)
            if not stale and not self.takeover:
                raise LeaseHeldError(
                    f"registered model {self.name!r} is being written by {holder.describe(now)}; "
                    f"stop that process, wait for its lease to expire (ttl {holder.ttl:.0f} s), "
                    "or take over with takeover=True (CLI: --takeover)"
                )
            reason = "stale" if stale else "live (takeover requested)"
            # Atomic: of several processes taking over, exactly one rename succeeds.
            retired = f"{self.lock_name}.retired-{uuid.uuid4().hex[:12]}"
            if self.store.try_rename_registered_model(self.lock_name, retired):
                log.warning("taking over the %s writer lease of %r from %s", reason, self.name, holder.describe(now))
                self.store.delete_registered_model(retired)
        raise LeaseHeldError(
            f"could not acquire the writer lease of {self.name!r} after {_ACQUIRE_ATTEMPTS} attempts: "
            "other processes keep taking it"
        )

    def check(self) -> None:
        """Raise LeaseLostError unless this process still holds the lease."""
        if not self._held:
            raise LeaseLostError(f"the writer lease of {self.name!r} is not held by this process")
        if self._lost is None:
            self._lost = self._why_lost()
        if self._lost is not None:
            raise LeaseLostError(self._lost)

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._held and self._why_lost() is None:
            self.store.delete_registered_model(self.lock_name)
        self._held = False

    # -- internals ----------------------------------------------------------
    def _tags(self) -> dict[str, str]:
        pid = os.getpid()
        return {
            T.LEASE_OWNER: self.owner,
            T.LEASE_HOST: socket.gethostname(),
            T.LEASE_PID: str(pid),
            T.LEASE_PROCESS: _process_identity(pid),
            T.LEASE_HEARTBEAT: f"{time.time():.3f}",
            T.LEASE_TTL: f"{self.ttl:g}",
            T.LEASE_TAKEOVER: str(self.takeover).lower(),
        }

    def _description(self) -> str:
        return (
            f"Writer lease of {self.name!r}, held by {socket.gethostname()} pid {os.getpid()} "
            "while it trains (mlflow-ddsp). Deleted when training ends; a stale lease is "
            "taken over automatically."
        )

    def _why_lost(self) -> str | None:
        try:
            tags = self.store.registered_model_tags(self.lock_name)
        except CheckpointNotFoundError:
            return f"the writer lease of {self.name!r} was removed by another process"
        if tags.get(T.LEASE_OWNER) != self.owner:
            holder = LeaseHolder.from_tags(tags)
            return (
                f"the writer lease of {self.name!r} was taken over by {holder.describe(time.time())}; "
                "this process stopped writing checkpoints"
            )
        return None

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"mlflow-ddsp-lease-{self.name}", daemon=True
        )
        self._heartbeat.start()

    def _beat(self) -> None:
        # Event.wait doubles as the interval timer and the stop signal.
        while not self._stop.wait(self.ttl / 4):
            try:
                self._lost = self._why_lost()
                if self._lost is not None:
                    log.error("%s", self._lost)
                    return
                self.store.set_registered_model_tag(self.lock_name, T.LEASE_HEARTBEAT, f"{time.time():.3f}")
            except MlflowDdspError as exc:  # a flaky server must not kill the heartbeat
                log.warning("writer lease heartbeat for %r failed: %s", self.name, exc)
