"""`mlflow-ddsp versions | verify | gc` against real stores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.cli import main
from mlflow_ddsp.testing.server import free_port
from mlflow_ddsp import tags as T

CLI = Path(sys.executable).with_name("mlflow-ddsp")


def cli(backend, *args: str):
    return CliRunner().invoke(main, ["--tracking-uri", backend.uri, *args], catch_exceptions=False)


@pytest.fixture
def queue_with_history(backend, model_name):
    """Versions at steps 20 (force-saved), 40 (force-saved) and 50 (rolling)."""
    model = torch.nn.Linear(4, 4)
    with CheckpointQueue(model_name, 10, 20, tracking_uri=backend.uri, experiment=backend.experiment) as queue:
        for step in (10, 20, 30, 40, 50):
            queue.save(step, model)
    return RegistryStore(backend.uri)


def test_versions_table_and_json(backend, model_name, queue_with_history):
    result = cli(backend, "versions", model_name, "--verify")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["VERSION", "STEP", "KIND", "ALIASES", "SIZE", "SHA256", "RUN", "CREATED", "KEPT"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[1], r[2], r[3], r[-1]) for r in rows] == [
        ("20", "force_saved", "-", "force_saved"), ("40", "force_saved", "-", "force_saved"),
        ("50", "rolling", "rolling", "newest"),
    ]  # fmt: skip
    assert all(" ok " in f" {line} " for line in lines[1:])

    result = cli(backend, "versions", model_name, "--json", "--verify")
    data = json.loads(result.stdout)
    assert [d["step"] for d in data] == [20, 40, 50]
    assert data[-1]["aliases"] == ["rolling"] and all(d["sha256_ok"] is True for d in data)
    assert data[-1]["kept"] == ["newest"] and data[0]["kept"] == ["force_saved"]
    assert all(d["size_bytes"] > 0 for d in data)


def test_versions_lists_from_the_registry_and_checks_bytes_only_with_verify(embedded, model_name):
    """Issue 23 point 10: `versions` no longer downloads every version before printing; it says so."""
    model = torch.nn.Linear(4, 4)
    with CheckpointQueue(model_name, 10, 20, tracking_uri=embedded.uri, experiment=embedded.experiment) as queue:
        for step in (20, 40):
            queue.save(step, model).result()
    store = RegistryStore(embedded.uri)
    gone = store.get_version(model_name, 1)
    (Path(store.files_of(gone).artifact_location.removeprefix("file://")) / "model_20.pt").unlink()

    # No download: the file that is gone is not noticed, the column says "not checked", stderr says how to check.
    result = cli(embedded, "versions", model_name)
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [(r[1], r[6]) for r in rows] == [("20", "-"), ("40", "-")]  # SIZE is two words: "1.7 KB"
    assert result.stderr.strip() == (
        f"sha256 not checked (listed from the registry): `mlflow-ddsp versions {model_name} --verify` or "
        f"`mlflow-ddsp verify {model_name}` downloads every version and checks its bytes"
    )
    data = json.loads(cli(embedded, "versions", model_name, "--json").stdout)
    assert [d["sha256_ok"] for d in data] == [None, None]

    # --verify (and the old spelling --no-verify, now the default) as before.
    checked = cli(embedded, "versions", model_name, "--verify")
    assert [line.split()[6] for line in checked.stdout.splitlines()[1:]] == ["MISMATCH", "ok"]  # one file gone: damaged
    assert "sha256 not checked" not in checked.output
    assert cli(embedded, "versions", model_name, "--no-verify").stdout == result.stdout
    assert "versions verified" not in cli(embedded, "verify", model_name).output  # verify still checks everything


def test_verify_passes_then_catches_a_changed_force_saved_version(backend, model_name, queue_with_history):
    store = queue_with_history
    result = cli(backend, "verify", model_name)
    assert result.exit_code == 0 and "3 versions verified, no problems" in result.output

    # Re-uploading to a version's path silently changes what it returns (MLflow does not
    # protect stored bytes); verify must notice.
    forced = next(v for v in store.list_versions(model_name) if v.step == 20)
    impostor = Path.cwd() / "model_20.pt"
    impostor.write_bytes(b"not the checkpoint you saved")
    store.upload(store.files_of(forced), impostor)

    result = cli(backend, "verify", model_name)
    assert result.exit_code == 1
    assert f"{model_name} v{forced.version} (step 20): force_saved, MISMATCH" in result.output
    assert "problem:" in result.output and "model_20.pt" in result.output


@pytest.mark.stack
def test_gc_dry_run_then_removes_an_orphaned_upload(backend, model_name, queue_with_history):
    store = queue_with_history
    experiment = store.experiment_ids(model_name)[0]
    # What a crash mid-upload leaves: a PENDING LoggedModel of the queue with some bytes.
    orphan = store.create_files(experiment, "crashed", None, {T.QUEUE: model_name, T.STEP: "60", T.KIND: "rolling"})
    partial = Path.cwd() / "model_60.pt"
    partial.write_bytes(b"\0" * 1000)
    store.upload(orphan, partial)

    result = cli(backend, "gc", model_name, "--dry-run")
    assert result.exit_code == 0
    assert f"would delete orphaned checkpoint files {orphan.model_id} (pending, step 60)" in result.output
    assert orphan.model_id in {m.model_id for m in store.queue_models(model_name, [experiment])}

    result = cli(backend, "gc", model_name)
    assert result.exit_code == 0 and f"delete orphaned checkpoint files {orphan.model_id}" in result.output
    assert orphan.model_id not in backend.checkpoint_dirs([experiment])
    assert orphan.model_id not in {m.model_id for m in store.queue_models(model_name, [experiment])}
    assert cli(backend, "gc", model_name).output.strip() == f"{model_name}: nothing to do"


def test_gc_refuses_while_a_writer_holds_the_queue(embedded, model_name):
    with CheckpointQueue(model_name, 10, 20, tracking_uri=embedded.uri, experiment=embedded.experiment):
        result = cli(embedded, "gc", model_name)
    assert result.exit_code == 1
    assert result.output.startswith("error: registered model") and "is being written by" in result.output


def test_unknown_model_and_unreachable_server_are_one_line_errors(embedded):
    result = cli(embedded, "versions", "no-such-model")
    assert result.exit_code == 1
    assert result.output.strip() == f"error: registered model 'no-such-model' does not exist at {embedded.uri}"

    # The installed console script, as a user runs it.
    proc = subprocess.run(
        [str(CLI), "--tracking-uri", f"http://127.0.0.1:{free_port()}", "verify", "voice"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: cannot reach the MLflow tracking server") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


def test_help_lists_the_registry_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("versions", "verify", "gc"):
        assert command in result.output


def test_a_file_deleted_from_under_a_version_is_named_with_the_version(embedded, model_name, tmp_path):
    """export (and every command that downloads a version) says which file of which version is gone."""
    with CheckpointQueue(model_name, 10, 20, tracking_uri=embedded.uri, experiment=embedded.experiment) as queue:
        version = queue.save(20, torch.nn.Linear(4, 4)).result()
    store = RegistryStore(embedded.uri)
    folder = Path(store.files_of(version).artifact_location.removeprefix("file://"))
    (folder / "model_20.pt").unlink()
    result = CliRunner().invoke(main, ["--tracking-uri", embedded.uri, "export", f"models:/{model_name}/1",
                                       str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {model_name} v1 (step 20): model_20.pt missing from "), line


def test_versions_names_what_waits_in_the_local_spool(embedded, model_name):
    """Saves not yet in the registry (a server outage, a process killed meanwhile) are shown, not hidden."""
    from mlflow_ddsp.checkpoint.spool import Spool

    model = torch.nn.Linear(4, 2)
    with CheckpointQueue(model_name, 10, 20, tracking_uri=embedded.uri, experiment=embedded.experiment) as queue:
        queue.save(10, model).result()
    Spool(embedded.uri, model_name).write(
        30, "rolling", {"global_step": 30, "model": model.state_dict()}, b"{}\n", {}, None,
        metrics={}, blocked_seconds=0.0, run_id=None, experiment_id="0", files_tags={},
    )  # fmt: skip
    note = "not in the registry yet, waiting in this machine's spool: 1 checkpoint (step 30;"
    for command in (["versions", model_name, "--no-verify"], ["verify", model_name], ["gc", model_name]):
        result = CliRunner().invoke(main, ["--tracking-uri", embedded.uri, *command])
        assert result.exit_code == 0, result.output
        assert [line for line in result.output.splitlines() if line.startswith(note)], (command, result.output)
