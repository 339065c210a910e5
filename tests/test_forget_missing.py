"""`gc --forget-missing` gives up exactly the versions whose files are gone, however many are intact.

Issue 20, point 12: the planner checked versions lazily, newest first, and
stopped at the first intact one, so with the newest checkpoint intact and older
versions' files deleted, ``gc --forget-missing`` said "nothing to do" and
``verify`` failed forever. And with every file gone, ``--dry-run`` called the
force-saved versions it would delete "rolling". On the embedded store and a
real ``mlflow server``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from click.testing import CliRunner

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.checkpoint.policy import RetentionPolicy
from mlflow_ddsp.store.records import Integrity
from mlflow_ddsp.checkpoint.retention import RegistrySnapshot, plan_retention
from mlflow_ddsp.cli import main

from conftest import Backend
from registry_checks import versions_by_step
from test_retention_plan import version


def cli(backend: Backend, *args: str):
    return CliRunner().invoke(main, ["--tracking-uri", backend.uri, *args], catch_exceptions=False)


def folder_of(backend: Backend, store: RegistryStore, v) -> Path:
    """The folder holding a version's files on disk."""
    experiment = store.client.get_logged_model(v.model_id).experiment_id
    base = backend.artifacts_dir if backend.kind == "embedded" else backend.artifacts_dir / experiment
    return base / "models" / v.model_id


def five_saves(backend: Backend, name: str) -> dict[int, object]:
    """Steps 10..50, force-saved every 20, keep_last 3: left are 20 (force), 30, 40 (force), 50 (rolling)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    saved = {}
    with CheckpointQueue(name, 10, 20, keep_last=3, tracking_uri=backend.uri, experiment=backend.experiment) as queue:
        for step in (10, 20, 30, 40, 50):
            saved[step] = queue.save(step, model).result()
    assert versions_by_step(RegistryStore(backend.uri), name) == {
        20: "force_saved", 30: "rolling", 40: "force_saved", 50: "rolling"}  # fmt: skip
    return saved


def test_forget_missing_checks_every_version_not_only_the_newest_few():
    """The planner, alone: with forget_missing every queue version is checked, and exactly the missing go."""
    versions = [version(1, 10, "force_saved"), version(2, 20), version(3, 30, "force_saved"), version(4, 40)]
    snapshot = RegistrySnapshot(versions=versions, aliases={"rolling": 4})
    asked = []

    def check(v):
        asked.append(v.version)
        return Integrity.MISSING if v.version in (1, 2) else Integrity.INTACT

    policy = RetentionPolicy(10, None, keep_last=3)
    lazy = plan_retention(snapshot, policy, "rolling", check)
    assert lazy.delete_versions == ()  # without forget_missing: lazy, nothing deleted (could be unmounted)
    asked.clear()
    plan = plan_retention(snapshot, policy, "rolling", check, forget_missing=True)
    assert sorted(asked) == [1, 2, 3, 4]
    assert sorted(v.version for v in plan.delete_versions) == [1, 2]
    lines = plan.describe()
    assert any(line.startswith("delete force_saved version") and "v1" in line for line in lines), lines
    assert any(line.startswith("delete rolling version") and "v2" in line for line in lines), lines
    assert all("files are gone" in line for line in lines if line.startswith("delete")), lines


def test_gc_forget_missing_removes_exactly_the_versions_whose_files_are_gone(backend, model_name):
    saved = five_saves(backend, model_name)
    store = RegistryStore(backend.uri)
    for step in (20, 30):  # a force-saved and a rolling version; the newest (50) and 40 stay intact
        shutil.rmtree(folder_of(backend, store, saved[step]))
    before = cli(backend, "verify", model_name)
    assert before.exit_code == 1 and "MISSING" in before.output, before.output

    dry = cli(backend, "gc", model_name, "--forget-missing", "--dry-run")
    assert dry.exit_code == 0, dry.output
    lines = [line for line in dry.output.splitlines() if line.startswith("would delete")]
    assert len(lines) == 2, dry.output
    assert f"would delete force_saved version {saved[20].label}" in dry.output, dry.output
    assert f"would delete rolling version {saved[30].label}" in dry.output, dry.output
    assert versions_by_step(store, model_name) == {20: "force_saved", 30: "rolling", 40: "force_saved", 50: "rolling"}

    result = cli(backend, "gc", model_name, "--forget-missing")
    assert result.exit_code == 0, result.output
    assert versions_by_step(store, model_name) == {40: "force_saved", 50: "rolling"}
    after = cli(backend, "verify", model_name)
    assert after.exit_code == 0 and "no problems" in after.output, after.output
    assert store.alias_version(model_name, "rolling") == saved[50].version


def test_dry_run_with_every_file_gone_names_each_versions_kind(backend, model_name):
    saved = five_saves(backend, model_name)
    store = RegistryStore(backend.uri)
    for step in (20, 30, 40, 50):
        shutil.rmtree(folder_of(backend, store, saved[step]))
    assert cli(backend, "gc", model_name, "--dry-run").exit_code == 1  # could be unmounted: refused
    dry = cli(backend, "gc", model_name, "--forget-missing", "--dry-run")
    assert dry.exit_code == 0, dry.output
    for step, kind in ((20, "force_saved"), (30, "rolling"), (40, "force_saved"), (50, "rolling")):
        assert f"would delete {kind} version {saved[step].label}" in dry.output, dry.output
    result = cli(backend, "gc", model_name, "--forget-missing")
    assert result.exit_code == 0, result.output
    assert versions_by_step(store, model_name) == {}
