"""What a deleted registered model leaves: its checkpoint LoggedModels, for ``mlflow-ddsp gc NAME``.

Deleting a registered model (the MLflow UI's "Delete model",
the client's ``delete_registered_model``) deletes its versions, not the LoggedModels its
queue wrote (tag ``mlflow_ddsp.queue=NAME``): they keep their bytes and keep referencing
their dependencies (tag ``mlflow_ddsp.dependencies``, ``dependency_gc.py``), and no
retention plan reaches them (a plan starts from the registered model). :func:`collect_leftovers`
finds them in every experiment the user can read and deletes them through the one deleter
(:func:`~.deleter.remove_files`: bytes, then record; only bytes inside this store).

Safe against a training that creates NAME anew meanwhile, by order, not by timing or clocks:
    gc: (1) NAME does not exist (the caller checked), (2) lists the LoggedModels tagged
    with queue NAME, (3) checks that NAME still does not exist, right before (4) deleting
    exactly what (2) listed, each bytes first, then its record.
    A queue creates NAME before its first LoggedModel (``WriterLease.acquire`` creates it,
    ``recovery.recover`` ensures it, then ``commit.py`` creates LoggedModels), and the
    tracking store commits each request before it answers. So a LoggedModel listed in (2)
    that a queue of a live NAME wrote was created after NAME, hence before (3), which then
    finds NAME and stops: nothing is deleted (:class:`~mlflow_ddsp.errors.LeaseHeldError`).
    Unless NAME was deleted again before (3): then that LoggedModel is a leftover too. A
    LoggedModel created after (2) is never deleted, whatever happens to NAME: only (2)'s
    listing is. A training still running when its NAME was deleted fails at its next commit
    (its lease's binding lives on NAME); what it was uploading is a leftover.

Dependencies referenced only by leftovers are freed by the dependency collection that
``gc`` runs afterwards (``dependency_gc.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import tags as T
from ..errors import CheckpointNotFoundError, LeaseHeldError
from ..store import LoggedModelRef, QueueModel, RegistryStore
from .deleter import remove_files

__all__ = ["Leftovers", "collect_leftovers"]


@dataclass(frozen=True)
class Leftovers:
    """The checkpoint LoggedModels of a deleted registered model that gc deleted (dry: would delete).

    Attributes:
        name: the registered model that no longer exists.
        removed: ``(LoggedModel, bytes)`` each, bytes as the artifact store listed them.
    """

    name: str
    removed: list[tuple[QueueModel, int]]

    @property
    def total(self) -> int:
        """Bytes freed, in all."""
        return sum(size for _, size in self.removed)

    @property
    def model_ids(self) -> set[str]:
        """The LoggedModels' ids (for a dry run of the dependency collection)."""
        return {m.model_id for m, _ in self.removed}

    def describe(self, prefix: str = "") -> list[str]:
        """One line per LoggedModel (``prefix``: ``"would "`` for a dry run) and the total."""
        lines = [
            f"{prefix}delete LoggedModel {m.model_id} ({m.tags.get(T.KIND) or 'unknown kind'}, step {m.step}, "
            f"{m.status.lower()}) of deleted registered model {self.name!r}: {size} bytes"
            for m, size in self.removed
        ]
        count = len(self.removed)
        lines.append(f"{self.name}: {prefix}{'free' if prefix else 'freed'} {count} LoggedModel{'s' * (count != 1)} "
                     f"of a deleted registered model, {self.total} bytes")  # fmt: skip
        return lines


def _ref(name: str, model: QueueModel) -> LoggedModelRef:
    return LoggedModelRef(model.model_id, model.artifact_location, name, model.tags)


def collect_leftovers(
    store: RegistryStore, name: str, *, dry_run: bool = False, pause: Callable[[str], None] | None = None
) -> Leftovers:
    """Delete (with ``dry_run``: list) the checkpoint LoggedModels that queue ``name`` wrote,
    once registered model ``name`` is gone. Protocol: module docstring; the caller checked (1).

    ``pause(point)`` is called at ``"after_list"``, between (2) and (3) (tests drive a
    training that creates ``name`` anew there).

    Raises:
        CheckpointNotFoundError: no LoggedModel of queue ``name`` in any experiment the user
            can read: the registered model does not exist and left nothing.
        LeaseHeldError: ``name`` exists again (a training created it meanwhile); nothing deleted.
        PermissionDeniedError: the user lacks MANAGE on an experiment holding leftovers.
    """
    listed = store.queue_models(name, store.all_experiment_ids())
    if not listed:
        raise CheckpointNotFoundError(f"registered model {name!r} does not exist at {store.tracking_uri}")
    if pause:
        pause("after_list")
    found = Leftovers(name, [(m, sum(store.list_sizes(_ref(name, m)).values())) for m in listed])
    if dry_run:
        return found
    if store.registered_model_exists(name):
        raise LeaseHeldError(
            f"registered model {name!r} was created again while gc listed the {len(listed)} LoggedModel(s) its "
            f"deleted predecessor left (a training into it started?); nothing was deleted: the new queue's start "
            f"removes those in its own experiment as orphans, and `mlflow-ddsp gc {name}` repairs it"
        )
    for model, _ in found.removed:
        remove_files(store, name, _ref(name, model))
    return found
