"""One training, one run (issue 23, point 3): a resumed training continues its MLflow run.

CLI subprocesses against real stores, as a user runs them: a resume continues the run
of the checkpoint it resumes from (same run id, RUNNING again, FINISHED at the end)
unless that run is FINISHED; a run stopped by SIGINT/SIGTERM after its save is FINISHED
with the stopped tags; the run lists the checkpoints it logged (MLflow's run -> LoggedModel
outputs, the run page's "Logged models"); a finished training, ``--new-run`` and a
fine-tune start new runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from mlflow_ddsp import tags as T
from mlflow_ddsp.store import RegistryStore

from conftest import scaled_timeout, tiny_config

pytestmark = pytest.mark.slow


def rest(uri: str, endpoint: str, body: dict | None = None, **params) -> dict:
    """One call of MLflow's REST API, as the UI makes it: GET with ``params``, POST with ``body``."""
    url = f"{uri}/api/2.0/mlflow/{endpoint}"
    if body is None:
        request = urllib.request.Request(f"{url}?{urllib.parse.urlencode(params)}")
    else:
        request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=scaled_timeout(30)) as response:
        return json.loads(response.read())


def _tags(run: dict) -> dict[str, str]:
    """A REST run's tags."""
    return {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}


def _runs(uri: str, experiment_id: str) -> list[dict]:
    return rest(uri, "runs/search", {"experiment_ids": [experiment_id], "max_results": 100}).get("runs", [])


def _history(uri: str, run_id: str, key: str) -> list[int]:
    metrics = rest(uri, "metrics/get-history", run_id=run_id, metric_key=key, max_results=25000).get("metrics", [])
    return sorted(int(m.get("step", 0)) for m in metrics)


def _read_until(proc: subprocess.Popen, needle: str, seen: list[str]) -> str:
    """Read the process's stderr up to the first line holding ``needle``; returns that line."""
    for line in proc.stderr:
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"process ended before printing {needle!r}:\n{''.join(seen[-30:])}")


def _stop(proc: subprocess.Popen, seen: list[str]) -> tuple[str, str]:
    """SIGINT once, as a Ctrl-C: the process saves the current step and exits 130."""
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=scaled_timeout(300))
    assert proc.returncode == 130, "".join(seen[-20:]) + stderr[-3000:]
    return stdout, "".join(seen) + stderr


@pytest.mark.server
def test_sigint_resume_sigint_resume_is_one_run_with_continuous_metrics_and_the_checkpoints_linked(
    demo_data, mlflow_server, tmp_path, model_name
):
    """The acceptance of issue 23 point 3, through the REST API the UI reads."""
    uri = mlflow_server.uri
    config = tiny_config(demo_data, tmp_path / "tiny.yaml", model_name, max_steps=100000, interval_log=1,
                         interval_force_save=100000, keep_last=20)  # every checkpoint kept: all are listed  # fmt: skip
    command = [sys.executable, "-m", "mlflow_ddsp", "--tracking-uri", uri, "train", "-c", str(config)]
    store = RegistryStore(uri)

    def start(*extra: str) -> subprocess.Popen:
        return subprocess.Popen(command + list(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=tmp_path)  # fmt: skip

    procs: list[subprocess.Popen] = []
    try:
        # 1. Train until a checkpoint exists, Ctrl-C: FINISHED, tagged as stopped at the saved step.
        procs.append(first := start())
        seen: list[str] = []
        _read_until(first, "step 4: validation loss", seen)
        stdout, _ = _stop(first, seen)
        experiment_id = store.experiment_id(f"exp-{model_name}")
        (run,) = _runs(uri, experiment_id)
        run_id = run["info"]["run_id"]
        first_stop = int(_tags(run)[T.STOPPED_AT_STEP])
        assert run["info"]["status"] == "FINISHED" and _tags(run)[T.STOPPED_BY] == "SIGINT"
        assert first_stop >= 4 and f"to {first_stop} (run {run_id})" in stdout

        # 2. Resume: the same run, RUNNING again, the stopped tags gone while it trains; Ctrl-C again.
        procs.append(second := start())
        seen = []
        _read_until(second, f"resuming {model_name} from step {first_stop}", seen)
        _read_until(second, "validation loss", seen)
        running = rest(uri, "runs/get", run_id=run_id)["run"]
        assert running["info"]["status"] == "RUNNING"
        assert T.STOPPED_BY not in _tags(running) and T.STOPPED_AT_STEP not in _tags(running)
        stdout, stderr = _stop(second, seen)
        assert f"continuing run {run_id}" in stderr
        second_stop = int(_tags(rest(uri, "runs/get", run_id=run_id)["run"])[T.STOPPED_AT_STEP])
        assert second_stop > first_stop and f"from step {first_stop} to {second_stop} (run {run_id})" in stdout

        # 3. Resume to the end: still the same run, FINISHED without the stopped tags.
        target = second_stop + 3
        procs.append(third := start("--set", f"train.max_steps={target}"))
        stdout, stderr = third.communicate(timeout=scaled_timeout(300))
        assert third.returncode == 0, stderr[-3000:]
        assert f"from step {second_stop} to {target} (run {run_id})" in stdout
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()

    # One run in the experiment, FINISHED, continued twice.
    (run,) = _runs(uri, experiment_id)
    assert run["info"]["run_id"] == run_id and run["info"]["status"] == "FINISHED"
    tags = _tags(run)
    assert T.STOPPED_BY not in tags and T.STOPPED_AT_STEP not in tags and tags[T.RUN_RESUMES] == "2"
    assert T.PARENT_VERSION not in tags, "a continued run names no checkpoint of its own as its parent"
    # Continuous metrics: every step once, no gap at either stop, no step trained twice.
    assert _history(uri, run_id, "train/loss") == list(range(1, target + 1))
    validated = _history(uri, run_id, "validation/loss")
    assert validated == list(range(4, target + 1, 4))
    # Every checkpoint the training committed came from this run and is linked to it.
    versions = store.list_versions(model_name)
    assert {v.run_id for v in versions} == {run_id}
    assert {first_stop, second_stop, target} <= {v.step for v in versions}
    outputs = rest(uri, "runs/get", run_id=run_id)["run"].get("outputs", {}).get("model_outputs", [])
    linked = {o["model_id"]: int(o.get("step", 0)) for o in outputs}
    for v in versions:
        assert linked.get(v.model_id) == v.step, (v.label, linked)
    assert sorted(linked.values()) == sorted(v.step for v in versions)
    # ... and each linked LoggedModel names this run as its source.
    for model_id in linked:
        assert rest(uri, f"logged-models/{model_id}")["model"]["info"]["source_run_id"] == run_id


def test_a_crash_is_continued_a_finished_training_and_new_run_start_new_runs(demo_data, embedded, tmp_path, model_name):
    """SIGKILL leaves the run RUNNING and the next start continues it; a FINISHED run is
    not continued (the next start is a new run, its parent the finished run's checkpoint);
    ``--new-run`` starts a new run where one would be continued."""
    from mlflow import MlflowClient

    config = tiny_config(demo_data, tmp_path / "tiny.yaml", model_name, max_steps=6, interval_force_save=100000)
    cli = [sys.executable, "-m", "mlflow_ddsp", "--tracking-uri", embedded.uri, "train", "-c", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_DDSP_")}

    def train(*extra: str, crash: str | None = None) -> subprocess.CompletedProcess:
        more = {"MLFLOW_DDSP_CRASH_AT": crash} if crash else {}
        return subprocess.run(cli + list(extra), cwd=tmp_path, env={**env, **more}, capture_output=True, text=True,
                              timeout=scaled_timeout(600))  # fmt: skip

    client = MlflowClient(embedded.uri)
    store = RegistryStore(embedded.uri)
    experiment_id = store.experiment_id(f"exp-{model_name}")

    def runs() -> dict[str, object]:
        return {r.info.run_id: r for r in client.search_runs([experiment_id])}

    killed = train(crash="after_spool@4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (crashed,) = runs().values()
    assert crashed.info.status == "RUNNING"  # what a killed process leaves

    resumed = train()
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"from step 4 to 6 (run {crashed.info.run_id})" in resumed.stdout
    (finished,) = runs().values()
    assert finished.info.run_id == crashed.info.run_id and finished.info.status == "FINISHED"
    assert T.STOPPED_BY not in finished.data.tags

    # A finished training: the next start (more steps) is a new training, in a new run.
    more = train("--set", "train.max_steps=8", crash="after_spool@8")
    assert more.returncode == -signal.SIGKILL, more.stderr[-2000:]
    (new_id,) = set(runs()) - {crashed.info.run_id}
    new = runs()[new_id]
    assert new.info.status == "RUNNING"
    parent = store.get_version(model_name, int(new.data.tags[T.PARENT_VERSION]))
    assert parent.step == 6 and parent.run_id == crashed.info.run_id == new.data.tags[T.PARENT_RUN]

    # --new-run: not the crashed run that a plain start would continue.
    fresh = train("--set", "train.max_steps=10", "--new-run")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    (fresh_id,) = set(runs()) - {crashed.info.run_id, new_id}
    assert f"(run {fresh_id})" in fresh.stdout and runs()[fresh_id].info.status == "FINISHED"
    # The crashed run it did not continue is not left RUNNING: KILLED, naming its successor, and back.
    superseded = runs()[new_id]
    assert superseded.info.status == "KILLED" and superseded.data.tags[T.CONTINUED_BY] == fresh_id
    assert runs()[fresh_id].data.tags[T.CONTINUES] == new_id


def test_a_start_that_cannot_continue_a_crashed_run_ends_it_killed_and_names_its_successor(
    demo_data, embedded, tmp_path, model_name
):
    """Under ``mlflow run`` MLflow Projects creates the run before training starts (``MLFLOW_RUN_ID``),
    as here. When that run is in another experiment (``Default``: the README's demo), the training
    continues its own crashed run; when it is the configured experiment's, the training is logged
    there and the crashed run is ended KILLED, tagged with the run that continues it (and that run
    with the one it continues), instead of staying RUNNING forever. A run whose writer is alive
    (taken over with ``--takeover``) is never touched."""
    from mlflow import MlflowClient

    from mlflow_ddsp.checkpoint.lease import WriterLease

    config = tiny_config(demo_data, tmp_path / "tiny.yaml", model_name, max_steps=6, interval_force_save=100000)
    cli = [sys.executable, "-m", "mlflow_ddsp", "--tracking-uri", embedded.uri, "train", "-c", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_DDSP_", "MLFLOW_RUN_ID"))}
    client = MlflowClient(embedded.uri)
    store = RegistryStore(embedded.uri)
    experiment_id = store.experiment_id(f"exp-{model_name}")

    def train(*extra: str, crash: str | None = None, project_run: str | None = None) -> subprocess.CompletedProcess:
        more = {"MLFLOW_DDSP_CRASH_AT": crash} if crash else {}
        if project_run:
            more["MLFLOW_RUN_ID"] = project_run
        return subprocess.run(cli + list(extra), cwd=tmp_path, env={**env, **more}, capture_output=True, text=True,
                              timeout=scaled_timeout(600))  # fmt: skip

    def project_run(experiment: str) -> str:
        """What ``mlflow run -e train`` creates before it starts our command."""
        return client.create_run(experiment, run_name="train-project", tags={
            "mlflow.source.type": "PROJECT", "mlflow.project.entryPoint": "train"}).info.run_id  # fmt: skip

    def runs() -> dict[str, object]:
        return {r.info.run_id: r for r in client.search_runs([experiment_id])}

    # 1. `mlflow run` (its run in Default) after a crash: the crashed training run is continued.
    assert train(crash="after_spool@4").returncode == -signal.SIGKILL
    (crashed,) = runs()
    outer = project_run("0")
    resumed = train(project_run=outer)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"from step 4 to 6 (run {crashed})" in resumed.stdout
    (run,) = runs().values()
    assert run.info.run_id == crashed and run.info.status == "FINISHED" and run.data.tags[T.PROJECT_RUN] == outer
    assert client.get_run(outer).data.tags[T.TRAINING_RUN] == crashed

    # 2. `mlflow run --experiment-name` (its run in the configured experiment, joined) after a crash:
    #    the crashed run cannot be continued; it ends KILLED, both runs name each other.
    assert train("--set", "train.max_steps=8", crash="after_spool@8").returncode == -signal.SIGKILL
    (second,) = set(runs()) - {crashed}
    assert runs()[second].info.status == "RUNNING"
    joined = project_run(experiment_id)
    result = train("--set", "train.max_steps=10", project_run=joined)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"from step 8 to 10 (run {joined})" in result.stdout
    old, new = runs()[second], runs()[joined]
    assert old.info.status == "KILLED" and old.data.tags[T.CONTINUED_BY] == joined
    assert joined in old.data.tags[T.MLFLOW_NOTE]
    assert new.data.tags[T.CONTINUES] == second
    parent = store.get_version(model_name, int(new.data.tags[T.PARENT_VERSION]))  # lineage: the crashed save
    assert parent.step == 8 and parent.run_id == second == new.data.tags[T.PARENT_RUN]
    assert runs()[crashed].info.status == "FINISHED" and T.CONTINUED_BY not in runs()[crashed].data.tags

    # 3. The joined run is still RUNNING (as while `mlflow run` trains); its writer is alive (the lease
    #    held here). `--takeover` trains in a new run that names it, but leaves the live run alone.
    lease = WriterLease(store, model_name).acquire()
    try:
        taken = train("--set", "train.max_steps=12", "--takeover")
    finally:
        lease.release()
    assert taken.returncode == 0, taken.stderr[-2000:]
    (third,) = set(runs()) - {crashed, second, joined}
    assert runs()[third].data.tags[T.CONTINUES] == joined and runs()[third].info.status == "FINISHED"
    live = runs()[joined]
    assert live.info.status == "RUNNING" and T.CONTINUED_BY not in live.data.tags
