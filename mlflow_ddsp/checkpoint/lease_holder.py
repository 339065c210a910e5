"""What a writer lease is in the registry: its names, the binding and record that make it count, its holder.

The protocol that takes, holds and releases it is :mod:`mlflow_ddsp.checkpoint.lease`;
this module names them, reads them (is the lease still ours?) and re-points the binding.

* The *lease model* of registered model ``voice`` is a registered model named
  ``voice.writer-lease`` (:func:`lease_model_name`), or ``voice.writer-lease-<8 hex>``
  once the lease moved; its tags name the holder (:class:`LeaseHolder`, :func:`holder_tags`).
* The *binding* on ``voice`` itself, whose tags only a user with EDIT on ``voice`` can write:
  ``mlflow_ddsp.lease_model`` names the lease model in use (absent: the default;
  :func:`bound`), and ``mlflow_ddsp.lease_holder`` is the *record*
  ``"<owner id> <creation time>"`` of the lease model its holder created
  (:func:`holder_record`). The creation time (ms) is the server's, so a model
  created by anyone else never matches, whatever tags it copies.
* A holder's process is identified by host, pid, PID namespace and start time since
  boot (:func:`process_identity`), so a crashed holder on this machine is known dead
  at once (:func:`process_alive`) and a reused pid is not mistaken for it.

Names: the longest lease name derived is ``NAME.writer-lease-<8 hex>.retired-<16>``
(47 characters more than NAME; :func:`safe_owner` gives the 16).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Mapping

from .. import tags as T
from ..errors import CheckpointNotFoundError, PermissionDeniedError
from ..store import RegistryStore

__all__ = [
    "DEFAULT_LEASE_TTL",
    "LeaseHolder",
    "lease_model_name",
    "bound",
    "bound_lease_model",
    "holder_record",
    "holder_tags",
    "lease_description",
    "safe_owner",
    "boot_id",
    "pid_namespace",
    "process_identity",
    "process_alive",
    "created_by",
    "recorded_as",
    "lease_lost",
    "move_binding",
]

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = 120.0
_SUFFIX = ".writer-lease"
LOSS_CONFIRMATIONS = (0.2, 0.5, 1.0)  # seconds between re-reads before a missing lease counts as lost


def safe_owner(owner: str) -> str:
    """The owner id as a name part: its letters and digits, at most 16."""
    return "".join(c for c in owner if c.isalnum())[:16]


def lease_model_name(name: str) -> str:
    """The default lease model of registered model ``name`` (``NAME.writer-lease``)."""
    return name + _SUFFIX


def bound(name: str, tags: Mapping[str, str]) -> str | None:
    """The lease model ``name``'s tags bind, or None when the tag names none of ours."""
    value = tags.get(T.LEASE_MODEL)
    if value is None:
        return lease_model_name(name)
    return value if re.fullmatch(re.escape(lease_model_name(name)) + r"(-[0-9a-f]{8})?", value) else None


def bound_lease_model(store: RegistryStore, name: str) -> str:
    """The lease model registered model ``name`` uses now (``NAME.writer-lease`` unless moved).

    For commands that report on the lease; a binding tag that names no lease model
    of ``name`` is reported as the tag's value.
    """
    try:
        tags = store.registered_model_tags(name)
    except CheckpointNotFoundError:
        return lease_model_name(name)
    return bound(name, tags) or tags.get(T.LEASE_MODEL, lease_model_name(name))


def holder_record(owner: str, created_ms: int) -> str:
    """The record on the registered model of the lease model ``owner`` created at ``created_ms`` (server ms)."""
    return f"{owner} {created_ms}"


def boot_id() -> str:
    """This boot of this machine (Linux), '' where it cannot be read."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def start_ticks(pid: int) -> str:
    """Process start time in clock ticks since boot (Linux), '' if unknown/absent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may contain spaces; fields after ')' are fixed.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_identity(pid: int) -> str:
    """``"<boot id>:<start ticks>"`` of process ``pid``, '' where it cannot be read."""
    ticks = start_ticks(pid)
    return f"{boot_id()}:{ticks}" if ticks else ""


def pid_namespace() -> str:
    """This process's PID namespace (``pid:[4026531836]``), '' where it cannot be read."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_alive(pid: int, identity: str, namespace: str) -> bool | None:
    """Whether process ``pid`` of this machine still runs; None if we cannot tell.

    A pid means the same process only within one PID namespace (containers
    sharing a host name have their own) and one boot; its start time rules out
    pid reuse.
    """
    here = pid_namespace()
    if not namespace or not here or namespace != here:
        return None
    if not identity or not boot_id() or not identity.startswith(boot_id() + ":"):
        return None  # another boot of this host name
    return process_identity(pid) == identity


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
        """Heartbeat older than the ttl, or at once when it ran in this PID namespace of this boot and is gone."""
        if self.host == socket.gethostname() and self.pid > 0:
            alive = process_alive(self.pid, self.process, self.namespace)
            if alive is not None:
                return not alive
        return now - self.heartbeat > self.ttl

    def describe(self, now: float) -> str:
        return f"{self.host} pid {self.pid} (last heartbeat {max(0.0, now - self.heartbeat):.0f} s ago)"


def holder_tags(owner: str, ttl: float, takeover: bool, tombstone: str | None) -> dict[str, str]:
    """The tags of a lease model this process creates (:class:`LeaseHolder` reads them back)."""
    pid = os.getpid()
    return {
        T.LEASE_MARKER: T.LEASE_MARKER_VALUE,
        T.LEASE_OWNER: owner,
        T.LEASE_HOST: socket.gethostname(),
        T.LEASE_PID: str(pid),
        T.LEASE_PROCESS: process_identity(pid),
        T.LEASE_PID_NAMESPACE: pid_namespace(),
        T.LEASE_HEARTBEAT: f"{time.time():.3f}",
        T.LEASE_TTL: f"{ttl:g}",
        T.LEASE_TAKEOVER: str(takeover).lower(),
        **({T.LEASE_TOMBSTONE: tombstone} if tombstone else {}),
    }


def lease_description(name: str) -> str:
    """The description of a lease model this process creates for registered model ``name``."""
    return (
        f"Writer lease of {name!r}, held by {socket.gethostname()} pid {os.getpid()} "
        "while it trains (mlflow-ddsp). Deleted when training ends; a stale lease is "
        "taken over automatically."
    )


def created_by(store: RegistryStore, lock: str, owner: str) -> int | None:
    """The creation time (server ms) of lease model ``lock`` we just created as ``owner``; None if it stays gone.

    A takeover that renamed it by mistake puts it back at once: read again.
    """
    for pause in (*LOSS_CONFIRMATIONS, None):
        try:
            tags, created = store.registered_model_created(lock)
            if tags.get(T.LEASE_OWNER) == owner:
                return created
        except CheckpointNotFoundError:
            pass
        if pause is not None:
            time.sleep(pause)
    return None


def recorded_as(store: RegistryStore, lock: str, record: str | None) -> bool:
    """Whether lease model ``lock`` exists and is the one ``record`` names (owner id and creation time)."""
    try:
        tags, created = store.registered_model_created(lock)
    except CheckpointNotFoundError:
        return False
    return record == holder_record(tags.get(T.LEASE_OWNER, ""), created)


def lease_lost(store: RegistryStore, name: str, lock: str,
               record: str | None) -> tuple[str | None, dict[str, str] | None]:  # fmt: skip
    """(why the lease ``lock`` of ``name`` recorded as ``record`` is no longer ours or None, ``name``'s tags as read).

    Ours while ``name``'s binding names ``lock`` and ``lock`` is the model ``record``
    names. A missing ``lock`` is read again (:data:`LOSS_CONFIRMATIONS`) before it counts.
    """
    name_tags: dict[str, str] | None = None
    for pause in (*LOSS_CONFIRMATIONS, None):
        try:
            name_tags = store.registered_model_tags(name)
            now_bound = bound(name, name_tags)
            if now_bound != lock:
                return (
                    f"the writer lease of {name!r} was moved to "
                    f"{now_bound or name_tags.get(T.LEASE_MODEL)!r} by another process; "
                    "this process stopped writing checkpoints",
                    name_tags,
                )
            tags, created = store.registered_model_created(lock)
            break
        except CheckpointNotFoundError:
            # A takeover that renamed our lease by mistake puts it back at once: read again.
            if pause is None:
                return f"the writer lease of {name!r} was removed by another process", name_tags
            time.sleep(pause)
    if record != holder_record(tags.get(T.LEASE_OWNER, ""), created):
        holder = LeaseHolder.from_tags(tags)
        return (
            f"the writer lease of {name!r} was taken over by {holder.describe(time.time())}; "
            "this process stopped writing checkpoints",
            name_tags,
        )
    return None, name_tags


def move_binding(store: RegistryStore, name: str, name_tags: Mapping[str, str], blocked: str, why: str) -> None:
    """Bind ``name``'s lease to a fresh lease model, leaving ``blocked`` untouched.

    ``name_tags`` are ``name``'s tags as the caller judged them: if the binding changed
    since, another process moved it already and nothing is written (decide again).

    Raises:
        PermissionDeniedError: no EDIT on ``name`` (one line naming ``blocked`` and ``why``).
    """
    fresh = f"{lease_model_name(name)}-{secrets.token_hex(4)}"
    current = store.registered_model_tags(name)
    if current.get(T.LEASE_MODEL) != name_tags.get(T.LEASE_MODEL):
        return  # another process moved it already: decide again on the new binding
    try:
        store.set_registered_model_tag(name, T.LEASE_MODEL, fresh)
    except PermissionDeniedError as exc:
        raise PermissionDeniedError(
            f"{blocked!r} blocks the writer lease of {name!r} ({why}) and moving the lease elsewhere "
            f"was refused: {exc}; or ask the creator of {blocked!r} or an MLflow admin to delete it"
        ) from exc
    log.warning(
        "the writer lease of %r moved from %r to %r: %s. %r is left untouched; its creator or an MLflow "
        "admin may delete it", name, blocked, fresh, why, blocked,
    )  # fmt: skip
