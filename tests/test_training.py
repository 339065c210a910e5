"""Training end to end: the CLI against a real `mlflow server`, SIGTERM and resume, `mlflow run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient

from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.cli import main
from mlflow_ddsp import tags as T

from conftest import rolling_checkpoint, scaled_timeout, tiny_config
from registry_checks import versions_by_step

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_cli_training_against_a_real_server(demo_data, mlflow_server, tmp_path, model_name):
    config = tiny_config(demo_data, tmp_path / "tiny.yaml", model_name)
    result = CliRunner().invoke(main, ["--tracking-uri", mlflow_server.uri, "train", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert f"trained {model_name} from step 0 to 10" in result.stdout

    client = MlflowClient(mlflow_server.uri, mlflow_server.uri)
    store = RegistryStore(mlflow_server.uri)
    versions = {v.step: v for v in store.list_versions(model_name)}
    assert versions_by_step(store, model_name) == {8: "force_saved", 10: "rolling"}
    assert store.alias_version(model_name, "rolling") == versions[10].version
    run_id = versions[8].run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"

    # Metrics: train/loss every interval_log, validation/loss every interval_val, linked to the checkpoint.
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [2, 4, 6, 8, 10]
    validation = client.get_metric_history(run_id, "validation/loss")
    assert [m.step for m in validation] == [4, 8]
    logged = client.get_logged_model(versions[8].model_id)
    assert {m.key: m.value for m in logged.metrics}["validation/loss"] == validation[-1].value

    # Config as params and as the yaml itself; lineage on the run and on each version.
    assert run.data.params["model.type"] == "CombSubFast" and run.data.params["train.interval_val"] == "4"
    logged_config = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path)))
    assert yaml.safe_load(logged_config.read_text())["mlflow"]["experiment"] == f"exp-{model_name}"
    for tag in (T.CONFIG_DIGEST, T.DATASET_DIGEST):
        assert store.files_of(versions[10]).tags[tag] == run.data.tags[tag]

    # Dataset inputs with digests.
    inputs = {[t.value for t in i.tags if t.key == "mlflow.data.context"][0]: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation"}
    assert inputs["training"].digest and inputs["training"].name == "train"

    # A spectrogram image per speaker per validation and gt/pred audio.
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert images, "validation spectrograms are logged as images"
    audio_dir = Path(client.download_artifacts(run_id, "validation/step_00000008", str(tmp_path)))
    wavs = sorted(p.name for p in audio_dir.iterdir())
    # Every speaker's first clip: a two-singer model is heard whole.
    assert sorted(n.split("_")[0] for n in wavs) == ["spk1", "spk1", "spk2", "spk2"]
    assert sum(n.endswith("_pred.wav") for n in wavs) == 2
    info = sf.info(str(audio_dir / wavs[0]))
    assert info.samplerate == 44100 and info.frames > 44100 // 2

    check_what_the_ui_reads(mlflow_server.uri, model_name, run_id)


def rest(uri: str, endpoint: str, **params) -> dict:
    """GET one endpoint of MLflow's REST API, as the UI does."""
    import json
    import urllib.parse
    import urllib.request

    with urllib.request.urlopen(f"{uri}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(params)}", timeout=30) as r:
        return json.loads(r.read())


def check_what_the_ui_reads(uri: str, name: str, run_id: str) -> None:
    """Through the REST API: LoggedModel <-> version links, trimmed version tags and one-line
    descriptions, the run's experiment and its kind, audio per speaker per validation."""
    versions = rest(uri, "model-versions/search", filter=f"name = '{name}'")["model_versions"]
    assert {v["version"] for v in versions}
    for v in versions:
        model_id = v["source"].removeprefix("models:/")  # version -> LoggedModel (MLflow OSS keeps no model_id column)
        logged = rest(uri, f"logged-models/{model_id}")["model"]
        tags = {t["key"]: t["value"] for t in logged["info"].get("tags", [])}
        assert json.loads(tags["mlflow.modelVersions"]) == [{"name": name, "version": v["version"]}]  # LoggedModel -> version
        assert tags[T.CONFIG_DIGEST] and tags[T.MANIFEST_SHA256]  # lineage and integrity live here
        version_tags = {t["key"] for t in v.get("tags", [])}
        assert version_tags <= {T.STEP, T.KIND, T.SHA256, T.SIZE, T.metric_tag("validation/loss")}, version_tags
        step = int({t["key"]: t["value"] for t in v["tags"]}[T.STEP])
        assert v["description"].startswith(f"step {step} · ") and "kept: " in v["description"]
        assert "\n" not in v["description"]
    run = rest(uri, "runs/get", run_id=run_id)["run"]
    experiment = rest(uri, "experiments/get", experiment_id=run["info"]["experiment_id"])["experiment"]
    assert experiment["name"] == f"exp-{name}"
    assert {t["key"]: t["value"] for t in experiment["tags"]}["mlflow.experimentKind"] == "custom_model_development"
    for step in (4, 8):
        files = [f["path"] for f in rest(uri, "artifacts/list", run_id=run_id, path=f"validation/step_{step:08d}")["files"]]
        for speaker in (1, 2):
            assert sum(f.rsplit("/", 1)[-1].startswith(f"spk{speaker}_") and f.endswith("_pred.wav") for f in files) == 1
    # ... and next to the checkpoint they belong to: in the validated version's own files.
    store = RegistryStore(uri)
    validated = next(v for v in store.list_versions(name) if v.step == 8)
    listed = store.list_sizes(store.files_of(validated))
    for speaker in (1, 2):
        assert {f"validation_spk{speaker}{s}" for s in (".png", "_gt.wav", "_pred.wav")} <= set(listed)


def _read_until(proc: subprocess.Popen, needle: str) -> list[str]:
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"process ended before printing {needle!r}:\n{''.join(lines[-30:])}")


def test_sigterm_saves_the_current_step_and_a_rerun_resumes_there(demo_data, embedded, tmp_path, model_name):
    config = tiny_config(demo_data, tmp_path / "tiny.yaml", model_name, max_steps=100000, interval_log=1)
    command = [sys.executable, "-m", "mlflow_ddsp", "--tracking-uri", embedded.uri, "train", "-c", str(config)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        _read_until(proc, "step 4: validation loss")  # one checkpoint exists; now interrupt
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM received: saving a checkpoint of the current step" in stderr
    store = RegistryStore(embedded.uri)
    stopped_at = max(versions_by_step(store, model_name))
    assert stopped_at >= 4
    assert f"to {stopped_at} " in stdout
    (run,) = MlflowClient(embedded.uri).search_runs([store.experiment_id(f"exp-{model_name}")])
    # Stopped after its save, as designed: FINISHED, tagged with the signal and the step (issue 23).
    assert run.info.status == "FINISHED"
    assert run.data.tags[T.STOPPED_BY] == "SIGTERM" and run.data.tags[T.STOPPED_AT_STEP] == str(stopped_at)

    # The rerun continues at the saved step and stops at max_steps.
    target = stopped_at + 3
    rerun = subprocess.run(command[:-2] + ["-c", str(config), "--set", f"train.max_steps={target}"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming {model_name} from step {stopped_at}" in rerun.stderr
    assert f"from step {stopped_at} to {target}" in rerun.stdout
    assert store.get_version(model_name, store.alias_version(model_name, "rolling")).step == target
    # ... in the same run (one training, one run), FINISHED without the stopped tags.
    (again,) = MlflowClient(embedded.uri).search_runs([store.experiment_id(f"exp-{model_name}")])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert T.STOPPED_BY not in again.data.tags and T.STOPPED_AT_STEP not in again.data.tags


@pytest.mark.server
def test_a_second_ctrl_c_aborts_at_once_saving_nothing_more_and_says_so(demo_data, mlflow_server, tmp_path, model_name):
    """Issue 23, point 5: the first Ctrl-C says "Ctrl-C again to abort without saving"; the second does.

    The server hangs (SIGSTOP) before the first Ctrl-C, so the save it triggers cannot be
    committed: a process that waited for it (MLflow's retries, then the 60 s close
    timeout) would not end within the bound."""
    config = tiny_config(demo_data, tmp_path / "tiny.yaml", model_name, max_steps=100000, interval_log=1)
    command = [sys.executable, "-m", "mlflow_ddsp", "--tracking-uri", mlflow_server.uri, "train", "-c", str(config)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    store = RegistryStore(mlflow_server.uri)
    paused = False
    try:
        _read_until(proc, "step 4: validation loss")
        mlflow_server.pause()
        paused = True
        proc.send_signal(signal.SIGINT)
        _read_until(proc, "Ctrl-C again to abort without saving")
        # A person presses Ctrl-C again when nothing happens. So does the test: about 1 run in 5
        # here, a SIGINT sent right after the first one's message never reaches the process's
        # signal handler at the C level (one byte on a signal.set_wakeup_fd pipe for two kill()s;
        # cause not found), and a third is handled at once.
        started = time.monotonic()
        for _ in range(3):
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=scaled_timeout(5))
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            stdout, stderr = proc.communicate(timeout=scaled_timeout(120))
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            pytest.fail(f"no exit 120 s after the second Ctrl-C:\n{stderr[-3000:]}")
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
        if paused:
            mlflow_server.resume()
    assert proc.returncode == 130, stderr[-3000:]
    line = next((l for l in stderr.splitlines() if "second Ctrl-C" in l), None)
    assert line is not None and "aborted without saving" in line, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert took < scaled_timeout(15), f"the abort took {took:.1f} s"
    # What the aborted process had written to its spool stays there, uncommitted, for the next start.
    spooled = {int(p.name.split("-")[1]) for p in (tmp_path / "state").rglob("step-*") if p.is_dir()}
    assert not spooled & set(versions_by_step(store, model_name)), "the aborted process committed its last save"


def test_config_errors_and_missing_features_are_one_line(demo_data, embedded, tmp_path):
    config = tiny_config(demo_data, tmp_path / "tiny.yaml", "errors", interval_force_save=6)
    result = CliRunner().invoke(main, ["--tracking-uri", embedded.uri, "train", "-c", str(config)])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: train.interval_force_save=6 must be a positive multiple of train.interval_val=4 (e.g. 20), "
        "or null to never force-save; upstream DDSP-SVC would silently keep only multiples of their lcm"
    )
    empty = tmp_path / "fresh"
    recording = next((demo_data / "train" / "audio" / "1").glob("*.wav"))
    config = tiny_config(empty, tmp_path / "fresh.yaml", "fresh")
    # No recordings: refused before a run or a registered model exists.
    result = CliRunner().invoke(main, ["--tracking-uri", embedded.uri, "train", "-c", str(config)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: no recordings in {empty / 'train' / 'audio'}"), result.stderr
    assert not MlflowClient(embedded.uri).search_registered_models("name = 'fresh'")
    for split in ("train", "val"):
        (empty / split / "audio").mkdir(parents=True)
        (empty / split / "audio" / "a.wav").write_bytes(recording.read_bytes())
    result = CliRunner().invoke(main, ["--tracking-uri", embedded.uri, "train", "-c", str(config)])
    assert result.exit_code == 1
    assert "are not preprocessed" in result.stderr and "mlflow-ddsp preprocess -c CONFIG" in result.stderr
    assert "Traceback" not in result.output


def test_mlflow_run_train_entry_point(demo_data, tmp_path, model_name):
    """`mlflow run . -e train ... --env-manager local`, as the README shows it."""
    config = tiny_config(demo_data, tmp_path / "tiny.yaml", model_name, max_steps=4)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "train", "-P", f"config={config}",
         "-P", "set=train.interval_log=1", "--env-manager", "local"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = RegistryStore(env["MLFLOW_TRACKING_URI"])
    assert versions_by_step(store, model_name) == {4: "rolling"}
    run = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(store.list_versions(model_name)[0].run_id)
    assert run.info.status == "FINISHED" and run.data.tags.get("mlflow.project.entryPoint") == "train"
    assert [m.step for m in MlflowClient(env["MLFLOW_TRACKING_URI"]).get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4]


# Data parallel training (torchrun, 2 processes) is tested in test_outages.py, against a server
# that hangs during the resumed run.


def test_a_second_writer_is_refused_before_data_loading_and_leaves_no_run(embedded, tmp_path, model_name):
    from mlflow_ddsp.checkpoint.lease import WriterLease

    # Unreadable data: had the trainer loaded data or created a run first, it would fail otherwise.
    data = tmp_path / "unreadable-data"  # recordings listed, none readable: loading them would fail
    for split in ("train", "val"):
        (data / split / "audio").mkdir(parents=True)
        (data / split / "audio" / "a.wav").write_bytes(b"not audio")
    config = tiny_config(data, tmp_path / "tiny.yaml", model_name)
    store = RegistryStore(embedded.uri)
    lease = WriterLease(store, model_name).acquire()
    try:
        result = CliRunner().invoke(main, ["--tracking-uri", embedded.uri, "train", "-c", str(config)])
    finally:
        lease.release()
    assert result.exit_code == 1
    assert result.output.startswith(f"error: registered model {model_name!r} is being written by")
    assert result.output.count("\n") == 1
    client = MlflowClient(embedded.uri, embedded.uri)
    assert client.get_experiment_by_name(f"exp-{model_name}") is None  # no run, not even its experiment


def test_sigkill_after_a_checkpoint_then_resume_ends_bit_identical(demo_data, tmp_path, model_name):
    """The CLI trainer killed once the checkpoint of step 5 is durable, started again, ends
    exactly where an uninterrupted run of the same config ends: data order, crops, gains, model
    noise and the random-scale loss all continue from the saved trainer state.

    The kill lands when step 5 reaches the spool (``after_spool``, writer thread): the save of
    step 10 waits for that write, so no later checkpoint can exist and the restart resumes from
    step 5 on any machine. A kill in the committer thread (``after_alias@5``) would race training,
    which may already have spooled step 10 and rightly resume from there."""
    import torch

    from mlflow_ddsp.corpus import list_audio

    batch = 2
    steps_per_epoch = -(-len(list_audio(demo_data / "train", ["wav"])) // batch)
    assert 5 % steps_per_epoch, "the kill must land mid-epoch"
    config = tiny_config(demo_data, tmp_path / "tiny.yaml", model_name, max_steps=12, batch_size=batch,
                         interval_val=5, interval_force_save=10)  # fmt: skip
    cli = [str(Path(sys.executable).with_name("mlflow-ddsp")), "train", "-c", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_DDSP_")}

    def train(folder: str, crash: str | None = None) -> subprocess.CompletedProcess:
        (tmp_path / folder).mkdir(exist_ok=True)
        extra = {"MLFLOW_DDSP_CRASH_AT": crash} if crash else {}
        return subprocess.run(cli, cwd=tmp_path / folder, env={**env, **extra}, capture_output=True, text=True, timeout=600)

    assert train("uninterrupted").returncode == 0
    killed = train("resumed", crash="after_spool@5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    again = train("resumed")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"trained {model_name} from step 5 to 12" in again.stdout

    a = rolling_checkpoint(f"sqlite:///{tmp_path / 'uninterrupted' / 'mlflow.db'}", model_name)
    b = rolling_checkpoint(f"sqlite:///{tmp_path / 'resumed' / 'mlflow.db'}", model_name)
    assert a["global_step"] == b["global_step"] == 12
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for index, moments in a["optimizer"]["state"].items():
        assert torch.equal(moments["exp_avg"], b["optimizer"]["state"][index]["exp_avg"])


def test_the_last_line_of_train_names_what_stayed_in_the_spool():
    """After an outage at the end, `versions` would not list the last checkpoints: the line must say where they are."""
    from mlflow_ddsp.cli.training import summary
    from mlflow_ddsp.training.session import TrainResult

    left = "2 checkpoints (steps 90, 100; 88.2 MB) in /spool/v1"
    line = summary(TrainResult("r1", "v1", 0, 100, None, left_in_spool=left))
    assert left in line and "not committed yet" in line and "mlflow-ddsp train" in line and "versions" not in line
    assert "mlflow-ddsp versions v1" in summary(TrainResult("r1", "v1", 0, 100, None))
