"""Apply retention plans to the registry: the one deleter, the I/O half of ``retention.py``.

Every deletion in this package goes through :func:`apply_plan`: after a save,
at every queue start (``reconcile.py``), and for ``mlflow-ddsp gc``. All of them hold
the writer lease, so no other save is in flight. Before deleting a version the
deleter reads it once more and skips it if a person protected it since the
plan was made (a window of one request remains: MLflow has no compare-and-set).

It deletes only what its queue wrote (LoggedModels tagged ``mlflow_ddsp.queue``
with this registered model's name) and frees bytes only inside the store it was
opened on (:meth:`RegistryStore.owns_location`: a copied store never touches the
original's files).

Commit order of one retirement, each step a crash point (``faults.py``):
the registry entry (``after_delete_version``), then the bytes
(``after_delete_bytes``), then the LoggedModel record (``after_delete_record``).
A crash in between leaves a LoggedModel no version uses, which the next plan
lists as an orphan and removes; the other order would leave bytes no record
lists, which nothing would ever find again.
"""

from __future__ import annotations

import json
import logging
from typing import Callable

from .. import tags as T
from ..errors import CheckpointNotFoundError
from ..store import CheckpointVersion, LoggedModelRef, RegistryStore
from .retention import RetentionPlan

__all__ = ["apply_plan", "retire_version", "remove_files"]

log = logging.getLogger(__name__)


def _no_hook(point: str) -> None:
    return None


def _record_own_aliases(store: RegistryStore, name: str, aliases: set[str]) -> None:
    store.set_registered_model_tag(name, T.OWN_ALIASES, json.dumps(sorted(aliases)))


def remove_files(
    store: RegistryStore, name: str, files: LoggedModelRef, after: Callable[[str], None] = _no_hook
) -> None:
    """Free a checkpoint's bytes, then drop its LoggedModel record, if this queue wrote them.

    Bytes outside the store's own artifact folder (a copied embedded store) are
    left alone; the record, which lives in this store's database, still goes.
    """
    if files.queue != name:
        log.warning("not deleting LoggedModel %s: it was not written by the queue of %r", files.model_id, name)
        return
    if store.owns_location(files.artifact_location):
        store.delete_bytes(files)
    else:
        log.warning(
            "not deleting %s: it lies outside this store's folder (a copy of another store?); "
            "only its record in this store is removed",
            files.artifact_location,
        )
    after("after_delete_bytes")
    store.delete_record(files.model_id)
    after("after_delete_record")


def retire_version(
    store: RegistryStore,
    version: CheckpointVersion,
    after: Callable[[str], None] = _no_hook,
) -> bool:
    """Delete a version: registry entry, then bytes, then LoggedModel record.

    The caller must have moved the queue's aliases off ``version`` (MLflow
    silently drops an alias with its version). Returns False, deleting nothing,
    when the version now carries an alias or the keep tag (protected since the
    plan was made) or is already gone.
    """
    try:
        fresh = store.get_version(version.name, version.version)  # tags and aliases as they are now
    except CheckpointNotFoundError:
        return False
    if fresh.aliases or fresh.keep:
        why = f"alias {', '.join(fresh.aliases)}" if fresh.aliases else f"{T.KEEP}=true"
        log.warning("%s is protected (%s) since the plan was made: not deleted", version.label, why)
        return False
    files = None
    if version.model_id:
        try:
            files = store.get_files(version.model_id)
        except CheckpointNotFoundError:
            files = None  # its record is gone already: nothing left to free
    store.delete_version(version.name, version.version)
    after("after_delete_version")
    if files is not None:
        remove_files(store, version.name, files, after)
    return True


def apply_plan(store: RegistryStore, name: str, plan: RetentionPlan, after: Callable[[str], None] = _no_hook) -> None:
    """Apply ``plan``: aliases first, then deletions (each re-checked just before).

    An alias the queue sets is recorded as its own before it is set, and dropped
    from the record after it is removed, so the record never misses one of ours.
    """
    setting = {a for a, t in plan.alias_moves if t is not None}
    removing = {a for a, t in plan.alias_moves if t is None}
    if setting - plan.own_aliases:
        _record_own_aliases(store, name, set(plan.own_aliases) | setting)
    for alias, target in plan.alias_moves:
        if target is None:
            store.delete_alias(name, alias)
        else:
            store.set_alias(name, alias, target.version)
    if removing & plan.own_aliases:
        _record_own_aliases(store, name, (set(plan.own_aliases) | setting) - removing)
    if plan.alias_moves:
        after("after_alias")
    for version in plan.delete_versions:
        retire_version(store, version, after)
    for model in plan.delete_models:
        remove_files(store, name, LoggedModelRef(model.model_id, model.artifact_location, name))
    for version, text in plan.descriptions:  # cosmetic, last: what the UI shows keeps up with the plan
        store.set_description(name, version.version, text)
