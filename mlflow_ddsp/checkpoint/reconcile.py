"""Reconcile planning: from a snapshot of the registry, decide what to repair. Pure logic.

Run on every queue start and by ``mlflow-ddsp gc``. A crash can leave, in the
order of the save protocol (see ``queue.py``):

* unfinished uploads: LoggedModels that never got a model version
  (PENDING, or READY but unregistered) -> delete bytes, then the record;
* a registered version the alias never reached, or a previous rolling version
  the alias already left -> the alias goes to the newest intact version and
  every other rolling version is deleted;
* a deleted version whose bytes or LoggedModel record survived -> orphan,
  deleted like an unfinished upload.

Force-saved versions and versions the queue did not write are never deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..tags import KIND_ROLLING
from .records import CheckpointVersion, QueueModel

__all__ = ["RegistrySnapshot", "ReconcilePlan", "plan_reconcile"]


@dataclass(frozen=True)
class RegistrySnapshot:
    versions: Sequence[CheckpointVersion]
    alias_version: int | None  # the version the alias points to, None if unset
    queue_models: Sequence[QueueModel]  # LoggedModels tagged with this queue's name


@dataclass(frozen=True)
class ReconcilePlan:
    """Repairs in the order they must be applied: alias first, then deletions.

    MLflow silently drops an alias when its version is deleted, so the alias is
    moved off a version before that version is deleted.
    """

    alias_target: CheckpointVersion | None  # where the alias must point (None: nowhere)
    move_alias: bool
    delete_versions: tuple[CheckpointVersion, ...] = ()
    delete_models: tuple[QueueModel, ...] = ()  # orphans: bytes then record
    damaged_force_saved: tuple[CheckpointVersion, ...] = field(default=())

    @property
    def is_empty(self) -> bool:
        return not (self.move_alias or self.delete_versions or self.delete_models)

    def describe(self, alias: str) -> list[str]:
        lines = []
        if self.move_alias:
            target = self.alias_target.label if self.alias_target else "nothing (no intact version)"
            lines.append(f"point alias '{alias}' at {target}")
        lines += [f"delete stale rolling version {v.label}" for v in self.delete_versions]
        lines += [
            f"delete orphaned checkpoint files {m.model_id} ({m.status.lower()}, step {m.step})"
            for m in self.delete_models
        ]
        lines += [
            f"keep damaged force-saved version {v.label} (never deleted; see `mlflow-ddsp verify`)"
            for v in self.damaged_force_saved
        ]
        return lines


def plan_reconcile(
    snapshot: RegistrySnapshot, is_intact: Callable[[CheckpointVersion], bool]
) -> ReconcilePlan:
    """Decide the repairs that restore the queue invariants.

    Invariants afterwards: the alias points to the newest intact queue version
    (the highest version number); that is the only rolling version; every
    LoggedModel of the queue backs a live version.

    Args:
        is_intact: whether a version's files are present as its tags describe;
            called newest-first and only as far as needed.
    """
    ours = sorted(
        (v for v in snapshot.versions if v.is_queue_version), key=CheckpointVersion.newness, reverse=True
    )
    target = next((v for v in ours if is_intact(v)), None)

    delete_versions = []
    damaged = []
    for v in ours:
        if v is target:
            continue
        if v.kind == KIND_ROLLING:
            delete_versions.append(v)
        elif target is not None and v.newness() > target.newness():
            damaged.append(v)  # a newer force-saved version that failed the check

    alias_ok = target is not None and snapshot.alias_version == target.version
    move = not alias_ok and not (target is None and snapshot.alias_version is None)

    # A deleted version's files are removed with it; orphans are files no version references.
    referenced = {v.model_id for v in snapshot.versions}
    orphans = tuple(m for m in snapshot.queue_models if m.model_id not in referenced)

    return ReconcilePlan(
        alias_target=target,
        move_alias=move,
        delete_versions=tuple(delete_versions),
        delete_models=orphans,
        damaged_force_saved=tuple(damaged),
    )
