"""Shared fixtures: every test gets a clean environment; registry tests run on two backends.

``backend`` is parametrized over the embedded SQLite store (a fresh database in
the test's tmp folder) and a real ``mlflow server`` process (SQLite backend,
proxied artifacts in a tmp folder, 127.0.0.1, a free port) shared by the
session; each test gets its own registered model and experiment on it.
"""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mlflow_ddsp.local_server import LocalServer
from mlflow_ddsp.tracking import prepare_store


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch, tmp_path):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_DDSP_CRASH_AT",
                "MLFLOW_DDSP_FAIL_AT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.chdir(tmp_path)  # the embedded default store (./mlflow.db) lands here


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """An empty, fully migrated tracking database: copying it costs ms, migrating ~5 s."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    prepare_store(f"sqlite:///{db}")
    return db


def fresh_embedded(template: Path, root: Path, experiment: str) -> "Backend":
    shutil.copyfile(template, root / "mlflow.db")
    return Backend("embedded", f"sqlite:///{root}/mlflow.db", root / "mlartifacts", experiment)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    with LocalServer(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


@dataclass(frozen=True)
class Backend:
    kind: str  # "embedded" | "server"
    uri: str
    artifacts_dir: Path  # where the artifact bytes land on disk
    experiment: str  # unique per test

    def checkpoint_dirs(self, experiment_ids) -> set[str]:
        """LoggedModel folders (``models/m-<id>``) on disk for the given experiments."""
        roots = (
            [self.artifacts_dir / "models"]
            if self.kind == "embedded"
            else [self.artifacts_dir / str(e) / "models" for e in experiment_ids]
        )
        return {p.name for root in roots if root.is_dir() for p in root.iterdir()}


def _unique(request, prefix: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:40].strip("-")
    return f"{prefix}-{base}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(params=["embedded", pytest.param("server", marks=pytest.mark.server)])
def backend(request, tmp_path, sqlite_template) -> Backend:
    experiment = _unique(request, "exp")
    if request.param == "embedded":
        return fresh_embedded(sqlite_template, tmp_path, experiment)
    server = request.getfixturevalue("mlflow_server")
    return Backend("server", server.uri, server.artifacts_dir, experiment)


@pytest.fixture
def embedded(tmp_path, request, sqlite_template) -> Backend:
    return fresh_embedded(sqlite_template, tmp_path, _unique(request, "exp"))


@pytest.fixture
def model_name(request) -> str:
    return _unique(request, "voice")


def tiny_config(data_dir: Path, path: Path, name: str, **train) -> Path:
    """A config small enough to train a few steps on the CPU in seconds."""
    doc = {
        "data": {
            "f0_extractor": "parselmouth", "sampling_rate": 44100, "block_size": 512, "duration": 0.5,
            "encoder": "logmel", "encoder_out_channels": 128,
            "train_path": str(data_dir / "train"), "valid_path": str(data_dir / "val"),
        },
        "model": {"type": "CombSubFast", "n_spk": 2},
        "device": "cpu",
        "env": {"expdir": f"exp/{name}"},
        "train": {"batch_size": 2, "num_workers": 0, "interval_log": 2, "interval_val": 4,
                  "interval_force_save": 8, "max_steps": 10, "cache_fp16": False, "save_opt": True, **train},
        "mlflow": {"experiment": f"exp-{name}", "audio_clips": 2},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small preprocessed two-speaker dataset, made once per test session."""
    root = tmp_path_factory.mktemp("demo-data")
    from mlflow_ddsp.config import load_config
    from mlflow_ddsp.demo_data import make_demo_dataset
    from mlflow_ddsp.preprocess import preprocess

    make_demo_dataset(root, seconds_per_speaker=8, progress=False)
    preprocess(load_config(tiny_config(root, root / "config.yaml", "prep")), workers=1, progress=False)
    return root
