"""Read a queue's registry state into a :class:`RegistrySnapshot`, the input of every retention plan.

The snapshot is what ``retention.plan_retention`` reads (pure logic): the
registered model's versions and aliases, the aliases the queue recorded as its
own (tag ``mlflow_ddsp.own_aliases``, written by the deleter before it sets one),
and, for orphan detection, the LoggedModels the queue wrote.
"""

from __future__ import annotations

import json

from .. import tags as T
from ..errors import CheckpointNotFoundError
from ..store import RegistryStore
from .retention import RegistrySnapshot

__all__ = ["take_snapshot", "own_aliases"]


def take_snapshot(
    store: RegistryStore, name: str, *, with_files: bool = True, everywhere: bool = False
) -> RegistrySnapshot:
    """The registry state of queue ``name``; ``with_files`` also lists its LoggedModels (orphans):
    in the experiments the queue recorded (a queue's start), or, ``everywhere``, in every
    experiment the user can read (``gc`` and ``verify``: a registered model deleted and made
    again leaves its predecessor's LoggedModels, tagged with the same queue, in experiments
    the new queue never recorded)."""
    try:
        tags, aliases = store.registered_model(name)
    except CheckpointNotFoundError:
        return RegistrySnapshot(versions=(), aliases={})
    versions = store.list_versions(name)
    experiments = store.all_experiment_ids() if everywhere else store.experiment_ids(name)
    models = store.queue_models(name, experiments) if with_files else ()
    return RegistrySnapshot(versions=versions, aliases=aliases, queue_models=models, own_aliases=own_aliases(tags))


def own_aliases(tags) -> frozenset[str]:
    """The aliases the queue recorded as its own in the registered model ``tags`` (empty if unreadable)."""
    try:
        value = json.loads(tags.get(T.OWN_ALIASES, "[]"))
    except ValueError:
        return frozenset()
    return frozenset(str(a) for a in value) if isinstance(value, list) else frozenset()
