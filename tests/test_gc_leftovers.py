"""`mlflow-ddsp gc NAME` after registered model NAME was deleted (issue 21): its leftovers.

Deleting a registered model (the UI's "Delete model") deletes its versions, not the checkpoint
LoggedModels its queue wrote; they keep their bytes and their dependencies referenced. `gc NAME`
finds them in every experiment, deletes them (bytes, then record) and then collects the
dependencies; any gc names the deleted models whose leftovers alone keep a dependency.

Real stores (the embedded SQLite store and the session's `mlflow server`), versions written by
a real checkpoint queue, the real CLI. The race with a training that creates NAME anew is driven
through `collect_leftovers(pause=...)` at the point between gc's listing and its re-check.
"""

from __future__ import annotations

import os
import uuid

import mlflow
import pytest
import torch
from click.testing import CliRunner

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp import tags as T
from mlflow_ddsp.checkpoint.dependencies import DependencyRecord, dependencies_tag, store_dependency
from mlflow_ddsp.checkpoint.files import sha256_file
from mlflow_ddsp.checkpoint.leftovers import collect_leftovers
from mlflow_ddsp.cli import main
from mlflow_ddsp.errors import LeaseHeldError
from mlflow_ddsp.store import RegistryStore

pytestmark = pytest.mark.usefixtures("forget_stored_dependencies")


def cli(backend, *args: str):
    return CliRunner().invoke(main, ["--tracking-uri", backend.uri, *args])


def save_versions(backend, name: str, experiment: str, steps=(10, 20)) -> RegistryStore:
    """Force-saved versions of ``name`` (all kept) written by a real checkpoint queue into ``experiment``."""
    with CheckpointQueue(name, 1, 10, tracking_uri=backend.uri, experiment=experiment) as queue:
        for step in steps:
            queue.save(step, torch.nn.Linear(4, 4)).result()
    return RegistryStore(backend.uri)


def queue_model_ids(store: RegistryStore, name: str) -> set[str]:
    return {m.model_id for m in store.queue_models(name, store.all_experiment_ids())}


def delete_registered_model(backend, name: str) -> None:
    """What the UI's "Delete model" does: the registered model and its versions go."""
    mlflow.MlflowClient(backend.uri).delete_registered_model(name)


def test_gc_deletes_the_leftovers_of_a_deleted_registered_model_and_a_dry_run_only_names_them(backend, model_name):
    store = save_versions(backend, model_name, backend.experiment)
    experiment_id = store.find_experiment_id(backend.experiment)
    delete_registered_model(backend, model_name)
    left = queue_model_ids(store, model_name)
    assert len(left) == 2 and left <= backend.checkpoint_dirs([experiment_id])

    dry = cli(backend, "gc", model_name, "--dry-run")
    assert dry.exit_code == 0, dry.output
    for model_id in left:
        assert f"would delete LoggedModel {model_id} (force_saved, step " in dry.output, dry.output
    assert f"{model_name}: would free 2 LoggedModels of a deleted registered model" in dry.output, dry.output
    assert queue_model_ids(store, model_name) == left and left <= backend.checkpoint_dirs([experiment_id])

    result = cli(backend, "gc", model_name)
    assert result.exit_code == 0, result.output
    sizes = [int(line.rsplit(": ", 1)[1].split()[0]) for line in result.output.splitlines() if line.startswith("delete ")]
    assert len(sizes) == 2 and all(size > 0 for size in sizes), result.output
    assert f"{model_name}: freed 2 LoggedModels of a deleted registered model, {sum(sizes)} bytes" in result.output
    assert queue_model_ids(store, model_name) == set()
    assert not left & backend.checkpoint_dirs([experiment_id])  # the bytes too

    again = cli(backend, "gc", model_name)  # nothing left: the one-line error of a name that never existed
    assert again.exit_code == 1
    assert again.output.strip() == f"error: registered model {model_name!r} does not exist at {backend.uri}"


@pytest.mark.parametrize("then", ["kept", "deleted-again"])
def test_a_registered_model_created_again_between_gcs_listing_and_its_deletion_keeps_its_new_files(
    backend, model_name, then
):
    """gc lists, a training creates NAME anew and saves (pause), then gc re-checks NAME before deleting.

    ``kept``: NAME exists at the re-check: gc deletes nothing (one line), old and new files stay.
    ``deleted-again``: NAME was deleted again too: gc deletes only what it had listed, never the
    LoggedModel created after its listing. The new training writes into another experiment, so
    that its own start does not remove the old files as orphans of its queue.
    """
    store = save_versions(backend, model_name, backend.experiment)
    delete_registered_model(backend, model_name)
    old = queue_model_ids(store, model_name)
    points: list[str] = []

    def recreate(point: str) -> None:
        points.append(point)
        save_versions(backend, model_name, f"{backend.experiment}-again", steps=(30,))
        if then == "deleted-again":
            delete_registered_model(backend, model_name)

    if then == "kept":
        with pytest.raises(LeaseHeldError, match=f"registered model '{model_name}' was created again while gc listed"):
            collect_leftovers(store, model_name, pause=recreate)
        assert queue_model_ids(store, model_name) - old, "the new training saved nothing?"
        assert old <= queue_model_ids(store, model_name)  # nothing deleted
        assert [v.step for v in store.list_versions(model_name)] == [30]
    else:
        done = collect_leftovers(store, model_name, pause=recreate)
        assert done.model_ids == old
        new = queue_model_ids(store, model_name)
        assert len(new) == 1 and not new & old  # the LoggedModel written after the listing stays
    assert points == ["after_list"]


def test_gc_names_the_deleted_model_whose_leftovers_alone_keep_a_dependency_and_frees_it_after(
    backend, model_name, tmp_path
):
    store = save_versions(backend, model_name, backend.experiment)
    other = f"{model_name}-other"
    save_versions(backend, other, backend.experiment, steps=(10,))
    loose = tmp_path / f"encoder-{uuid.uuid4().hex[:8]}.pt"
    loose.write_bytes(os.urandom(54_321))
    record = DependencyRecord("encoder", sha256_file(loose).sha256, 54_321, loose.name)
    store_dependency(store, loose, record)
    for model_id in queue_model_ids(store, model_name):  # what a save (or attach-dependencies) records
        store.set_logged_model_tags(model_id, {T.DEPENDENCIES: dependencies_tag([record])})

    kept = cli(backend, "gc", other)
    assert kept.exit_code == 0 and record.label not in kept.output, kept.output  # NAME's versions reference it
    assert "kept only by" not in kept.output, kept.output

    delete_registered_model(backend, model_name)
    hinted = cli(backend, "gc", other)
    assert hinted.exit_code == 0, hinted.output
    assert record.label not in hinted.output, hinted.output  # still referenced: kept
    assert (f"dependencies: 1 file kept only by the checkpoint files of deleted registered model {model_name!r}: "
            f"`mlflow-ddsp gc {model_name}` frees them") in hinted.output, hinted.output  # fmt: skip

    dry = cli(backend, "gc", model_name, "--dry-run")  # what the real run frees: the leftovers, then the file
    assert dry.exit_code == 0, dry.output
    assert f"would free {record.label} ({record.file}, 54321 bytes" in dry.output, dry.output
    assert "kept only by" not in dry.output, dry.output
    freed = cli(backend, "gc", model_name)
    assert freed.exit_code == 0, freed.output
    assert f"free {record.label} ({record.file}, 54321 bytes" in freed.output, freed.output
    assert "dependencies: freed 1 file, 54321 bytes" in freed.output, freed.output
    experiment_id = store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)
    assert store.find_logged_models([experiment_id], {T.DEPENDENCY_SHA256: record.sha256}) == []


def test_the_current_user_is_none_without_users(backend):
    """The embedded store has no users; a server without the auth app answers 404: both None."""
    assert RegistryStore(backend.uri).current_user() is None


def test_gc_of_a_registered_model_made_again_deletes_its_predecessors_leftovers_in_other_experiments(
    backend, model_name
):
    """A registered model deleted and trained again into another experiment: the new queue records
    only its own experiment, so its start never sees the predecessor's LoggedModels; ``gc NAME``
    (and ``verify``) look in every experiment and remove them as orphans, keeping the new versions'."""
    store = save_versions(backend, model_name, backend.experiment)
    delete_registered_model(backend, model_name)
    old = queue_model_ids(store, model_name)
    save_versions(backend, model_name, f"{backend.experiment}-again", steps=(30,))
    new = {v.model_id for v in store.list_versions(model_name)}
    assert len(old) == 2 and len(new) == 1 and queue_model_ids(store, model_name) == old | new

    audit = cli(backend, "verify", model_name)
    assert audit.exit_code == 1 and all(f"orphaned checkpoint files {m}" in audit.output for m in old), audit.output
    result = cli(backend, "gc", model_name)
    assert result.exit_code == 0, result.output
    assert all(f"delete orphaned checkpoint files {m}" in result.output for m in old), result.output
    assert queue_model_ids(store, model_name) == new
    assert [v.step for v in store.list_versions(model_name)] == [30]
    experiment_id = store.find_experiment_id(backend.experiment)
    assert not old & backend.checkpoint_dirs([experiment_id])  # the bytes too
