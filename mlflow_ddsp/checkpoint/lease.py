"""One writer per registered model: a lease held in the model registry itself.

MLflow has no compare-and-set, but registered model names are unique and a
rename is atomic. The lease for ``voice`` is a registered model (the *lease
model*, ``voice.writer-lease`` unless moved) whose tags name the holder.

Anyone who may create registered models (on a basic-auth server: every user,
with the default READ permission) could create that name first, so the lease
model counts only through a *binding* on ``voice`` itself, whose tags only a
user with EDIT on ``voice`` can write: the lease model in use, and the *record*
(owner id and server creation time) of the lease model its holder created. The
names, tags and holder identity are :mod:`mlflow_ddsp.checkpoint.lease_holder`'s.

A lease model is *recorded* when its owner tag and creation time match the
record. One not yet recorded but created less than ``_RECORD_GRACE`` seconds ago
is a holder starting up: we wait for its record (it follows its creation by one
request) until the grace ends. Any other model at that name (no marker tag,
never recorded, or a lease of another user that we may not rename: HTTP 403) is
never renamed, retagged or deleted by us: the lease *moves* to a fresh name
(``mlflow_ddsp.lease_model`` set to ``voice.writer-lease-<random>``), which needs
EDIT on ``voice``; a user without it is refused in one line and leaves nothing.

* acquire: create the bound lease model, record it, and check the binding still
  names it. If it exists and is recorded and its holder is alive, fail fast
  (``LeaseHeldError``) unless told to take over;
* take over (a stale holder, or ``takeover=True``): rename the old lease to a
  name derived from its holder (``.retired-<owner>``; of several processes
  taking over one holder only one rename succeeds), check that what was renamed
  is the holder judged stale (its owner id), then create ours. The renamed
  lease stays as a tombstone while we hold the lease and is deleted at release. If another process took over in
  between, what was renamed is that process's live lease: it is renamed back
  and the attempt starts again (the live holder sees its lease missing only for
  that moment, and confirms a loss only after reading again). Where the rename
  is refused (another user's lease, HTTP 403), the lease moves instead;
* hold: a heartbeat thread renews a timestamp tag (and rewrites our record if a
  racing starter overwrote it); before every alias move the queue calls
  :meth:`WriterLease.check`, valid while the binding names our lease model and
  that model is ours, so a process whose lease was taken over or moved away
  stops writing (``LeaseLostError``) instead of fighting the new holder;
* release: remove the record, then delete the lease model.

A holder is stale when its heartbeat is older than its ttl, or at once when it
ran on this machine, in this PID namespace, and its process is gone (a crash,
SIGKILL): a crashed training run restarts without waiting. Containers sharing a
host name (host networking) have their own PID namespaces; where the namespace
cannot be compared, the holder is treated as another machine's (ttl).

Two processes moving the lease at the same instant both write the binding; the
one whose write came first is fenced at its first :meth:`~WriterLease.check`
(before any alias move), so at most one writes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from typing import Mapping

from .. import tags as T
from ..errors import CheckpointNotFoundError, LeaseHeldError, LeaseLostError, MlflowDdspError, PermissionDeniedError
from ..store import RegistryStore
from .lease_holder import (
    DEFAULT_LEASE_TTL,
    LeaseHolder,
    boot_id,
    bound,
    bound_lease_model,
    created_by,
    holder_record,
    holder_tags,
    lease_description,
    lease_lost,
    lease_model_name,
    move_binding,
    pid_namespace,
    recorded_as,
    safe_owner,
)

__all__ = ["WriterLease", "LeaseHolder", "lease_model_name", "bound_lease_model", "DEFAULT_LEASE_TTL"]

log = logging.getLogger(__name__)

_boot_id, _pid_namespace = boot_id, pid_namespace  # their names here before lease_holder.py (tests import them)
_ACQUIRE_ATTEMPTS = 6
# A lease model nobody recorded yet counts as a holder starting up for this long after
# its creation (the server's clock). A starting holder records itself one request
# after creating it, so 30 s covers a very slow server; it also bounds how long a
# squatted name delays a start before the lease moves. Clocks are assumed within a
# few seconds of the server's (NTP): a client ahead by s shortens the grace by s.
_RECORD_GRACE = 30.0
_RECORD_POLL_MAX = 2.0  # seconds between re-reads while waiting for a record


class WriterLease:
    """The right to write checkpoints into one registered model.

    Args:
        store: registry access.
        name: the registered model the lease protects (created, with ``description``, if absent:
            the lease is bound to it by its tags).
        ttl: seconds without a heartbeat after which another machine may take over.
        takeover: take the lease even from a live holder (it is fenced off at its
            next alias move).
        description: the registered model's description, if the lease has to create it.

    Raises (acquire): LeaseHeldError naming a live holder; PermissionDeniedError (one
    line) for a user without EDIT on ``name``, leaving nothing behind.
    """

    def __init__(self, store: RegistryStore, name: str, *, ttl: float = DEFAULT_LEASE_TTL, takeover: bool = False,
                 description: str | None = None):  # fmt: skip
        if ttl <= 0:
            raise ValueError(f"lease ttl={ttl!r} must be > 0 seconds")
        self.store = store
        self.name = name
        self.lock_name = lease_model_name(name)  # the lease model we hold (set by acquire)
        self.ttl = float(ttl)
        self.takeover = takeover
        self.owner = uuid.uuid4().hex
        self._model_description = description
        self._record: str | None = None  # the binding's holder record of our lease model
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
                self._delete_tombstone()
            raise

    def _acquire(self) -> "WriterLease":
        if not self.store.registered_model_exists(self.name):
            self.store.ensure_registered_model(
                self.name, self._model_description or f"DDSP-SVC checkpoints kept by mlflow-ddsp ({self.name})."
            )
        for _ in range(_ACQUIRE_ATTEMPTS):
            if self._attempt():
                return self
        raise LeaseHeldError(
            f"could not acquire the writer lease of {self.name!r} after {_ACQUIRE_ATTEMPTS} attempts: "
            "other processes keep taking it"
        )

    def _attempt(self) -> bool:
        """One try at the bound lease model: True when we hold it; False to decide again on fresh reads.

        Creates it if free; else judges what is there and moves the lease away from it,
        retires it (:meth:`_take_over`) or raises LeaseHeldError.
        """
        name_tags = self.store.registered_model_tags(self.name)
        lock = bound(self.name, name_tags)
        if lock is None:
            self._move(name_tags, str(name_tags.get(T.LEASE_MODEL)), "the tag names no lease model of it")
            return False
        if self.store.try_create_registered_model(lock, self._tags(), lease_description(self.name)):
            return self._settle(lock)
        try:
            tags, created = self.store.registered_model_created(lock)
        except CheckpointNotFoundError:
            return False  # released between our create and our read: try again
        verdict, tags, name_tags = self._confirmed_verdict(lock, tags, created, name_tags)
        if verdict == "foreign":
            self._move(name_tags, lock, f"it is not an mlflow-ddsp writer lease (no {T.LEASE_MARKER} tag)")
        elif verdict == "unrecorded":
            self._move(name_tags, lock, "no holder recorded it on the registered model: not a lease of ours")
        elif verdict == "recorded":
            self._take_over(lock, LeaseHolder.from_tags(tags), name_tags)
        return False

    def _confirmed_verdict(self, lock: str, tags: Mapping[str, str], created: int, name_tags: Mapping[str, str]
                           ) -> tuple[str, Mapping[str, str], Mapping[str, str]]:  # fmt: skip
        """:meth:`_judge`'s verdict, a "foreign" or "unrecorded" one confirmed by fresh reads; with the tags judged.

        SQLite answers a read of a model renamed or deleted meanwhile with its row but
        no tags (two SELECTs), which must not move the lease: ``"changed"`` if the
        fresh reads differ.
        """
        verdict = self._judge(lock, tags, created, name_tags)
        if verdict not in ("foreign", "unrecorded"):
            return verdict, tags, name_tags
        try:
            again, created_again = self.store.registered_model_created(lock)
        except CheckpointNotFoundError:
            return "changed", tags, name_tags
        name_again = self.store.registered_model_tags(self.name)
        if created_again != created or bound(self.name, name_again) != lock:
            return "changed", tags, name_tags
        return self._judge(lock, again, created, name_again, wait=False), again, name_again

    def _take_over(self, lock: str, holder: LeaseHolder, name_tags: Mapping[str, str]) -> None:
        """Retire the recorded lease ``lock`` of a stale holder (any, with ``takeover``); the caller then creates ours.

        Atomic: of several processes taking over the same holder, exactly one rename
        succeeds, since they all rename to the name of that holder. The renamed lease
        stays as a tombstone while the winner holds the lease, so a process that read
        the old holder late cannot rename the winner's lease to that name either.

        Raises:
            LeaseHeldError: ``holder`` is alive and no takeover was asked for.
        """
        now = time.time()
        stale = holder.is_stale(now)
        if not stale and not self.takeover:
            raise LeaseHeldError(
                f"registered model {self.name!r} is being written by {holder.describe(now)}; "
                f"stop that process, wait for its lease to expire (ttl {holder.ttl:.0f} s), "
                "or take over with takeover=True (CLI: --takeover)"
            )
        reason = "stale" if stale else "live (takeover requested)"
        retired = f"{lock}.retired-{safe_owner(holder.owner) or uuid.uuid4().hex[:12]}"
        try:
            renamed_ok = self.store.try_rename_registered_model(lock, retired)
        except PermissionDeniedError:
            # Another user's lease: renaming needs EDIT on it. Ours is the registered model.
            why = f"the {reason} lease of {holder.describe(now)} was created by another user, so it cannot be renamed"
            self._move(name_tags, lock, why)
            return
        if not renamed_ok:
            return
        # Between our read and our rename another process may have taken over:
        # then we renamed its live lease. Put it back and start again.
        renamed = self.store.registered_model_tags(retired)
        if renamed.get(T.LEASE_MARKER) != T.LEASE_MARKER_VALUE or renamed.get(T.LEASE_OWNER) != holder.owner:
            if not self.store.try_rename_registered_model(retired, lock):
                log.error("could not put back the writer lease of %r renamed to %r", self.name, retired)
            return
        log.warning("taking over the %s writer lease of %r from %s", reason, self.name, holder.describe(now))
        older = renamed.get(T.LEASE_TOMBSTONE)
        if older and older.startswith(lock + ".retired-"):
            self._delete_quietly(older)  # the tombstone the old holder kept
        if self._tombstone is not None:
            self._delete_tombstone()  # an earlier attempt's
        self._tombstone = retired

    def check(self) -> None:
        """Raise LeaseLostError unless this process still holds the lease.

        Valid while the registered model's binding names our lease model and that
        model is the one we created (owner id and creation time).
        """
        if not self._held:
            raise LeaseLostError(f"the writer lease of {self.name!r} is not held by this process")
        if self._lost is None:
            self._lost = self._inspect()[0]
        if self._lost is not None:
            raise LeaseLostError(self._lost)

    def release(self) -> None:
        """Stop the heartbeat; remove our record and delete our lease model if the lease is still ours.

        A lease moved away by another process leaves the binding alone; our own lease
        model, which nobody uses any more, is deleted.
        """
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._held:
            lost, name_tags = self._inspect()
            if lost is None:
                self.store.delete_registered_model_tag(self.name, T.LEASE_HOLDER)
                self.store.delete_registered_model(self.lock_name)
                self._delete_tombstone()
            elif name_tags is not None and bound(self.name, name_tags) != self.lock_name:
                if recorded_as(self.store, self.lock_name, self._record):
                    self.store.delete_registered_model(self.lock_name)
                self._delete_tombstone()
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
    def _settle(self, lock: str) -> bool:
        """We created ``lock``: record it on the registered model; False if the binding moved meanwhile."""
        try:
            created = created_by(self.store, lock, self.owner)
            if created is None:
                return False  # renamed away by a takeover and not put back: decide again
            record = holder_record(self.owner, created)
            self.store.set_registered_model_tag(self.name, T.LEASE_HOLDER, record)  # EDIT on NAME
        except BaseException:
            with contextlib.suppress(MlflowDdspError):
                self.store.delete_registered_model(lock)  # nothing left behind (we created it: MANAGE)
            raise
        if bound(self.name, self.store.registered_model_tags(self.name)) != lock:
            self.store.delete_registered_model(lock)  # another process moved the lease while we created it
            return False
        self.lock_name = lock
        self._record = record
        self._held = True
        self._start_heartbeat()
        return True

    def _judge(self, lock: str, tags: Mapping[str, str], created: int, name_tags: Mapping[str, str], *,
               wait: bool = True) -> str:  # fmt: skip
        """``"recorded"`` (a lease of ours), ``"foreign"`` (no marker), ``"unrecorded"``, or ``"changed"``."""
        if tags.get(T.LEASE_MARKER) != T.LEASE_MARKER_VALUE:
            return "foreign"
        owner = tags.get(T.LEASE_OWNER, "")
        if owner == self.owner:
            return "unrecorded"  # we did not create it (our create failed): a copy of our id
        if name_tags.get(T.LEASE_HOLDER) == holder_record(owner, created):
            return "recorded"
        if not wait:
            return "unrecorded"
        return self._await_record(lock, owner, created, name_tags)

    def _await_record(self, lock: str, owner: str, created: int, name_tags: Mapping[str, str]) -> str:
        """``"recorded"``, ``"unrecorded"``, or ``"changed"`` (``lock`` or the binding changed: decide again).

        A lease model created less than ``_RECORD_GRACE`` s ago and not recorded yet
        may be a holder starting up: read again until its record appears or the grace ends.
        """
        expected = holder_record(owner, created)
        pause = 0.05
        while True:
            if name_tags.get(T.LEASE_HOLDER) == expected:
                return "recorded"
            left = created / 1000.0 + _RECORD_GRACE - time.time()
            if left <= 0:
                return "unrecorded"
            time.sleep(min(pause, left))  # a bounded wait for another process's next request
            pause = min(pause * 2, _RECORD_POLL_MAX)
            name_tags = self.store.registered_model_tags(self.name)
            if bound(self.name, name_tags) != lock:
                return "changed"
            try:
                tags, now_created = self.store.registered_model_created(lock)
            except CheckpointNotFoundError:
                return "changed"
            if now_created != created or tags.get(T.LEASE_OWNER, "") != owner:
                return "changed"

    def _delete_quietly(self, name: str) -> None:
        try:
            self.store.delete_registered_model(name)
        except PermissionDeniedError as exc:
            log.warning("could not delete %r, a writer lease taken over: %s", name, exc)

    def _delete_tombstone(self) -> None:
        if self._tombstone is not None:
            self._delete_quietly(self._tombstone)
            self._tombstone = None

    def _move(self, name_tags: Mapping[str, str], blocked: str, why: str) -> None:
        move_binding(self.store, self.name, name_tags, blocked, why)

    def _inspect(self) -> tuple[str | None, dict[str, str] | None]:
        return lease_lost(self.store, self.name, self.lock_name, self._record)

    def _tags(self) -> dict[str, str]:
        return holder_tags(self.owner, self.ttl, self.takeover, self._tombstone)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name=f"mlflow-ddsp-lease-{self.name}", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        # Event.wait doubles as the interval timer and the stop signal.
        while not self._stop.wait(self.ttl / 4):
            try:
                self._lost, name_tags = self._inspect()
                if self._lost is not None:
                    log.error("%s", self._lost)
                    return
                if name_tags is not None and name_tags.get(T.LEASE_HOLDER) != self._record:
                    # A starter racing a move overwrote our record: restore it, or others would move away.
                    self.store.set_registered_model_tag(self.name, T.LEASE_HOLDER, self._record or "")
                self.store.set_registered_model_tag(self.lock_name, T.LEASE_HEARTBEAT, f"{time.time():.3f}")
            except MlflowDdspError as exc:  # a flaky server must not kill the heartbeat
                log.warning("writer lease heartbeat for %r failed: %s", self.name, exc)
