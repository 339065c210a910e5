"""Nothing lost: a changed byte never costs a checkpoint (issue 20, point 2).

One flipped bit in a validation PNG (or an edited ``MLmodel``) of the only version
used to make the next start, save or ``gc`` judge the whole version damaged and
delete it with its intact ``model_<N>.pt``; a changed ``model_<N>.pt`` of the newest
version was deleted and training fell back to an older step (or step 0). Now:

* auxiliary files (validation media, ``MLmodel``, environment files, ``trainer_state.pt``)
  never decide a version's fate: it stays, training resumes from it and one line names
  the file that differs;
* a changed essential file (``model_<N>.pt``, ``config.yaml``) of the newest version
  deletes nothing: the start and ``gc`` stop with one line naming the file, both
  sha256 and the repair; ``gc --forget-missing`` is that repair.

Against the embedded store and a real ``mlflow server`` (``backend``).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.cli import main
from mlflow_ddsp.errors import CheckpointIntegrityError

from registry_checks import versions_by_step

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # the bytes do not matter, only that one changes
MLMODEL = b"flavors:\n  python_function:\n    loader_module: mlflow_ddsp.serving.pyfunc\n"


def open_queue(backend, name, interval_force_save=None, **kwargs) -> CheckpointQueue:
    return CheckpointQueue(name, 10, interval_force_save, tracking_uri=backend.uri, experiment=backend.experiment,
                           extra_files={"MLmodel": MLMODEL}, **kwargs)  # fmt: skip


def cli(backend, *args: str):
    return CliRunner().invoke(main, ["--tracking-uri", backend.uri, *args], catch_exceptions=False)


def a_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 4)


def stored(backend, store: RegistryStore, version) -> Path:
    """The folder holding a version's files on disk (to change a byte as a bad disk would)."""
    experiment = store.client.get_logged_model(version.model_id).experiment_id
    base = backend.artifacts_dir if backend.kind == "embedded" else backend.artifacts_dir / experiment
    return base / "models" / version.model_id / "artifacts"


def flip(path: Path) -> str:
    """Flip one bit in the middle of ``path``; returns the file's new sha256."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return hashlib.sha256(bytes(data)).hexdigest()


def save_one(backend, name, step=10, interval_force_save=None):
    model = a_model()
    with open_queue(backend, name, interval_force_save) as queue:
        version = queue.save(step, model, trainer_state={"epoch": torch.tensor(3)},
                             attachments={"validation_spk1.png": PNG}).result()  # fmt: skip
        return model, version, queue.store


@pytest.mark.parametrize("changed", ["validation_spk1.png", "MLmodel", "trainer_state.pt"])
def test_a_changed_auxiliary_file_never_costs_the_checkpoint(backend, model_name, changed, caplog):
    model, version, store = save_one(backend, model_name)
    folder = stored(backend, store, version)
    flip(folder / changed)

    result = cli(backend, "gc", model_name)
    assert result.exit_code == 0, result.output
    assert versions_by_step(store, model_name) == {10: "rolling"}
    assert (folder / "model_10.pt").is_file()

    fresh = a_model(seed=7)
    with caplog.at_level(logging.WARNING, logger="mlflow_ddsp"), open_queue(backend, model_name) as queue:
        assert versions_by_step(store, model_name) == {10: "rolling"}  # the start kept it
        assert queue.restore(fresh) == 10  # resumed from its intact weights
        lines = [r.getMessage() for r in caplog.records if changed in r.getMessage()]
        assert lines and all("\n" not in line for line in lines)
        assert any("intact" in line for line in lines)  # says the checkpoint itself is fine
        if changed == "trainer_state.pt":
            assert queue.restored_trainer_state is None  # a changed trainer state is not loaded
        else:
            assert queue.restored_trainer_state is not None
        assert queue.save(20, fresh).result().step == 20  # the next save works
    for key, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], tensor)
    assert versions_by_step(store, model_name) == {20: "rolling"}  # v10 retired by the ordinary rule


@pytest.mark.parametrize("changed", ["model_10.pt", "config.yaml"])
def test_a_changed_checkpoint_of_the_only_version_stops_and_deletes_nothing(backend, model_name, changed):
    _, version, store = save_one(backend, model_name)
    folder = stored(backend, store, version)
    manifest = (folder / "manifest.json").read_text()
    found = flip(folder / changed)

    with pytest.raises(CheckpointIntegrityError) as info:
        open_queue(backend, model_name)
    message = str(info.value)
    assert "\n" not in message and changed in message and found in message
    assert message.count("sha256") >= 2
    expected = manifest.split(f'"{changed}"')[1].split('"sha256": "')[1].split('"')[0]
    assert expected in message  # both digests, in full: compare with a backup's sha256sum
    assert f"mlflow-ddsp gc {model_name} --forget-missing" in message and "nothing was deleted" in message
    assert versions_by_step(store, model_name) == {10: "rolling"}
    assert (folder / "model_10.pt").is_file() and store.alias_version(model_name, "rolling") == version.version

    result = cli(backend, "gc", model_name)  # gc stops the same way
    assert result.exit_code == 1 and changed in result.output and found in result.output
    assert versions_by_step(store, model_name) == {10: "rolling"}


def test_a_changed_newest_checkpoint_never_falls_back_silently(backend, model_name, caplog):
    """Before: the start deleted v(30) and training resumed from step 20."""
    model = a_model()
    with open_queue(backend, model_name, interval_force_save=20) as queue:
        forced = queue.save(20, model).result()
        newest = queue.save(30, model).result()
        store = queue.store
    flip(stored(backend, store, newest) / "model_30.pt")

    with pytest.raises(CheckpointIntegrityError, match="model_30.pt"):
        open_queue(backend, model_name, interval_force_save=20)
    assert versions_by_step(store, model_name) == {20: "force_saved", 30: "rolling"}
    assert store.alias_version(model_name, "rolling") == newest.version

    # The person's choice: the file is lost for good.
    result = cli(backend, "gc", model_name, "--forget-missing")
    assert result.exit_code == 0 and "delete rolling version" in result.output
    with open_queue(backend, model_name, interval_force_save=20) as queue:
        assert queue.restore(a_model(seed=3)) == 20
    assert versions_by_step(store, model_name) == {20: "force_saved"}
    assert store.alias_version(model_name, "rolling") == forced.version


def test_a_changed_force_saved_newest_is_kept_and_refused_until_given_up(backend, model_name):
    model = a_model()
    with open_queue(backend, model_name, interval_force_save=10) as queue:
        first = queue.save(10, model).result()
        newest = queue.save(20, model).result()
        store = queue.store
    flip(stored(backend, store, newest) / "model_20.pt")
    with pytest.raises(CheckpointIntegrityError, match="model_20.pt"):
        open_queue(backend, model_name, interval_force_save=10)
    assert store.alias_version(model_name, "rolling") == newest.version

    assert cli(backend, "gc", model_name, "--forget-missing").exit_code == 0
    with open_queue(backend, model_name, interval_force_save=10) as queue:  # given up: resumes from step 10
        assert queue.restore(a_model(seed=3)) == 10
    assert versions_by_step(store, model_name) == {10: "force_saved", 20: "force_saved"}  # never deleted
    assert store.alias_version(model_name, "rolling") == first.version
