"""One writer per registered model: a lease held in the model registry itself.

MLflow has no compare-and-set, but registered model names are unique and a
rename is atomic. The lease for ``voice`` is a registered model named
``voice.writer-lease`` whose tags name the holder:

* acquire: create it. If it exists and its holder is alive, fail fast
  (``LeaseHeldError``) unless told to take over. A registered model of that
  name without our marker tag (``mlflow_ddsp.lease``) is someone's model, never
  a lease: it is refused, never renamed or deleted;
* take over (a stale holder, or ``takeover=True``): rename the old lease to a
  name derived from its holder (``.retired-<owner>``; of several processes
  taking over one holder only one rename succeeds), check that what was renamed
  is the holder judged stale (its owner id), then create ours. The renamed
  lease stays as a tombstone while we hold the lease and is deleted at release. If another process took over in
  between, what was renamed is that process's live lease: it is renamed back
  and the attempt starts again (the live holder sees its lease missing only for
  that moment, and confirms a loss only after reading again);
* hold: a heartbeat thread renews a timestamp tag; before every alias move the
  queue calls :meth:`WriterLease.check`, so a process whose lease was taken
  over stops writing (``LeaseLostError``) instead of fighting the new holder;
* release: delete it.

A holder is stale when its heartbeat is older than its ttl, or at once when it
ran on this machine, in this PID namespace, and its process is gone (a crash,
SIGKILL): a crashed training run restarts without waiting. Containers sharing a
host name (host networking) have their own PID namespaces; where the namespace
cannot be compared, the holder is treated as another machine's (ttl).
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
_LOSS_CONFIRMATIONS = (0.2, 0.5, 1.0)  # seconds between re-reads before a missing lease counts as lost


def _safe(owner: str) -> str:
    return "".join(c for c in owner if c.isalnum())[:16]


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


def _pid_namespace() -> str:
    """This process's PID namespace (``pid:[4026531836]``), '' where it cannot be read."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def pid_running(pid: int) -> bool:
    """Whether some process of this PID namespace has ``pid`` (signal 0; another user's counts).

    For temporary folders named after the process that owns them; a lease holder
    needs more (:func:`_process_alive` also rules out pid reuse and other namespaces).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_alive(pid: int, identity: str, namespace: str) -> bool | None:
    """Whether process ``pid`` of this machine still runs; None if we cannot tell.

    A pid means the same process only within one PID namespace (containers
    sharing a host name have their own) and one boot; its start time rules out
    pid reuse.
    """
    here = _pid_namespace()
    if not namespace or not here or namespace != here:
        return None
    if not identity or not _boot_id() or not identity.startswith(_boot_id() + ":"):
        return None  # another boot of this host name
    return _process_identity(pid) == identity


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease, parsed from the lease model's tags."""

    owner: str
    host: str
    pid: int
    process: str
    heartbeat: float
    ttl: float
    namespace: str = ""

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
            namespace=tags.get(T.LEASE_PID_NAMESPACE, ""),
        )

    def is_stale(self, now: float) -> bool:
        if self.host == socket.gethostname() and self.pid > 0:
            alive = _process_alive(self.pid, self.process, self.namespace)
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
        self._tombstone: str | None = None  # the lease we took over, renamed; deleted at release
        self._held = False
        self._lost: str | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # -- public -------------------------------------------------------------
    @property
    def held(self) -> bool:
        return self._held and self._lost is None

    def acquire(self) -> "WriterLease":
        """Take the lease (returns self) or raise LeaseHeldError naming the live holder."""
        try:
            return self._acquire()
        except BaseException:
            if self._tombstone is not None:  # we renamed a stale lease but lost the create
                self.store.delete_registered_model(self._tombstone)
                self._tombstone = None
            raise

    def _acquire(self) -> "WriterLease":
        for _ in range(_ACQUIRE_ATTEMPTS):
            if self.store.try_create_registered_model(self.lock_name, self._tags(), self._description()):
                self._held = True
                self._start_heartbeat()
                return self
            try:
                tags = self.store.registered_model_tags(self.lock_name)
            except CheckpointNotFoundError:
                continue  # released between our create and our read: try again
            self._refuse_foreign(self.lock_name, tags)
            holder = LeaseHolder.from_tags(tags)
            now = time.time()
            stale = holder.is_stale(now)
            if not stale and not self.takeover:
                raise LeaseHeldError(
                    f"registered model {self.name!r} is being written by {holder.describe(now)}; "
                    f"stop that process, wait for its lease to expire (ttl {holder.ttl:.0f} s), "
                    "or take over with takeover=True (CLI: --takeover)"
                )
            reason = "stale" if stale else "live (takeover requested)"
            # Atomic: of several processes taking over the same holder, exactly one
            # rename succeeds, since they all rename to the name of that holder.
            # The renamed lease stays as a tombstone while the winner holds the
            # lease, so a process that read the old holder late cannot rename the
            # winner's lease to that name either.
            retired = f"{self.lock_name}.retired-{_safe(holder.owner) or uuid.uuid4().hex[:12]}"
            if not self.store.try_rename_registered_model(self.lock_name, retired):
                continue
            # Between our read and our rename another process may have taken over:
            # then we renamed its live lease. Put it back and start again.
            renamed = self.store.registered_model_tags(retired)
            if renamed.get(T.LEASE_MARKER) != T.LEASE_MARKER_VALUE or renamed.get(T.LEASE_OWNER) != holder.owner:
                if not self.store.try_rename_registered_model(retired, self.lock_name):
                    log.error("could not put back the writer lease of %r renamed to %r", self.name, retired)
                continue
            log.warning("taking over the %s writer lease of %r from %s", reason, self.name, holder.describe(now))
            older = renamed.get(T.LEASE_TOMBSTONE)
            if older and older.startswith(self.lock_name + ".retired-"):
                self.store.delete_registered_model(older)  # the tombstone the old holder kept
            if self._tombstone is not None:
                self.store.delete_registered_model(self._tombstone)  # an earlier attempt's
            self._tombstone = retired
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
            if self._tombstone is not None:
                self.store.delete_registered_model(self._tombstone)
        self._held = False

    def abandon(self) -> None:
        """Stop the heartbeat without waiting for it and without a server call.

        For a server that does not answer: the lease stays in the registry, stale
        at once for a next start on this machine (this process is gone by then)
        and after its ttl for other machines.
        """
        self._stop.set()
        self._held = False

    # -- internals ----------------------------------------------------------
    def _refuse_foreign(self, name: str, tags: Mapping[str, str]) -> None:
        if tags.get(T.LEASE_MARKER) != T.LEASE_MARKER_VALUE:
            raise LeaseHeldError(
                f"registered model {name!r} exists but is not an mlflow-ddsp writer lease (it has no "
                f"{T.LEASE_MARKER} tag); mlflow-ddsp needs that name to lock {self.name!r}: rename that "
                "model, or train into another registered model"
            )

    def _tags(self) -> dict[str, str]:
        pid = os.getpid()
        return {
            T.LEASE_MARKER: T.LEASE_MARKER_VALUE,
            T.LEASE_OWNER: self.owner,
            T.LEASE_HOST: socket.gethostname(),
            T.LEASE_PID: str(pid),
            T.LEASE_PROCESS: _process_identity(pid),
            T.LEASE_PID_NAMESPACE: _pid_namespace(),
            T.LEASE_HEARTBEAT: f"{time.time():.3f}",
            T.LEASE_TTL: f"{self.ttl:g}",
            T.LEASE_TAKEOVER: str(self.takeover).lower(),
            **({T.LEASE_TOMBSTONE: self._tombstone} if self._tombstone else {}),
        }

    def _description(self) -> str:
        return (
            f"Writer lease of {self.name!r}, held by {socket.gethostname()} pid {os.getpid()} "
            "while it trains (mlflow-ddsp). Deleted when training ends; a stale lease is "
            "taken over automatically."
        )

    def _why_lost(self) -> str | None:
        for pause in (*_LOSS_CONFIRMATIONS, None):
            try:
                tags = self.store.registered_model_tags(self.lock_name)
                break
            except CheckpointNotFoundError:
                # A takeover that renamed our lease by mistake puts it back at once: read again.
                if pause is None:
                    return f"the writer lease of {self.name!r} was removed by another process"
                time.sleep(pause)
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
