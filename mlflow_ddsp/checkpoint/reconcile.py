"""Reconcile a queue's registry state with its retention rules: check, plan, then repair.

:func:`collect` runs at every queue start and for ``mlflow-ddsp gc``: it reads the
recorded options (``policy_record.py``) and the registry (``snapshot.py``),
downloads and checks the newest versions until an intact one is found, asks
``retention.plan_retention`` what the state should be, refuses plans that would
lose data on a failed check alone (issue 20), and hands the rest to the one
deleter (``deleter.py``).
"""

from __future__ import annotations

import logging

from ..errors import ArtifactStoreUnavailable, CheckpointIntegrityError, CheckpointNotFoundError, ConfigError
from ..store import CheckpointVersion, Integrity, RegistryStore
from . import verify
from .deleter import apply_plan
from .policy import RetentionPolicy
from .policy_record import recorded_policy
from .retention import RegistrySnapshot, RetentionPlan, plan_retention
from .snapshot import take_snapshot

__all__ = ["collect"]

log = logging.getLogger(__name__)


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
    everywhere: bool = False,
) -> RetentionPlan:
    """Check, plan and (unless ``dry_run``) apply: reconcile at a queue start, and ``gc``.

    The newest versions are downloaded and checked byte for byte
    (:meth:`RegistryStore.check`) until an intact one is found, for the alias
    and for ``best``; with ``forget_missing`` every queue version is checked
    (issue 20: stopping at the first intact one left older versions whose files
    are gone in the registry, and ``verify`` failing, for ever). Without
    ``policy``/``alias``, the ones the queue recorded. ``everywhere``: look for orphaned
    LoggedModels in every experiment (``gc``), not only the queue's recorded ones (a start).

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
    snapshot = take_snapshot(store, name, everywhere=everywhere)

    findings: list[str] = []
    damaged: dict[int, str] = {}  # version -> why, for versions whose essential files differ

    def check(version: CheckpointVersion) -> Integrity:
        state, why = verify.check(store, version)
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
