"""bench/soak.py's core, a few cycles against the session's server: its checks and its counts work."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.server]


def _load_soak():
    path = Path(__file__).resolve().parents[1] / "bench" / "soak.py"
    spec = importlib.util.spec_from_file_location("bench_soak", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_soak_on_sqlite_and_disk_reports_the_policys_versions_and_no_orphans(mlflow_server):
    soak = _load_soak()
    target = soak.server_target("sqlite + disk", mlflow_server)
    progress: list[str] = []
    # Steps 1..3, a force-save every 2: step 2 stays, 3 is the rolling one, 1 is retired.
    report = soak.soak(target, 3, interval_force_save=2, keep_last=1, width=16, progress_every=3, out=progress.append)

    assert report.expected == {2, 3}
    assert sorted(report.steps) == [2, 3] and report.versions_ok
    assert report.alias_step == 3 and report.intact == report.kept == 2
    assert report.orphaned_models == [] and report.orphaned_prefixes == [] and report.stray_objects == []
    assert report.missing_bytes == [] and report.ok
    # Every save reached the server and was counted from its access log.
    assert len(report.requests) == 3 and min(report.requests) > 0
    assert report.endpoints[("POST model-versions/create", 200)] == 3
    # The rolling version of step 1 was retired: registry entry, bytes, LoggedModel record.
    assert report.endpoints[("DELETE model-versions/delete", 200)] == 1
    assert report.endpoints[("DELETE artifact", 200)] == 1
    assert report.endpoints[("DELETE logged-models/{id}", 200)] == 1

    text = "\n".join(report.lines())
    assert "2 in the registry, 2 expected by the policy" in text and ": OK" in text
    assert "LoggedModels without a version: 0; artifact folders without a version: 0; other objects: 0" in text
    assert text.endswith("verdict         OK")
    assert progress and "cycle 3/3" in progress[-1]


def test_the_expectation_comes_from_the_policy():
    soak = _load_soak()
    policy = soak.RetentionPolicy(1, 100, keep_last=1)
    assert soak.expected_steps(policy, range(1, 1001)) == set(range(100, 1001, 100))
    assert soak.expected_steps(soak.RetentionPolicy(10, 30, keep_last=3), range(10, 101, 10)) == {30, 60, 80, 90, 100}
    assert soak.slope_per_100([(0, 1.0), (10, 2.0), (20, 3.0)]) == pytest.approx(10.0)
