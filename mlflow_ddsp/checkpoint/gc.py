"""Apply retention plans to the registry: the one deleter, the I/O half of ``retention.py``.

Every deletion in this package goes through :func:`apply_plan`: after a save,
at every queue start (reconcile), and for ``mlflow-ddsp gc``. All of them hold
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
from ..errors import ArtifactStoreUnavailable, CheckpointIntegrityError, CheckpointNotFoundError, ConfigError
from .names import validate_alias
from .policy import BEST_ALIAS, DEFAULT_ALIAS, RetentionPolicy
from .records import CheckpointVersion, Integrity
from .registry import LoggedModelRef, RegistryStore
from .retention import RegistrySnapshot, RetentionPlan, plan_retention

__all__ = [
    "take_snapshot",
    "record_policy",
    "recorded_policy",
    "retire_version",
    "remove_files",
    "apply_plan",
    "collect",
]

log = logging.getLogger(__name__)


def _no_hook(point: str) -> None:
    return None


def take_snapshot(store: RegistryStore, name: str, *, with_files: bool = True) -> RegistrySnapshot:
    """The registry state of queue ``name``; ``with_files`` also lists its LoggedModels (orphans)."""
    try:
        tags, aliases = store.registered_model(name)
    except CheckpointNotFoundError:
        return RegistrySnapshot(versions=(), aliases={})
    versions = store.list_versions(name)
    models = store.queue_models(name, store.experiment_ids(name)) if with_files else ()
    return RegistrySnapshot(versions=versions, aliases=aliases, queue_models=models, own_aliases=_own_aliases(tags))


def _own_aliases(tags) -> frozenset[str]:
    try:
        value = json.loads(tags.get(T.OWN_ALIASES, "[]"))
    except ValueError:
        return frozenset()
    return frozenset(str(a) for a in value) if isinstance(value, list) else frozenset()


def _record_own_aliases(store: RegistryStore, name: str, aliases: set[str]) -> None:
    store.set_registered_model_tag(name, T.OWN_ALIASES, json.dumps(sorted(aliases)))


def record_policy(store: RegistryStore, name: str, alias: str, policy: RetentionPolicy) -> None:
    """Store the queue's alias and retention options on the registered model, for ``gc``/``versions``."""
    value = json.dumps(
        {"alias": alias, "keep_last": policy.keep_last, "best_metric": policy.best_metric, "best_mode": policy.best_mode},
        sort_keys=True,
    )
    if store.registered_model_tags(name).get(T.RETENTION) != value:
        store.set_registered_model_tag(name, T.RETENTION, value)


def recorded_policy(store: RegistryStore, name: str, alias: str | None = None) -> tuple[str, RetentionPolicy]:
    """The alias and retention options the last queue of ``name`` recorded (defaults if none).

    ``alias`` overrides the recorded alias. The intervals play no part in a
    plan (a version's kind is its tag), so they are not recorded.
    """
    raw: dict = {}
    try:
        raw = json.loads(store.registered_model_tags(name).get(T.RETENTION, "{}"))
    except (ValueError, CheckpointNotFoundError):
        pass
    raw = raw if isinstance(raw, dict) else {}
    recorded_alias = raw.get("alias")
    if alias is not None:
        validate_alias(alias)
        if alias == BEST_ALIAS or (recorded_alias and alias != recorded_alias):
            raise ConfigError(
                f"alias={alias!r} is not the rolling alias of the queue of {name!r} "
                f"({recorded_alias or DEFAULT_ALIAS!r}, recorded when it trained); give that one, or none"
            )
    policy = RetentionPolicy(
        interval_val=1,
        interval_force_save=None,
        keep_last=raw.get("keep_last", 1),
        best_metric=raw.get("best_metric"),
        best_mode=raw.get("best_mode", "min"),
    )
    return alias or raw.get("alias") or DEFAULT_ALIAS, policy


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


def _unavailable(store: RegistryStore, name: str, snapshot: RegistrySnapshot) -> ArtifactStoreUnavailable:
    ours = [v for v in snapshot.versions if v.is_queue_version]
    where = "its artifact store"
    if ours:
        try:
            where = store.files_of(max(ours, key=CheckpointVersion.newness)).artifact_location
        except CheckpointNotFoundError:
            pass
    moved = ""
    if not store.owns_location(where):
        moved = (
            " (that is outside this store's folder: MLflow records absolute paths, so a store whose "
            "folder was moved or copied still looks for its files at the old place; move it back, "
            "or work in the original folder)"
        )
    return ArtifactStoreUnavailable(
        f"none of the {len(ours)} checkpoint versions of {name!r} has any file at {where}{moved}: if the "
        f"artifact store is not mounted yet, mount it and start again (nothing was deleted); if the files "
        f"are really gone, `mlflow-ddsp gc {name} --forget-missing` removes their versions"
    )


def _refused_for_damage(
    snapshot: RegistrySnapshot, plan: RetentionPlan, alias: str, damaged: dict[int, str]
) -> list[CheckpointVersion]:
    """The versions ``plan`` would give up only because a check found an essential file changed.

    Issue 20 ("Nothing lost"): a failed check is not evidence enough to delete a
    checkpoint, nor to resume silently from an older one. A checked version is
    given up when the plan deletes it (it was checked because a rule would keep
    it if intact: newest or best), or when it is the newest and the rolling alias
    moves off it. ``gc --forget-missing`` applies such a plan: a person's decision.
    """
    if not damaged:
        return []
    out = [v for v in plan.delete_versions if v.version in damaged]
    ours = sorted((v for v in snapshot.versions if v.is_queue_version), key=CheckpointVersion.newness, reverse=True)
    newest = ours[0] if ours else None
    moves = dict(plan.alias_moves)
    if (
        newest is not None
        and newest.version in damaged
        and snapshot.aliases.get(alias) == newest.version
        and alias in moves
        and newest not in out
    ):
        out.insert(0, newest)
    return out


def _damaged(name: str, refused: list[CheckpointVersion], damaged: dict[int, str]) -> CheckpointIntegrityError:
    """One line: which file of which version differs (both sha256), nothing changed, and the repairs."""
    first = refused[0]
    more = f" ({len(refused) - 1} more version(s) too: `mlflow-ddsp verify {name}`)" if len(refused) > 1 else ""
    return CheckpointIntegrityError(
        f"{damaged[first.version]}{more}; nothing was deleted or moved: put the registered file back (e.g. from "
        f"a backup; the sha256 must match) and start again, or, if it is lost for good, "
        f"`mlflow-ddsp gc {name} --forget-missing` gives that version up (a rolling one is deleted, a "
        f"force-saved or protected one kept) and training resumes from the newest intact checkpoint"
    )


def collect(
    store: RegistryStore,
    name: str,
    alias: str | None = None,
    policy: RetentionPolicy | None = None,
    *,
    dry_run: bool = False,
    forget_missing: bool = False,
) -> RetentionPlan:
    """Check, plan and (unless ``dry_run``) apply: reconcile at a queue start, and ``gc``.

    The newest versions are downloaded and checked byte for byte
    (:meth:`RegistryStore.check`) until an intact one is found, for the alias
    and for ``best``; with ``forget_missing`` every queue version is checked
    (issue 20: stopping at the first intact one left older versions whose files
    are gone in the registry, and ``verify`` failing, for ever). Without
    ``policy``/``alias``, the ones the queue recorded.

    A version whose essential file (``model_<N>.pt``, ``config.yaml``) differs is
    never deleted, nor left behind by the rolling alias, because of that check
    alone (issue 20): unless ``forget_missing``, nothing is changed and one line
    names the file, both sha256 and the repairs. Auxiliary files never count.

    Raises:
        ArtifactStoreUnavailable: every version's files are missing; nothing was changed.
        CheckpointIntegrityError: the plan would give up a version because its
            essential file differs; nothing was changed.
        RegistryError: the registry or the store cannot be read; nothing was changed.
    """
    recorded_alias, recorded = recorded_policy(store, name, alias)
    alias, policy = alias or recorded_alias, policy or recorded
    snapshot = take_snapshot(store, name)

    findings: list[str] = []
    damaged: dict[int, str] = {}  # version -> why, for versions whose essential files differ

    def check(version: CheckpointVersion) -> Integrity:
        state, why = store.check(version)
        if why:
            findings.append(why)
        if state is Integrity.DAMAGED:
            damaged[version.version] = why or f"{version.label}: damaged"
        return state

    plan = plan_retention(snapshot, policy, alias, check, forget_missing=forget_missing)
    if plan.alias_taken:
        raise ConfigError(
            f"alias={alias!r} is already used on {name} v{snapshot.aliases[alias]} by someone else (this "
            "queue never set it); choose another rolling alias (mlflow.alias), e.g. 'rolling'"
        )
    if plan.store_unavailable:
        raise _unavailable(store, name, snapshot)
    if not forget_missing:
        refused = _refused_for_damage(snapshot, plan, alias, damaged)
        if refused:
            raise _damaged(name, refused, damaged)
    for why in findings:
        log.warning("%s", why)
    if not dry_run:
        apply_plan(store, name, plan)
    return plan
