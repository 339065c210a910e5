"""Audit a checkpoint queue: every version's bytes against its registration, and the invariants.

Backs ``mlflow-ddsp versions`` and ``mlflow-ddsp verify``. Read-only: it never
takes the writer lease and never changes the registry.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..errors import CheckpointIntegrityError, CheckpointNotFoundError
from ..tags import KIND_ROLLING
from .gc import take_snapshot
from .reconcile import ReconcilePlan, plan_reconcile
from .records import CheckpointVersion
from .registry import RegistryStore

__all__ = ["VersionAudit", "QueueAudit", "audit_queue"]


@dataclass
class VersionAudit:
    version: CheckpointVersion
    aliases: list[str]
    intact: bool | None  # None: not checked
    problem: str | None = None


@dataclass
class QueueAudit:
    name: str
    alias: str
    versions: list[VersionAudit]
    plan: ReconcilePlan  # what `gc` would repair
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check(store: RegistryStore, version: CheckpointVersion) -> tuple[bool, str | None]:
    if not version.is_queue_version:
        return True, None  # not ours: nothing recorded to check against
    with tempfile.TemporaryDirectory(prefix="mlflow-ddsp-verify-") as tmp:
        try:
            store.fetch_verified(version, tmp)
        except (CheckpointIntegrityError, CheckpointNotFoundError) as exc:
            return False, str(exc)
    return True, None


def audit_queue(
    store: RegistryStore,
    name: str,
    alias: str,
    *,
    deep: bool = True,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> QueueAudit:
    """Check queue ``name``.

    Args:
        deep: download every version and check every file's sha256 (else only
            the cheap listing check that reconcile uses).
        progress: wraps the per-version loop, e.g. ``tqdm``.
    """
    if not store.registered_model_exists(name):
        raise CheckpointNotFoundError(f"registered model {name!r} does not exist at {store.tracking_uri}")
    snapshot = take_snapshot(store, name, alias)
    aliases = store.aliases_by_version(name)
    results: dict[int, tuple[bool, str | None]] = {}

    def intact(v: CheckpointVersion) -> bool:
        if v.version not in results:
            results[v.version] = _check(store, v) if deep else (store.looks_intact(v), None)
        return results[v.version][0]

    for v in progress(snapshot.versions):
        intact(v)
    plan = plan_reconcile(snapshot, intact)

    audits = []
    problems = []
    for v in snapshot.versions:
        ok, why = results[v.version]
        if not ok:
            problems.append(why or f"{v.label}: files missing or not at their registered size")
        audits.append(VersionAudit(v, sorted(aliases.get(v.version, [])), ok, why))
    if plan.move_alias:
        where = f"v{snapshot.alias_version}" if snapshot.alias_version is not None else "nothing"
        want = plan.alias_target.label if plan.alias_target else "nothing"
        problems.append(f"alias '{alias}' points at {where}, expected {want}")
    problems += [f"stale rolling version {v.label} (more than one rolling version)" for v in plan.delete_versions if v.kind == KIND_ROLLING and results[v.version][0]]
    problems += [f"orphaned checkpoint files {m.model_id} (step {m.step}, {m.status.lower()})" for m in plan.delete_models]
    return QueueAudit(name, alias, audits, plan, problems)
