"""Audit a checkpoint queue: every version's bytes against its registration, and the plan.

Backs ``mlflow-ddsp versions`` and ``mlflow-ddsp verify``. Read-only: it never
takes the writer lease and never changes the registry. What ``gc`` would change
comes from the same retention planner that saves and ``gc`` use, under the
policy the queue recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..errors import CheckpointNotFoundError
from .policy_record import recorded_policy
from ..store import CheckpointVersion, Integrity, RegistryStore
from .retention import RetentionPlan, assume_intact, plan_retention
from .snapshot import take_snapshot
from . import verify

__all__ = ["VersionAudit", "QueueAudit", "audit_queue"]


@dataclass
class VersionAudit:
    version: CheckpointVersion
    aliases: list[str]
    integrity: Integrity | None  # None: not checked
    problem: str | None = None
    kept: tuple[str, ...] = ()  # why it stays (empty: gc would delete it, or not ours)
    protected: tuple[str, ...] = ()  # a person's alias or keep tag

    @property
    def intact(self) -> bool | None:
        return None if self.integrity is None else self.integrity is Integrity.INTACT


@dataclass
class QueueAudit:
    name: str
    alias: str
    versions: list[VersionAudit]
    plan: RetentionPlan  # what `gc` would change
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def audit_queue(
    store: RegistryStore,
    name: str,
    alias: str | None = None,
    *,
    deep: bool = True,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> QueueAudit:
    """Check queue ``name``.

    Args:
        alias: the rolling alias; default: the one the queue recorded.
        deep: download every version and check every byte (:func:`~mlflow_ddsp.checkpoint.verify.check`);
            without it nothing is judged (no evidence, no damage).
        progress: wraps the per-version loop, e.g. ``tqdm``.
    Raises:
        CheckpointNotFoundError: ``name`` does not exist.
    """
    if not store.registered_model_exists(name):
        raise CheckpointNotFoundError(f"registered model {name!r} does not exist at {store.tracking_uri}")
    alias, policy = recorded_policy(store, name, alias)
    snapshot = take_snapshot(store, name, everywhere=True)  # as gc sees it: orphans in any experiment
    results: dict[int, tuple[Integrity, str | None]] = {}
    if deep:
        for v in progress(snapshot.versions):
            if v.is_queue_version:  # others have nothing recorded to check against
                results[v.version] = verify.check(store, v)
    check = (lambda v: results[v.version][0]) if deep else assume_intact
    plan = plan_retention(snapshot, policy, alias, check)
    # An unreachable store decides nothing; what keeps each version still shows.
    shown = plan_retention(snapshot, policy, alias) if plan.store_unavailable else plan

    audits, problems = [], []
    for v in snapshot.versions:
        integrity, why = results.get(v.version, (None, None))
        if integrity not in (None, Integrity.INTACT):
            problems.append(why or f"{v.label}: {integrity.value}")
        if integrity is Integrity.AUXILIARY:
            # Shown as a mismatch (verify reports every changed byte); the plan above still
            # keeps and resumes from it like an intact version (issue 20).
            integrity = Integrity.DAMAGED
        audits.append(
            VersionAudit(
                v, snapshot.aliases_of(v.version), integrity, why,
                kept=shown.kept.get(v.version, ()), protected=shown.protected.get(v.version, ()),
            )
        )  # fmt: skip
    if plan.store_unavailable:
        problems.append(
            "no version has any file in the artifact store: mount it (or move the store's folder back); "
            f"if the files are really gone, `mlflow-ddsp gc {name} --forget-missing`"
        )
    for moved, target in plan.alias_moves:
        where = snapshot.aliases.get(moved)
        want = target.label if target else "nothing"
        problems.append(f"alias '{moved}' points at {f'v{where}' if where is not None else 'nothing'}, expected {want}")
    problems += [
        f"{v.label} is kept by no rule (`mlflow-ddsp gc {name}` deletes it)"
        for v in plan.delete_versions
        if results.get(v.version, (Integrity.INTACT,))[0] is Integrity.INTACT
    ]
    problems += [f"orphaned checkpoint files {m.model_id} (step {m.step}, {m.status.lower()})" for m in plan.delete_models]
    return QueueAudit(name, alias, audits, plan, problems)
