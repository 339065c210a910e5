"""``mlflow-ddsp gc``'s store-wide part: the dependency files no version references (issue 21, point 4).

:func:`~.dependencies.collect_dependencies` keeps every dependency that a LoggedModel of any
experiment references. "Any" means any the user can see: a basic-auth server hides the
experiments a user may not read from its listings, and the references in them with them,
so this part needs READ on every experiment of the store (and MANAGE on the dependencies
experiment to delete). A listing refused with HTTP 401/403 collects nothing
(:attr:`DependencyCollection.refused`): nothing is ever deleted on a view known to be partial.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import tags as T
from ..errors import NotAuthenticatedError, PermissionDeniedError
from ..store import RegistryStore
from .dependencies import DependencyRecord, collect_dependencies

__all__ = ["DependencyCollection", "collect_store_dependencies"]


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
