"""Lineage across resumed runs, version comparison, import/export and the demo, through the CLI."""

from __future__ import annotations

import re

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import soundfile as sf
from click.testing import CliRunner
from mlflow import MlflowClient

from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.cli import main
from mlflow_ddsp import tags as T
from mlflow_ddsp.store.location import prepare_store

from conftest import scaled_timeout, tiny_config
from registry_checks import assert_invariants, versions_by_step

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def cli(uri: str, *args: str):
    result = CliRunner().invoke(main, ["--tracking-uri", uri, *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def three_resumed_runs(demo_data, embedded, tmp_path, model_name):
    """Three training runs, each resuming the last: steps 4, 8, 12; the rolling parents are deleted."""
    config = tiny_config(demo_data, tmp_path / "tiny.yaml", model_name, interval_force_save=None)
    for steps in (4, 8, 12):
        cli(embedded.uri, "train", "-c", str(config), "--set", f"train.max_steps={steps}")
    return embedded, model_name


def test_lineage_follows_resumptions_through_deleted_versions(three_resumed_runs):
    backend, name = three_resumed_runs
    store = RegistryStore(backend.uri)
    assert versions_by_step(store, name) == {12: "rolling"}  # 4 and 8 were replaced and deleted
    result = cli(backend.uri, "lineage", name, "--json")
    chain = json.loads(result.stdout)
    assert [(c["step"], c["exists"]) for c in chain] == [(12, True), (8, False), (4, False)]
    runs = [c["run_id"] for c in chain]
    assert len(set(runs)) == 3, "each link was trained by its own run"
    client = MlflowClient(backend.uri)
    for entry in chain:
        tags = client.get_run(entry["run_id"]).data.tags
        assert entry["config_digest"] == tags[T.CONFIG_DIGEST] and entry["dataset_digest"] == tags[T.DATASET_DIGEST]
        assert entry["git_commit"] == tags.get(T.GIT_COMMIT)
    text = cli(backend.uri, "lineage", name).stdout.splitlines()
    assert text[0].startswith(f"{name} v") and "step 12  rolling" in text[0]
    assert "└ resumed from" in text[1] and "step 8  deleted" in text[1]
    assert text[-1].strip() == "└ trained from scratch"


def test_compare_converts_a_clip_with_each_version_and_logs_it(demo_data, embedded, tmp_path, model_name):
    config = tiny_config(demo_data, tmp_path / "tiny.yaml", model_name)
    cli(embedded.uri, "train", "-c", str(config))  # versions at 8 (force-saved) and 10 (rolling)
    versions = {v.step: v.version for v in RegistryStore(embedded.uri).list_versions(model_name)}
    clip = next((demo_data / "val" / "audio" / "1").glob("*.wav"))
    out = tmp_path / "compare"
    result = cli(embedded.uri, "compare", model_name, str(versions[8]), str(versions[10]),
                 "-i", str(clip), "-o", str(out), "--spk-id", "2")  # fmt: skip
    wavs = sorted(out.glob("*.wav"))
    assert [w.name for w in wavs] == [f"{clip.stem}_v{versions[8]}.wav", f"{clip.stem}_v{versions[10]}.wav"]
    for wav in wavs:
        info = sf.info(str(wav))
        assert info.samplerate == 44100 and abs(info.frames - sf.info(str(clip)).frames) <= 512
    image = matplotlib.image.imread(out / f"{clip.stem}_compare.png")
    assert image.shape[1] > 2.5 * image.shape[0]  # three spectrograms side by side
    run_id = result.stdout.strip().split()[-1]
    artifacts = {a.path for a in MlflowClient(embedded.uri).list_artifacts(run_id, "compare")}
    assert artifacts == {f"compare/{w.name}" for w in wavs} | {f"compare/{clip.stem}_compare.{e}" for e in ("png", "tsv")}

    # The metrics table beside the image: step, validation loss (8 was validated, 10 is the end save), size.
    table = [line.split() for line in result.stdout.splitlines() if re.match(r"^(VERSION|v\d+ )", line)]
    assert table[0] == ["VERSION", "STEP", "VALIDATION/LOSS", "SIZE", "(MB)"]
    assert [row[:2] for row in table[1:]] == [[f"v{versions[8]}", "8"], [f"v{versions[10]}", "10"]]
    assert float(table[1][2]) > 0 and table[2][2] == "-" and float(table[1][3]) > 0
    rows = (out / f"{clip.stem}_compare.tsv").read_text().splitlines()
    assert rows[0] == "version\tstep\tvalidation/loss\tsize_bytes" and len(rows) == 3


def test_import_and_export_commands(embedded, model_name, tmp_path):
    from test_transfer import write_upstream_expdir

    files = write_upstream_expdir(tmp_path / "exp", [4000, 6000], with_optimizer=False)
    first = cli(embedded.uri, "import", str(tmp_path / "exp"), "--name", model_name).stdout
    assert "imported model_4000.pt as" in first and "(force_saved)" in first and "2 imported, 0 already there" in first
    again = cli(embedded.uri, "import", str(tmp_path / "exp"), "--name", model_name).stdout
    assert "0 imported, 2 already there" in again
    cli(embedded.uri, "export", f"models:/{model_name}@rolling", str(tmp_path / "out"))
    assert (tmp_path / "out" / "model_6000.pt").read_bytes() == files[6000].read_bytes()
    assert_invariants(RegistryStore(embedded.uri), embedded, model_name)


def test_mlflow_run_main_entry_point_runs_the_demo(tmp_path):
    """`mlflow run . --env-manager local`: the README's main job, shortened."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    prepare_store(env["MLFLOW_TRACKING_URI"])  # artifacts beside the db, not in the checkout `mlflow run` runs in
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local",
         "-P", f"workdir={tmp_path / 'demo'}", "-P", "max_steps=60"],
        capture_output=True, text=True, timeout=scaled_timeout(900), env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained demo-voice to step 60" in proc.stdout
    assert "mlflow ui --backend-store-uri" in proc.stdout
    # 50, the only validated checkpoint, stays as the best; 60 is the end-of-training save.
    store = RegistryStore(env["MLFLOW_TRACKING_URI"])
    assert versions_by_step(store, "demo-voice") == {50: "rolling", 60: "rolling"}
    assert store.get_version("demo-voice", store.alias_version("demo-voice", "best")).step == 50
    assert not (ROOT / "mlruns").exists() and not (ROOT / "mlartifacts").exists()

    # The training run is in the configured experiment, tagged for MLflow's model view; the
    # project's run (MLflow puts it in "Default") names it.
    import yaml

    configured = yaml.safe_load((ROOT / "projects" / "demo" / "config.yaml").read_text())["mlflow"]["experiment"]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(configured)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    training = store.get_version("demo-voice", store.alias_version("demo-voice", "rolling")).run_id
    assert client.get_run(training).info.experiment_id == experiment.experiment_id
    project = client.get_run(training).data.tags[T.PROJECT_RUN]
    assert client.get_run(project).data.tags[T.TRAINING_RUN] == training
