"""``mlflow-ddsp gc``'s store-wide part: the dependency files no version references (issue 21, point 4).

:func:`collect_dependencies` keeps every dependency that a LoggedModel of any
experiment references. "Any" means any the user can see: a basic-auth server hides the
experiments a user may not read from its listings, and the references in them with them,
so this part needs READ on every experiment of the store (and MANAGE on the dependencies
experiment to delete). A listing refused with HTTP 401/403 collects nothing
(:attr:`DependencyCollection.refused`): nothing is ever deleted on a view known to be partial.

Collecting (:func:`collect_dependencies`) against a concurrent save: mark, re-list, delete
    gc: (a) lists references (:func:`referenced_dependencies`) and candidates (READY,
    unreferenced), (b) tags each candidate ``mlflow_ddsp.dependency.retiring=<unix s>``,
    (c) lists references again, (d) deletes a candidate still unreferenced, else removes
    its mark. A saver: (1) :func:`~.dependencies.store_dependency` before its checkpoint, (2) creates the
    checkpoint's LoggedModel carrying the tag, (3) :func:`~.dependencies.confirm_dependencies`: stores
    again every dependency found marked or gone. If (2) comes before (c), gc sees the
    reference and keeps the file; if after (c), (3) runs after (b) too and finds the
    file marked or deleted, and uploads it anew (a marked file is never reused by (1)
    or (3)). Either way the saved checkpoint's dependencies exist once (3) returns. A gc
    killed between (b) and (d) leaves a mark: the next gc deletes or unmarks it.
    Duplicates are possible only in the first case (the saver re-uploaded a file gc then
    kept); both copies are freed together once unreferenced.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from .. import tags as T
from ..errors import NotAuthenticatedError, PermissionDeniedError
from ..store import LoggedModelRef, RegistryStore
from ..store.records import QueueModel
from .dependencies import PENDING_GRACE_S, DependencyRecord, parse_dependencies_tag

__all__ = ["DependencyCollection", "collect_store_dependencies", "collect_dependencies", "referenced_dependencies"]


# -- collecting ------------------------------------------------------------------------------------
def referenced_dependencies(store: RegistryStore) -> set[str]:
    """The sha256 of every dependency a live LoggedModel of the store references
    (tag ``mlflow_ddsp.dependencies``; any experiment, any status: a save in progress counts)."""
    models = store.find_logged_models(store.all_experiment_ids(), with_tag=T.DEPENDENCIES)
    return {digest for m in models for _, digest in parse_dependencies_tag(m.tags.get(T.DEPENDENCIES, ""))}


def _freed(store: RegistryStore, model: QueueModel) -> int:
    ref = LoggedModelRef(model.model_id, model.artifact_location, None, model.tags)
    size = sum(store.list_sizes(ref).values())
    store.delete_bytes(ref)
    store.delete_record(model.model_id)
    return size


def collect_dependencies(
    store: RegistryStore, *, dry_run: bool = False, pending_grace_s: float = PENDING_GRACE_S,
    pause: Callable[[str], None] | None = None,
) -> list[tuple[DependencyRecord, int]]:  # fmt: skip
    """Delete the stored dependencies no live LoggedModel references, and PENDING ones older
    than ``pending_grace_s``; return ``(record, bytes freed)`` for each (with ``dry_run``,
    what would be freed, by the recorded size, and nothing is changed).

    ``pause(point)`` is called at ``"after_mark"`` and ``"after_relist"`` (tests drive
    interleavings with a concurrent save through it). Protocol: module docstring.

    Raises:
        PermissionDeniedError: the user lacks MANAGE on the dependencies experiment.
    """
    experiment_id = store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)
    if experiment_id is None:
        return []
    models = [m for m in store.find_logged_models([experiment_id]) if T.DEPENDENCY_SHA256 in m.tags]
    referenced = referenced_dependencies(store)
    now_ms = time.time() * 1000
    stale = [m for m in models if m.status != "READY" and now_ms - m.created_ms >= pending_grace_s * 1000]
    ready = [m for m in models if m.status == "READY"]
    candidates = [m for m in ready if m.tags[T.DEPENDENCY_SHA256] not in referenced]
    if dry_run:
        return [(DependencyRecord.of_model(m), int(m.tags[T.DEPENDENCY_SIZE])) for m in stale + candidates]
    for m in ready:  # a mark left by a gc that died, on a file referenced again
        if T.DEPENDENCY_RETIRING in m.tags and m not in candidates:
            store.delete_logged_model_tag(m.model_id, T.DEPENDENCY_RETIRING)
    for m in candidates:
        store.set_logged_model_tags(m.model_id, {T.DEPENDENCY_RETIRING: str(int(time.time()))})
    if pause:
        pause("after_mark")
    referenced = referenced_dependencies(store)
    if pause:
        pause("after_relist")
    freed = [(DependencyRecord.of_model(m), _freed(store, m)) for m in stale]
    for m in candidates:
        if m.tags[T.DEPENDENCY_SHA256] in referenced:
            store.delete_logged_model_tag(m.model_id, T.DEPENDENCY_RETIRING)
        else:
            freed.append((DependencyRecord.of_model(m), _freed(store, m)))
    return freed


@dataclass(frozen=True)
class DependencyCollection:
    """What the dependency part of a gc freed (or, dry, would free).

    Attributes:
        freed: ``(record, bytes)`` per file freed; bytes as listed by the artifact store
            (dry run: as recorded).
        refused: why nothing was collected (one line), None when it ran.
    """

    freed: list[tuple[DependencyRecord, int]] = field(default_factory=list)
    refused: str | None = None

    @property
    def total(self) -> int:
        """Bytes freed, in all."""
        return sum(size for _, size in self.freed)


def collect_store_dependencies(store: RegistryStore, *, dry_run: bool = False) -> DependencyCollection | None:
    """Collect the store's unreferenced dependencies; None when the store has no dependencies
    experiment (one lookup, nothing else). A 401/403 anywhere is reported in
    :attr:`DependencyCollection.refused` instead of raised.

    The listing of references comes before any change (``collect_dependencies``), so a refused
    listing changes nothing; a refusal after marking (MANAGE missing to delete) leaves marks
    that the next gc with the permission deletes or removes.
    """
    try:
        if store.find_experiment_id(T.DEPENDENCY_EXPERIMENT) is None:
            return None
        return DependencyCollection(collect_dependencies(store, dry_run=dry_run))
    except (PermissionDeniedError, NotAuthenticatedError) as exc:
        return DependencyCollection(
            refused=f"dependencies not collected ({exc}); collecting them needs READ on every experiment of the "
            f"store and MANAGE on experiment {T.DEPENDENCY_EXPERIMENT!r}"
        )
