"""CheckpointQueue behaviour against the embedded SQLite store and a real `mlflow server`."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
import torch
import yaml

from mlflow import MlflowClient
from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.checkpoint import load_checkpoint
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.checkpoint.files import Manifest
from mlflow_ddsp.errors import CheckpointIntegrityError, CheckpointSaveError, ConfigError, TrackingServerUnreachable
from mlflow_ddsp.testing.server import free_port
from mlflow_ddsp import tags as T
from mlflow_ddsp.checkpoint.verify import fetch_verified

from registry_checks import assert_invariants, versions_by_step

from conftest import scaled_timeout


def tiny_model(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def train_a_bit(model, optimizer, steps: int = 3) -> None:
    for i in range(steps):
        loss = model(torch.randn(4, 8)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def open_queue(backend, name, interval_val=10, interval_force_save=20, **kwargs) -> CheckpointQueue:
    return CheckpointQueue(
        name, interval_val, interval_force_save, tracking_uri=backend.uri, experiment=backend.experiment, **kwargs
    )


def artifact_folder(backend, store: RegistryStore, version) -> Path:
    """Where a version's files lie on disk (to tamper with them as a broken disk would)."""
    experiment = store.client.get_logged_model(version.model_id).experiment_id
    base = backend.artifacts_dir if backend.kind == "embedded" else backend.artifacts_dir / experiment
    return base / "models" / version.model_id / "artifacts"


def test_a_version_holds_upstream_checkpoint_config_and_manifest(backend, model_name):
    model, optimizer = tiny_model()
    config = {"model": {"type": "CombSubFast", "n_spk": 2}, "train": {"lr": 0.0005}}
    with open_queue(backend, model_name, save_optimizer=True, config=config) as queue:
        train_a_bit(model, optimizer)
        rolling = queue.save(10, model, optimizer).result()
        forced = queue.save(20, model, optimizer).result()

    store = RegistryStore(backend.uri)
    assert rolling.kind == "rolling" and forced.kind == "force_saved"
    assert forced.description == "step 20 · kept: force_saved, newest"
    assert set(forced.tags) == {T.STEP, T.KIND, T.SHA256, T.SIZE}  # what identifies it, nothing more
    files = RegistryStore(backend.uri).files_of(forced)
    assert files.tags[T.CHECKPOINT_FILE] == "model_20.pt" and files.tags[T.QUEUE] == model_name
    with tempfile.TemporaryDirectory() as tmp:
        manifest = fetch_verified(store, forced, tmp)
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["config.yaml", "manifest.json", "model_20.pt"]
        assert isinstance(manifest, Manifest) and set(manifest.files) == {"model_20.pt", "config.yaml"}
        assert manifest.files["model_20.pt"].sha256 == forced.sha256
        assert manifest.files["model_20.pt"].size == forced.size == (Path(tmp) / "model_20.pt").stat().st_size
        ckpt = load_checkpoint(Path(tmp) / "model_20.pt")
        assert yaml.safe_load((Path(tmp) / "config.yaml").read_text()) == config
    assert set(ckpt) == {"global_step", "model", "optimizer"} and ckpt["global_step"] == 20
    for key, tensor in model.state_dict().items():
        assert torch.equal(ckpt["model"][key], tensor)


@pytest.mark.stack
def test_previous_rolling_version_is_deleted_with_its_bytes(backend, model_name):
    """Also on S3: proxied, the server's artifact repository deletes; direct, this client does."""
    model, optimizer = tiny_model()
    with open_queue(backend, model_name, interval_force_save=None) as queue:
        first = queue.save(10, model).result()
        experiment = queue.store.client.get_logged_model(first.model_id).experiment_id
        assert "artifacts/model_10.pt" in backend.checkpoint_files(experiment, first.model_id)
        for step in (20, 30):
            queue.save(step, model).result()
        store = queue.store
        assert versions_by_step(store, model_name) == {30: "rolling"}
        assert backend.checkpoint_files(experiment, first.model_id) == {}, "the retired checkpoint's bytes must be gone"
        assert assert_invariants(store, backend, model_name) == 30


def test_restore_brings_back_weights_optimizer_and_step(backend, model_name):
    model, optimizer = tiny_model(seed=1)
    with open_queue(backend, model_name, save_optimizer=True) as queue:
        assert queue.restore(model, optimizer) == 0  # nothing yet
        train_a_bit(model, optimizer)
        queue.save(30, model, optimizer)
    fresh_model, fresh_optimizer = tiny_model(seed=2)
    with open_queue(backend, model_name, save_optimizer=True) as queue:
        assert queue.restore(fresh_model, fresh_optimizer) == 30
    for key, tensor in model.state_dict().items():
        assert torch.equal(fresh_model.state_dict()[key], tensor)
    saved, restored = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert saved.keys() == restored.keys()
    for index in saved:
        assert torch.equal(saved[index]["exp_avg_sq"], restored[index]["exp_avg_sq"])


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 can tell
    path.write_bytes(bytes(data))


def test_start_finds_a_corrupt_rolling_version_and_falls_back(backend, model_name, caplog):
    """Issue 20: the start finds it and stops, deleting nothing; falling back (and deleting the
    corrupt version) takes a person's `gc --forget-missing`."""
    model, _ = tiny_model()
    with open_queue(backend, model_name) as queue:
        forced = queue.save(20, model).result()
        train_a_bit(model, torch.optim.SGD(model.parameters(), lr=0.1))
        rolling = queue.save(30, model).result()
        corrupt(artifact_folder(backend, queue.store, rolling) / "model_30.pt")

    with pytest.raises(CheckpointIntegrityError) as refused:
        open_queue(backend, model_name)
    assert "model_30.pt is" in str(refused.value) and "sha256" in str(refused.value)  # the start's check names the file
    assert versions_by_step(RegistryStore(backend.uri), model_name) == {20: "force_saved", 30: "rolling"}
    from click.testing import CliRunner
    from mlflow_ddsp.cli import main

    repair = CliRunner().invoke(main, ["--tracking-uri", backend.uri, "gc", model_name, "--forget-missing"])
    assert repair.exit_code == 0, repair.output
    fresh, _ = tiny_model(seed=5)
    with caplog.at_level(logging.WARNING, logger="mlflow_ddsp"), open_queue(backend, model_name) as queue:
        assert queue.restore(fresh) == 20
        store = queue.store
    assert store.alias_version(model_name, "rolling") == forced.version
    assert versions_by_step(store, model_name) == {20: "force_saved"}
    assert_invariants(store, backend, model_name)


def test_restore_falls_back_without_deleting_and_the_next_save_retires(backend, model_name, caplog):
    model, _ = tiny_model()
    with open_queue(backend, model_name) as queue:
        queue.save(20, model).result()
        rolling = queue.save(30, model).result()
    with caplog.at_level(logging.WARNING, logger="mlflow_ddsp"), open_queue(backend, model_name) as queue:
        corrupt(artifact_folder(backend, queue.store, rolling) / "model_30.pt")  # after the start's check
        assert queue.restore(tiny_model(seed=5)[0]) == 20
        assert "falling back" in caplog.text
        store = queue.store
        assert versions_by_step(store, model_name) == {20: "force_saved", 30: "rolling"}  # restore never deletes
        assert store.get_version(model_name, store.alias_version(model_name, "rolling")).step == 20
        queue.save(50, model).result()
    assert versions_by_step(store, model_name) == {20: "force_saved", 50: "rolling"}
    assert_invariants(store, backend, model_name)


def test_a_starting_point_is_used_only_until_the_model_has_its_own_checkpoints(backend, model_name, caplog):
    base_name = model_name + "-base"
    model, _ = tiny_model()
    with open_queue(backend, base_name) as base:
        pinned = base.save(20, model).result()
        base.save(30, model).result()
    source = f"models:/{base_name}/{pinned.version}"

    fresh, optimizer = tiny_model(seed=3)
    with open_queue(backend, model_name) as queue:  # a fine-tune: nothing of its own yet
        assert queue.restore(fresh, source=source) == 20
        train_a_bit(fresh, optimizer)
        child = queue.save(25, fresh).result()
    lineage = RegistryStore(backend.uri).files_of(child).tags  # on the LoggedModel, where the UI shows it
    assert lineage[T.PARENT_VERSION] == str(pinned.version)
    assert lineage[T.PARENT_STEP] == "20" and lineage[T.PARENT_MODEL] == base_name

    # The same command again (a preemptible job restarting): it resumes from its own checkpoint.
    again, _ = tiny_model(seed=4)
    with caplog.at_level(logging.WARNING, logger="mlflow_ddsp"), open_queue(backend, model_name) as queue:
        assert queue.restore(again, source=source) == 25
        assert queue.restore(again, source=pinned.version) == 25
        assert queue.restored_from.version == child.version
    assert f"not from the starting point {source}" in caplog.text
    assert len([r for r in caplog.records if "starting point" in r.getMessage()][0].getMessage().splitlines()) == 1
    for key, tensor in fresh.state_dict().items():
        assert torch.equal(again.state_dict()[key], tensor)
    assert versions_by_step(RegistryStore(backend.uri), model_name) == {25: "rolling"}


def test_same_step_is_saved_once(embedded, model_name):
    model, _ = tiny_model()
    with open_queue(embedded, model_name) as queue:
        assert queue.save(10, model) is not None
        assert queue.save(10, model) is None  # e.g. the end-of-training save right after validation
    assert versions_by_step(RegistryStore(embedded.uri), model_name) == {10: "rolling"}


def test_config_yaml_path_is_stored_verbatim(embedded, model_name, tmp_path):
    path = tmp_path / "my-config.yaml"
    path.write_text("# my comment survives\ndata:\n  sampling_rate: 44100\n")
    model, _ = tiny_model()
    with open_queue(embedded, model_name, config=path) as queue:
        version = queue.save(10, model).result()
        with tempfile.TemporaryDirectory() as tmp:
            fetch_verified(queue.store, version, tmp)
            assert (Path(tmp) / "config.yaml").read_text() == path.read_text()


def test_metrics_are_logged_on_the_run_and_linked_to_the_checkpoint(backend, model_name):
    client = MlflowClient(backend.uri, backend.uri)
    store = RegistryStore(backend.uri)
    run = client.create_run(store.experiment_id(backend.experiment))
    model, _ = tiny_model()
    with open_queue(backend, model_name, run_id=run.info.run_id) as queue:
        version = queue.save(10, model, metrics={"validation/loss": 0.25}).result()
    history = client.get_metric_history(run.info.run_id, "validation/loss")
    assert [(m.step, m.value) for m in history] == [(10, 0.25)]
    logged = client.get_logged_model(version.model_id)
    assert logged.source_run_id == run.info.run_id
    assert {m.key: m.value for m in logged.metrics}["validation/loss"] == 0.25
    assert version.run_id == run.info.run_id
    assert client.get_metric_history(run.info.run_id, "checkpoint/blocking_seconds")[0].step == 10


def test_a_save_dropped_from_the_spool_is_linked_to_nothing(embedded, model_name):
    """A rolling save superseded in the spool while the committer is busy is never registered,
    and the queue logs no point of its own for it: its future's result is None, and the run's
    points are the committed checkpoints' links. The run's curve keeps it through the training
    loop's tracker (test_metrics_road.py: no gap)."""
    client = MlflowClient(embedded.uri, embedded.uri)
    run = client.create_run(RegistryStore(embedded.uri).experiment_id(embedded.experiment))
    model, _ = tiny_model()
    with open_queue(embedded, model_name, interval_force_save=100, run_id=run.info.run_id) as queue:
        uploads = _GatedUploads(queue.store)
        first = queue.save(10, model, metrics={"validation/loss": 0.5})
        assert uploads.entered.wait(timeout=scaled_timeout(60))  # the committer holds step 10
        dropped = queue.save(20, model, metrics={"validation/loss": 0.4})
        newest = queue.save(30, model, metrics={"validation/loss": 0.3})  # supersedes 20 in the spool
        assert dropped.result(timeout=scaled_timeout(60)) is None and queue.dropped_from_spool == 1
        uploads.gate.set()
        assert first.result().step == 10 and newest.result().step == 30
    history = client.get_metric_history(run.info.run_id, "validation/loss")
    assert sorted((m.step, m.value) for m in history) == [(10, 0.5), (30, 0.3)]
    assert versions_by_step(RegistryStore(embedded.uri), model_name) == {30: "rolling"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alias": "latest"}, r"alias='latest' is reserved by MLflow"),
        ({"alias": "V3"}, r"alias='V3' is reserved"),
        ({"interval_val": 2000, "interval_force_save": 3000}, r"interval_force_save=3000 .* train.interval_val=2000"),
        ({"when_busy": "drop"}, r"when_busy='drop' must be one of wait, skip"),
    ],
)
def test_bad_arguments_fail_before_touching_the_network(kwargs, message):
    # An unreachable URI proves no connection was attempted: validation comes first.
    args = {"interval_val": 10, "interval_force_save": 20, **kwargs}
    with pytest.raises(ConfigError, match=message):
        CheckpointQueue("voice", tracking_uri=f"http://127.0.0.1:{free_port()}", **args)


def test_unreachable_server_is_one_actionable_line():
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingServerUnreachable) as info:
        CheckpointQueue("voice", 10, 20, tracking_uri=uri)
    message = str(info.value)
    assert "\n" not in message and uri in message and "MLFLOW_TRACKING_URI" in message


def test_background_failure_surfaces_at_next_save_and_nothing_is_lost(embedded, model_name):
    model, _ = tiny_model()
    artifacts = embedded.artifacts_dir
    queue = open_queue(embedded, model_name)
    good = queue.save(10, model).result()
    # Break the artifact store the way a full or vanished disk would: even root
    # cannot create folders under a path that is a file.
    shutil.move(artifacts, artifacts.with_name("moved"))
    artifacts.write_text("not a folder")
    queue.save(30, model)  # returns at once; the upload fails in the background
    with pytest.raises(CheckpointSaveError, match=r"checkpoint of step 30 failed"):
        queue.flush()
    queue.save(50, model)  # supersedes 30 in the spool, and fails the same way
    with pytest.raises(CheckpointSaveError, match=r"step 50"):
        queue.close()
    assert [e.step for e in queue.left_in_spool] == [50]  # 30 was dropped: 50 supersedes it
    artifacts.unlink()
    shutil.move(artifacts.with_name("moved"), artifacts)

    store = RegistryStore(embedded.uri)
    assert store.alias_version(model_name, "rolling") == good.version
    with open_queue(embedded, model_name) as reopened:  # commits the spool, then reconcile drops the failed uploads
        assert reopened.last_reconcile.delete_models
        assert reopened.restore(tiny_model(seed=9)[0]) == 50
    assert versions_by_step(store, model_name) == {50: "rolling"}
    assert not list(reopened.spool.folder.iterdir())
    assert_invariants(store, embedded, model_name)


class _GatedUploads:
    """Holds the background thread at its first MLflow call until released."""

    def __init__(self, store: RegistryStore):
        self.gate = threading.Event()
        self.entered = threading.Event()
        real = store.create_files

        def gated(*args, **kwargs):
            self.entered.set()
            assert self.gate.wait(timeout=scaled_timeout(60)), "test never released the gate"
            return real(*args, **kwargs)

        store.create_files = gated


def test_save_returns_after_staging_and_snapshots_the_state(embedded, model_name):
    model, optimizer = tiny_model()
    with open_queue(embedded, model_name) as queue:
        uploads = _GatedUploads(queue.store)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        future = queue.save(10, model)
        assert uploads.entered.wait(timeout=scaled_timeout(60))
        assert not future.done()  # save() returned while the commit is still pending
        train_a_bit(model, optimizer)  # training goes on, mutating parameters in place
        uploads.gate.set()
        version = future.result()
        with tempfile.TemporaryDirectory() as tmp:
            fetch_verified(queue.store, version, tmp)
            saved = load_checkpoint(Path(tmp) / "model_10.pt")["model"]
    for key, tensor in before.items():
        assert torch.equal(saved[key], tensor), "the checkpoint must hold the state at save() time"
    assert not torch.equal(saved["0.weight"], model.state_dict()["0.weight"])


def test_when_busy_skip_drops_rolling_saves_but_never_a_force_save(embedded, model_name):
    model, _ = tiny_model()
    with open_queue(embedded, model_name, interval_force_save=30, when_busy="skip") as queue:
        uploads = _GatedUploads(queue.store)
        first = queue.save(10, model)
        assert uploads.entered.wait(timeout=scaled_timeout(60))
        assert queue.save(20, model) is None  # rolling, busy: skipped
        assert queue.skipped_saves == 1
        results = {}
        force = threading.Thread(target=lambda: results.update(f=queue.save(30, model)))
        force.start()  # a force-save waits for the busy worker instead
        uploads.gate.set()
        force.join(timeout=scaled_timeout(120))
        assert not force.is_alive()
        assert first.result().step == 10
        assert results["f"].result().kind == "force_saved"
    assert versions_by_step(RegistryStore(embedded.uri), model_name) == {30: "force_saved"}


def test_a_skipped_save_is_linked_to_nothing(embedded, model_name):
    """when_busy="skip" skips the checkpoint: the queue links only committed checkpoints and logs no
    point of its own. The validation point stays in the run through the training loop's tracker
    (test_metrics_road.py: no gap, issue 22)."""
    client = MlflowClient(embedded.uri, embedded.uri)
    run = client.create_run(RegistryStore(embedded.uri).experiment_id(embedded.experiment))
    model, _ = tiny_model()
    with open_queue(embedded, model_name, interval_force_save=100, when_busy="skip", run_id=run.info.run_id) as queue:
        uploads = _GatedUploads(queue.store)
        first = queue.save(10, model, metrics={"validation/loss": 0.5})
        assert uploads.entered.wait(timeout=scaled_timeout(60))
        assert queue.save(20, model, metrics={"validation/loss": 0.4}) is None  # skipped: busy
        uploads.gate.set()
        assert first.result().step == 10
    history = client.get_metric_history(run.info.run_id, "validation/loss")
    assert sorted((m.step, m.value) for m in history) == [(10, 0.5)]
    assert versions_by_step(RegistryStore(embedded.uri), model_name) == {10: "rolling"}


# -- the local spool -----------------------------------------------------------------------------
def test_the_spool_of_an_embedded_store_lies_beside_its_database_and_is_empty_after_commits(embedded, model_name):
    model, _ = tiny_model()
    with open_queue(embedded, model_name) as queue:
        queue.save(10, model).result()
        assert queue.spool.folder.is_relative_to(Path(embedded.uri[len("sqlite:///"):]).parent / "mlflow-ddsp-spool")
        assert list(queue.spool.folder.iterdir()) == []


def test_a_damaged_spool_entry_is_set_aside_not_committed(embedded, model_name, caplog):
    """A spooled save whose bytes changed on disk (a bad disk) is kept aside for a person, never registered."""
    model, _ = tiny_model()
    with open_queue(embedded, model_name) as queue:
        queue.save(10, model).result()
        folder = queue.spool.folder
    # What a process killed after spooling step 20 leaves, with the checkpoint then corrupted.
    from mlflow_ddsp.checkpoint.spool import Spool

    entry = Spool(embedded.uri, model_name).write(
        20, "rolling", {"global_step": 20, "model": model.state_dict()}, b"{}\n", {}, None,
        metrics={}, blocked_seconds=0.0, run_id=None, experiment_id="0", files_tags={},
    )  # fmt: skip
    path = entry.folder / "model_20.pt"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with open_queue(embedded, model_name) as queue:
        assert queue.restore(tiny_model(seed=3)[0]) == 10
    assert [p.name.startswith(".damaged-step-000000000020") for p in folder.iterdir()] == [True]
    assert any("damaged" in r.getMessage() and "not committed" in r.getMessage() for r in caplog.records)


def test_a_spool_folder_that_cannot_be_made_is_one_line_and_releases_the_lease(embedded, model_name, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"spool folder .* cannot be used \(Not a directory\)") as info:
        open_queue(embedded, model_name, spool_dir=tmp_path / "a-file")
    assert "\n" not in str(info.value)
    with open_queue(embedded, model_name) as queue:  # the lease was released
        assert queue.spool.folder.is_dir()


def test_a_spool_write_that_fails_is_one_line_with_the_free_space_and_what_to_do(embedded, model_name):
    model, _ = tiny_model()
    with open_queue(embedded, model_name) as queue:
        queue.save(10, model).result()
        folder = queue.spool.folder
        shutil.rmtree(folder)
        folder.write_text("a file where the spool's folder was: every write there fails")
        queue.save(30, model)
        with pytest.raises(CheckpointSaveError) as info:
            queue.save(50, model)
        message = str(info.value)
        assert "\n" not in message and "step 30" in message and "MB free" in message
        assert "MLFLOW_DDSP_SPOOL_DIR" in message
        folder.unlink()
        folder.mkdir()


def test_constructing_without_recovery_touches_no_server_and_returns_at_once(tmp_path):
    """Start-up recovery is an explicit step (issue 22): a queue made with recover=False
    against a port where nothing listens validates its options and contacts nothing."""
    import time

    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    queue = CheckpointQueue("voice", 10, 20, tracking_uri=uri, spool_dir=tmp_path / "spool", recover=False)
    assert time.monotonic() - started < 1.0  # MLflow's client would retry for minutes; /health alone takes a try
    assert not (tmp_path / "spool").exists()  # not even the spool folder is made before recovery
    with pytest.raises(RuntimeError, match=r"recover=False: call recover\(\) first"):
        queue.save(10, tiny_model()[0])
    with pytest.raises(TrackingServerUnreachable, match=r"cannot reach the MLflow tracking server"):
        queue.recover()  # recovery is where the server is first contacted
    queue.close()
