"""Assertions about a checkpoint queue's state in a real registry, shared by several test modules."""

from __future__ import annotations

import tempfile

from mlflow_ddsp.checkpoint import RegistryStore
from mlflow_ddsp.tags import KIND_FORCE_SAVED, KIND_ROLLING


def versions_by_step(store: RegistryStore, name: str) -> dict[int, str]:
    """step -> kind for every version of ``name``; fails on two versions of one step."""
    out: dict[int, str] = {}
    for v in store.list_versions(name):
        assert v.step not in out, f"two versions for step {v.step}"
        out[v.step] = v.kind
    return out


def assert_invariants(store: RegistryStore, backend, name: str, alias: str = "rolling", max_rolling: int = 1) -> int:
    """The queue invariants; returns the aliased step.

    * every version's bytes match their registration (sha256 of every file);
    * at most ``max_rolling`` rolling versions (keep_last + best + protected ones), and the
      alias points at the newest version;
    * the artifact folder on disk holds exactly the live versions' files and
      the registry lists no LoggedModel that no version uses.
    """
    versions = store.list_versions(name)
    for v in versions:
        with tempfile.TemporaryDirectory() as tmp:
            store.fetch_verified(v, tmp)  # raises on any mismatch
    kinds = [v.kind for v in versions]
    assert kinds.count(KIND_ROLLING) <= max_rolling, kinds
    assert set(kinds) <= {KIND_ROLLING, KIND_FORCE_SAVED}
    newest = max(versions, key=lambda v: v.version)
    assert store.alias_version(name, alias) == newest.version
    live_ids = {v.model_id for v in versions}
    experiments = store.experiment_ids(name)
    assert len(experiments) == len(set(experiments)), f"experiment ids recorded twice: {experiments}"
    assert {m.model_id for m in store.queue_models(name, experiments)} == live_ids
    assert backend.checkpoint_dirs(experiments) == live_ids
    return newest.step
