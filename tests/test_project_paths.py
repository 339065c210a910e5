"""Paths as the user meant them (issue 23, point 8).

`mlflow run <project> -e train -P config=my.yaml`, started from a data folder, must read
the data where the user's relative paths point: MLflow runs the command in the project
folder, so the MLproject changes to its `cwd` parameter first (a `path` parameter, which
MLflow makes absolute against the folder `mlflow run` was started from). Messages that
name a data path name it absolutely, so "no recordings in data/train/audio" never leaves
the user guessing relative to what.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient

from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.cli import main
from mlflow_ddsp.corpus import FEATURE_KINDS, speaker_id
from mlflow_ddsp.errors import ConfigError

from conftest import scaled_timeout, tiny_config
from registry_checks import versions_by_step

ROOT = Path(__file__).resolve().parents[1]


def relative_config(folder: Path, name: str, **train) -> Path:
    """``folder/my.yaml`` with the data, expdir... as relative paths: ``data/train``, ``data/val``."""
    path = tiny_config(Path("data"), folder / "my.yaml", name, **train)
    doc = yaml.safe_load(path.read_text())
    assert doc["data"]["train_path"] == "data/train"  # relative, as a user writes it
    return path


def mlflow_run(folder: Path, entry_point: str, *params: str) -> subprocess.CompletedProcess:
    """`mlflow run <this checkout> -e ENTRY_POINT -P ... --env-manager local`, started in ``folder``."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}
    args = [arg for p in params for arg in ("-P", p)]
    return subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", entry_point, *args, "--env-manager", "local"],
        capture_output=True, text=True, timeout=scaled_timeout(600), env=env, cwd=folder,
    )  # fmt: skip


# -- messages name absolute paths (no subprocess) ---------------------------------------


def test_a_missing_data_folder_is_named_absolutely(tmp_path, monkeypatch):
    folder = tmp_path / "voice"
    folder.mkdir()
    config = relative_config(folder, "nodata")
    monkeypatch.chdir(folder)
    result = CliRunner().invoke(main, ["preprocess", "-c", "my.yaml"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: data.train_path='data/train': no folder {folder / 'data' / 'train' / 'audio'}; "
        "put the recordings there\n"
    )
    result = CliRunner().invoke(main, ["preprocess", "-c", "nope.yaml"])
    assert result.stderr == f"error: config file 'nope.yaml' not found (looked for {folder / 'nope.yaml'})\n"
    assert config.is_file()


def test_a_recording_outside_a_speaker_folder_is_named_absolutely(tmp_path):
    with pytest.raises(ConfigError) as caught:
        speaker_id("stray.wav", 2, root=Path("data/train"))
    assert str(caught.value).startswith(f"{Path.cwd() / 'data' / 'train' / 'audio' / 'stray.wav'}: with model.n_spk=2")


# -- `mlflow run` from another folder ----------------------------------------------------


@pytest.mark.slow
def test_mlflow_run_from_a_data_folder_reads_its_relative_paths(demo_data, tmp_path, model_name):
    """Preprocess and train through `mlflow run <project>` started in the user's folder, whose
    config says `data/train`: the features and the spool land there, training reads them."""
    folder = tmp_path / "voice"
    for split in ("train", "val"):
        shutil.copytree(demo_data / split / "audio", folder / "data" / split / "audio")
    relative_config(folder, model_name, max_steps=2, interval_val=2, interval_force_save=None)

    prep = mlflow_run(folder, "preprocess", "config=my.yaml", "workers=1")
    assert prep.returncode == 0, prep.stderr[-3000:]
    assert f"train ({folder / 'data' / 'train'}): " in prep.stdout
    for kind in FEATURE_KINDS:
        assert sorted((folder / "data" / "train" / kind).rglob("*.npy")), kind

    train = mlflow_run(folder, "train", "config=my.yaml")
    assert train.returncode == 0, train.stderr[-3000:]
    store = RegistryStore(f"sqlite:///{folder}/mlflow.db")
    assert versions_by_step(store, model_name) == {2: "rolling"}
    assert (folder / "mlflow-ddsp-spool").is_dir()  # the spool sits where the user works, not in the checkout

    # `-P cwd=...` says the same from anywhere: a config given by absolute path, run from elsewhere.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = mlflow_run(elsewhere, "preprocess", f"config={folder / 'my.yaml'}", f"cwd={folder}", "workers=1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 processed" in again.stdout and not (elsewhere / "data").exists()


@pytest.mark.slow
def test_mlflow_run_from_a_folder_without_the_data_names_the_absolute_path(demo_data, tmp_path, model_name):
    """Started from a folder where `data/train` does not exist, training fails in one line
    naming the absolute folder it looked in; no training run is created for it."""
    folder = tmp_path / "not-the-data-folder"
    folder.mkdir()
    relative_config(folder, model_name)
    proc = mlflow_run(folder, "train", "config=my.yaml")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: no recordings in {folder / 'data' / 'train' / 'audio'} with extensions ['wav']; "
        "put your .wav files there (see data.train_path / data.valid_path)"
    ], proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    assert client.get_experiment_by_name(f"exp-{model_name}") is None or not client.search_runs(
        [client.get_experiment_by_name(f"exp-{model_name}").experiment_id]
    )
    assert not client.search_registered_models(f"name = '{model_name}'"), "a failed start left a registered model"
    # The run `mlflow run` made before our command started says why it failed (issue 23, point 8).
    (project_run,) = client.search_runs(["0"])
    assert project_run.info.status == "FAILED"
    assert project_run.data.tags["mlflow.note.content"] == f"`mlflow-ddsp train` failed: {errors[0][len('error: '):]}"
