"""``mlflow-ddsp gc``'s store-wide part: the dependency files no version references (issue 21, point 4).

:func:`collect_dependencies` keeps every dependency that a LoggedModel of any
experiment references. "Any" means any the user can see: a basic-auth server hides the
experiments a user may not read from its listings, and the references in them with them.
So :func:`collect_store_dependencies` (what ``gc`` runs) asks the server who the user is
(:meth:`RegistryStore.current_user`) and collects only as an admin of a basic-auth server
(or where there are no users: a local store, a server without the auth app); a non-admin,
or a listing refused with HTTP 401/403, collects nothing (:attr:`DependencyCollection.refused`):
nothing is ever deleted on a view known to be partial. Deleting needs MANAGE on the
dependencies experiment.

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

Leftovers of a deleted registered model
    Its checkpoint LoggedModels (tag ``mlflow_ddsp.queue``) outlive it and keep referencing
    their dependencies; :attr:`DependencyCollection.stranded` names the deleted models whose
    leftovers alone keep a file, and ``gc <name>`` deletes them (``leftovers.py``).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from typing import Callable, Collection

from .. import tags as T
from ..errors import NotAuthenticatedError, PermissionDeniedError
from ..store import LoggedModelRef, RegistryStore
from ..store.records import QueueModel
from .dependencies import PENDING_GRACE_S, DependencyRecord, parse_dependencies_tag

__all__ = [
    "DependencyCollection",
    "collect_store_dependencies",
    "collect_dependencies",
    "dependency_references",
    "referenced_dependencies",
]


# -- collecting ------------------------------------------------------------------------------------
def dependency_references(store: RegistryStore, *, excluding: Collection[str] = ()) -> dict[str, list[QueueModel]]:
    """sha256 -> the live LoggedModels that reference it (tag ``mlflow_ddsp.dependencies``;
    any experiment the user can read, any status: a save in progress counts), leaving out
    the LoggedModels whose id is in ``excluding`` (what a dry run would delete first)."""
    models = store.find_logged_models(store.all_experiment_ids(), with_tag=T.DEPENDENCIES)
    out: dict[str, list[QueueModel]] = {}
    for m in models:
        if m.model_id not in excluding:
            for _, digest in parse_dependencies_tag(m.tags.get(T.DEPENDENCIES, "")):
                out.setdefault(digest, []).append(m)
    return out


def referenced_dependencies(store: RegistryStore) -> set[str]:
    """The sha256 of every dependency a live LoggedModel of the store references
    (tag ``mlflow_ddsp.dependencies``; any experiment, any status: a save in progress counts)."""
    return set(dependency_references(store))


def _freed(store: RegistryStore, model: QueueModel) -> int:
    ref = LoggedModelRef(model.model_id, model.artifact_location, None, model.tags)
    size = sum(store.list_sizes(ref).values())
    store.delete_bytes(ref)
    store.delete_record(model.model_id)
    return size


@dataclass(frozen=True)
class _Pass:
    """One collection: what it freed, the READY dependencies it kept, and the references it last listed."""

    freed: list[tuple[DependencyRecord, int]]
    kept: list[QueueModel]
    references: dict[str, list[QueueModel]]


def _collect(
    store: RegistryStore, *, dry_run: bool, pending_grace_s: float, pause: Callable[[str], None] | None,
    excluding: Collection[str] = (),
) -> _Pass:  # fmt: skip
    """:func:`collect_dependencies`, with what the hint on leftovers needs (module docstring)."""
    experiment_id = store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)
    if experiment_id is None:
        return _Pass([], [], {})
    models = [m for m in store.find_logged_models([experiment_id]) if T.DEPENDENCY_SHA256 in m.tags]
    references = dependency_references(store, excluding=excluding if dry_run else ())
    now_ms = time.time() * 1000
    stale = [m for m in models if m.status != "READY" and now_ms - m.created_ms >= pending_grace_s * 1000]
    ready = [m for m in models if m.status == "READY"]
    candidates = [m for m in ready if m.tags[T.DEPENDENCY_SHA256] not in references]
    if dry_run:
        freed = [(record, record.total_size) for record in map(DependencyRecord.of_model, stale + candidates)]
        return _Pass(freed, [m for m in ready if m not in candidates], references)
    for m in ready:  # a mark left by a gc that died, on a file referenced again
        if T.DEPENDENCY_RETIRING in m.tags and m not in candidates:
            store.delete_logged_model_tag(m.model_id, T.DEPENDENCY_RETIRING)
    for m in candidates:
        store.set_logged_model_tags(m.model_id, {T.DEPENDENCY_RETIRING: str(int(time.time()))})
    if pause:
        pause("after_mark")
    references = dependency_references(store)
    if pause:
        pause("after_relist")
    freed = [(DependencyRecord.of_model(m), _freed(store, m)) for m in stale]
    kept = [m for m in ready if m not in candidates]
    for m in candidates:
        if m.tags[T.DEPENDENCY_SHA256] in references:
            store.delete_logged_model_tag(m.model_id, T.DEPENDENCY_RETIRING)
            kept.append(m)
        else:
            freed.append((DependencyRecord.of_model(m), _freed(store, m)))
    return _Pass(freed, kept, references)


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
    return _collect(store, dry_run=dry_run, pending_grace_s=pending_grace_s, pause=pause).freed


def _stranded(store: RegistryStore, kept: list[QueueModel], references: dict[str, list[QueueModel]]
              ) -> tuple[int, tuple[str, ...]]:  # fmt: skip
    """How many kept files only LoggedModels of deleted registered models reference, and those models' names.

    A LoggedModel without the queue tag, or of a registered model that exists (or that this
    user may not read: HTTP 403), keeps its files for good reason.
    """
    exists: dict[str, bool] = {}

    def alive(name: str | None) -> bool:
        if name is None:
            return True
        if name not in exists:
            try:
                exists[name] = store.registered_model_exists(name)
            except PermissionDeniedError:
                exists[name] = True
        return exists[name]

    files, names = 0, set()
    for m in kept:
        queues = {r.tags.get(T.QUEUE) for r in references.get(m.tags[T.DEPENDENCY_SHA256], [])}
        if queues and not any(alive(q) for q in queues):
            files += 1
            names |= {q for q in queues if q}
    return files, tuple(sorted(names))


@dataclass(frozen=True)
class DependencyCollection:
    """What the dependency part of a gc freed (or, dry, would free).

    Attributes:
        freed: ``(record, bytes)`` per file freed; bytes as listed by the artifact store
            (dry run: as recorded, the file and its companions).
        refused: why nothing was collected (one line), None when it ran.
        stranded: ``(files, names)``: how many files stay referenced only by checkpoint
            LoggedModels of deleted registered models, and those models' names
            (``gc <name>`` deletes their leftovers and frees the files).
    """

    freed: list[tuple[DependencyRecord, int]] = field(default_factory=list)
    refused: str | None = None
    stranded: tuple[int, tuple[str, ...]] = (0, ())

    @property
    def total(self) -> int:
        """Bytes freed, in all."""
        return sum(size for _, size in self.freed)

    @property
    def stranded_note(self) -> str | None:
        """One line naming the deleted registered models whose leftovers alone keep files, and the
        command that frees them; None when there are none."""
        files, names = self.stranded
        if not files:
            return None
        return (f"dependencies: {files} file{'s' * (files != 1)} kept only by the checkpoint files of deleted "
                f"registered model{'s' * (len(names) != 1)} {', '.join(map(repr, names))}: "
                f"{', '.join(f'`mlflow-ddsp gc {shlex.quote(n)}`' for n in names)} frees them")  # fmt: skip


def _not_admin(store: RegistryStore) -> str | None:
    """One line when the user is not an admin of a basic-auth server (his view may be partial), else None."""
    user = store.current_user()
    if user is None or user.is_admin:
        return None
    return (
        f"dependencies not collected: user {user.username!r} is not an admin of the basic-auth server "
        f"{store.tracking_uri}, which hides from him the experiments he may not read and the references in them; "
        "run `mlflow-ddsp gc` as an admin (MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD) to collect them"
    )


def collect_store_dependencies(
    store: RegistryStore, *, dry_run: bool = False, retiring: Collection[str] = ()
) -> DependencyCollection | None:
    """Collect the store's unreferenced dependencies; None when the store has no dependencies
    experiment (one lookup, nothing else). Refused, collecting nothing, for a non-admin of a
    basic-auth server (one request: :meth:`RegistryStore.current_user`); a 401/403 anywhere is
    reported in :attr:`DependencyCollection.refused` instead of raised.

    ``retiring``: ids of LoggedModels this gc deletes before; a dry run (which deleted none)
    ignores their references, so it names what the real run would free.

    The listing of references comes before any change (``collect_dependencies``), so a refused
    listing changes nothing; a refusal after marking (MANAGE missing to delete) leaves marks
    that the next gc with the permission deletes or removes.
    """
    try:
        if store.find_experiment_id(T.DEPENDENCY_EXPERIMENT) is None:
            return None
        refused = _not_admin(store)
        if refused:
            return DependencyCollection(refused=refused)
        done = _collect(store, dry_run=dry_run, pending_grace_s=PENDING_GRACE_S, pause=None, excluding=retiring)
        return DependencyCollection(done.freed, stranded=_stranded(store, done.kept, done.references))
    except (PermissionDeniedError, NotAuthenticatedError) as exc:
        return DependencyCollection(
            refused=f"dependencies not collected ({exc}); collecting them needs READ on every experiment of the "
            f"store and MANAGE on experiment {T.DEPENDENCY_EXPERIMENT!r}"
        )
