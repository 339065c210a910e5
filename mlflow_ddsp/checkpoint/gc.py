"""Apply reconcile plans to the registry: the I/O half of ``reconcile.py``.

Used by every queue start and by ``mlflow-ddsp gc``; both hold the writer
lease, so no save is in flight while this runs.
"""

from __future__ import annotations

from typing import Callable

from .reconcile import ReconcilePlan, RegistrySnapshot, plan_reconcile
from .records import CheckpointVersion
from .registry import LoggedModelRef, RegistryStore

__all__ = ["take_snapshot", "retire_version", "remove_files", "apply_plan", "collect"]


def _no_hook(point: str) -> None:
    return None


def take_snapshot(store: RegistryStore, name: str, alias: str) -> RegistrySnapshot:
    versions = store.list_versions(name) if store.registered_model_exists(name) else []
    return RegistrySnapshot(
        versions=versions,
        alias_version=store.alias_version(name, alias) if versions else None,
        queue_models=store.queue_models(name, store.experiment_ids(name)),
    )


def remove_files(store: RegistryStore, model: LoggedModelRef, after: Callable[[str], None] = _no_hook) -> None:
    """Free a checkpoint's bytes, then drop its LoggedModel record.

    Bytes first: a crash in between leaves a live record pointing at nothing,
    which the next reconcile finds and finishes; the other order would leave
    bytes that no record lists, which nothing would ever find again.
    """
    store.delete_bytes(model)
    after("after_delete_bytes")
    store.delete_record(model.model_id)
    after("after_delete_record")


def retire_version(
    store: RegistryStore,
    version: CheckpointVersion,
    after: Callable[[str], None] = _no_hook,
    *,
    files: LoggedModelRef | None = None,
) -> None:
    """Delete a version: registry entry, then bytes, then LoggedModel record.

    The caller must have moved every alias off ``version`` first (MLflow would
    silently drop the alias along with the version). ``files`` saves a lookup
    when the caller already knows where the version's files are.
    """
    if files is None and version.model_id:
        files = store.files_of(version)
    store.delete_version(version.name, version.version)
    after("after_delete_version")
    if files is not None:
        remove_files(store, files, after)


def apply_plan(store: RegistryStore, name: str, alias: str, plan: ReconcilePlan) -> None:
    if plan.move_alias:
        if plan.alias_target is None:
            store.delete_alias(name, alias)
        else:
            store.set_alias(name, alias, plan.alias_target.version)
    for version in plan.delete_versions:
        retire_version(store, version)
    for model in plan.delete_models:
        remove_files(store, LoggedModelRef(model.model_id, model.artifact_location))


def collect(store: RegistryStore, name: str, alias: str, *, dry_run: bool = False) -> ReconcilePlan:
    """Plan the repairs for queue ``name`` and apply them unless ``dry_run``."""
    plan = plan_reconcile(take_snapshot(store, name, alias), store.looks_intact)
    if not dry_run:
        apply_plan(store, name, alias, plan)
    return plan
