"""SIGKILL a training process at every step of the save protocol, then check and resume.

The trainer (``tiny_trainer.py``) saves every 10 steps and force-saves every
30; the crash hits the save of step 50 (a rolling save whose predecessor, 40,
must be retired) or of step 60 (a force-save). After each kill:

* at once, before any repair: every force-saved version is intact and the
  alias, once set, points at an intact version (readers are never broken);
* after the next start (spool upload, then reconcile): the alias points at the
  newest durable checkpoint (the crashed step if the kill came once the save
  was in the local spool, the previous one otherwise), there is at most one
  rolling version, the spool is empty, and no orphaned bytes remain on disk;
* training resumes from there and ends with exactly the weights of a run that
  was never interrupted.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.checkpoint.faults import CRASH_ENV, CRASH_POINTS
from mlflow_ddsp.checkpoint.lease import lease_model_name
from mlflow_ddsp.checkpoint.verify import fetch_verified

import tiny_trainer
from conftest import Backend, fresh_embedded, scaled_timeout
from registry_checks import assert_invariants, versions_by_step

pytestmark = pytest.mark.slow

TRAINER = Path(__file__).with_name("tiny_trainer.py")
COMMITTED_FROM = CRASH_POINTS.index("after_register")
DURABLE_FROM = CRASH_POINTS.index("after_spool")  # from here the next start commits the spooled save
STEPS = 70


def run_in_process(backend: Backend, name: str, steps: int, capsys, *options: str) -> list[dict]:
    """Run the trainer in this process (no crash planned: saves a process start-up)."""
    capsys.readouterr()
    code = tiny_trainer.main(["train", backend.uri, name, backend.experiment, str(steps), *options])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert code == 0, events
    return events


def run_trainer(backend: Backend, name: str, steps: int, crash: str, *options: str):
    """Run the trainer in a subprocess that SIGKILLs itself at ``crash``."""
    env = {**os.environ, CRASH_ENV: crash}
    proc = subprocess.run(
        [sys.executable, str(TRAINER), "train", backend.uri, name, backend.experiment, str(steps), *options],
        capture_output=True, text=True, env=env, timeout=scaled_timeout(300),
    )  # fmt: skip
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, events


@pytest.fixture(scope="module")
def uninterrupted_weights(tmp_path_factory, sqlite_template) -> str:
    backend = fresh_embedded(sqlite_template, tmp_path_factory.mktemp("reference"), "reference")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert tiny_trainer.main(["train", backend.uri, "reference", "reference", str(STEPS)]) == 0
    return json.loads(out.getvalue().splitlines()[-1])["weights"]


def expected_steps(durable: int, keep_last: int, protected: set[int]) -> dict[int, str]:
    """What stays once ``durable`` is the newest checkpoint: force-saves, the newest
    ``keep_last`` saves, and the protected ones."""
    saved = list(range(10, durable + 1, 10))
    steps = {s for s in saved if s % 30 == 0} | set(saved[-keep_last:]) | protected
    return {s: "force_saved" if s % 30 == 0 else "rolling" for s in steps}


def check_crash_and_resume(
    backend: Backend, name: str, point: str, crash_step: int, reference: str, capsys, keep_last: int = 1,
    protect_step: int | None = None,
):
    options = ("--keep-last", str(keep_last))
    store = RegistryStore(backend.uri)
    protected = set()
    if protect_step is not None:  # a person promoted an early rolling checkpoint
        events = run_in_process(backend, name, protect_step + 10, capsys, *options)
        assert events[-1]["event"] == "done"
        version = next(v for v in store.list_versions(name) if v.step == protect_step)
        store.set_alias(name, "champion", version.version)
        protected = {protect_step}

    proc, events = run_trainer(backend, name, STEPS, f"{point}@{crash_step}", *options)
    assert proc.returncode == -signal.SIGKILL, f"expected a SIGKILL at {point}: {proc.stderr[-2000:]}"
    assert not any(e["event"] == "done" for e in events)

    # Right after the crash, before any repair: nothing a reader can see is broken (saves
    # the committer had not reached yet are in the local spool, not in the registry).
    if store.alias_version(name, "rolling") is not None:
        aliased = store.get_version(name, store.alias_version(name, "rolling"))
        with tempfile.TemporaryDirectory() as tmp:
            fetch_verified(store, aliased, tmp)
    for v in store.list_versions(name):
        if v.kind == "force_saved" or v.step in protected:
            with tempfile.TemporaryDirectory() as tmp:
                fetch_verified(store, v, tmp)
    assert store.registered_model_exists(lease_model_name(name)), "the dead writer's lease is left behind"

    # The next start takes over the dead process's lease and reconciles.
    durable = crash_step if CRASH_POINTS.index(point) >= DURABLE_FROM else crash_step - 10
    with CheckpointQueue(name, 10, 30, tracking_uri=backend.uri, experiment=backend.experiment,
                         keep_last=keep_last) as queue:  # fmt: skip
        pass
    assert not [p for p in queue.spool.folder.iterdir() if not p.name.startswith(".damaged")], "spool not emptied"
    assert not store.registered_model_exists(lease_model_name(name))
    max_rolling = keep_last + len(protected)
    assert assert_invariants(store, backend, name, max_rolling=max_rolling) == durable
    assert versions_by_step(store, name) == expected_steps(durable, keep_last, protected)

    # Training resumes from the durable step and ends where an uninterrupted run ends.
    events = run_in_process(backend, name, STEPS, capsys, *options)
    assert events[0] == {"event": "resumed", "step": durable}
    assert events[-1]["weights"] == reference
    assert versions_by_step(store, name) == expected_steps(STEPS, keep_last, protected)
    assert_invariants(store, backend, name, max_rolling=max_rolling)
    if protected:
        assert store.get_version(name, store.alias_version(name, "champion")).step == protect_step


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_during_rolling_save(point, embedded, model_name, uninterrupted_weights, capsys):
    check_crash_and_resume(embedded, model_name, point, 50, uninterrupted_weights, capsys)


@pytest.mark.parametrize("point", ["after_finalize", "after_register", "after_alias", "after_delete_bytes"])
def test_kill_during_force_save(point, embedded, model_name, uninterrupted_weights, capsys):
    check_crash_and_resume(embedded, model_name, point, 60, uninterrupted_weights, capsys)


# keep_last and protection decide what is retired, which happens from the commit point on;
# the points before it are the same as in the test above (nothing is retired yet), and so is
# after_unspool (the spool is this save's alone).
@pytest.mark.parametrize("point", [p for p in CRASH_POINTS[COMMITTED_FROM:] if p != "after_unspool"])
def test_kill_with_keep_last_3_and_a_protected_version(point, embedded, model_name, uninterrupted_weights, capsys):
    check_crash_and_resume(embedded, model_name, point, 50, uninterrupted_weights, capsys, keep_last=3, protect_step=10)


# Through a server, the four points that matter there are split between the plain
# SQLite-backed server (below) and the team stacks (further down): every point runs
# on some server, and the suite stays under its time budget. The embedded store runs
# all ten.
@pytest.mark.server
@pytest.mark.parametrize("point", ["after_register", "after_delete_bytes"])
def test_kill_during_rolling_save_through_server(point, mlflow_server, model_name, uninterrupted_weights, capsys):
    backend = Backend("server", mlflow_server.uri, mlflow_server.artifacts_dir, f"exp-{model_name}")
    check_crash_and_resume(backend, model_name, point, 50, uninterrupted_weights, capsys)


# On the team stacks, the points where they differ from the SQLite server: the bucket's
# objects when a retired version's bytes were being deleted (S3 proxied: the server deletes
# them; S3 direct: the client does), a partial upload left in the bucket, and
# the registry write that is the commit point on PostgreSQL. Each checks, by listing the
# bucket, that no orphaned object remains and that training resumes to the exact weights.
@pytest.mark.stack("s3-proxied", "s3-direct")
@pytest.mark.parametrize("point", ["after_delete_version"])
def test_kill_while_retiring_on_s3(point, stack_backend, model_name, uninterrupted_weights, capsys):
    check_crash_and_resume(stack_backend, model_name, point, 50, uninterrupted_weights, capsys)


@pytest.mark.stack("s3-direct")
@pytest.mark.parametrize("point", ["mid_upload"])
def test_kill_mid_upload_on_s3(point, stack_backend, model_name, uninterrupted_weights, capsys):
    check_crash_and_resume(stack_backend, model_name, point, 50, uninterrupted_weights, capsys)


@pytest.mark.stack("postgres")
@pytest.mark.parametrize("point", ["after_register"])
def test_kill_at_the_commit_point_on_postgres(point, stack_backend, model_name, uninterrupted_weights, capsys):
    check_crash_and_resume(stack_backend, model_name, point, 50, uninterrupted_weights, capsys)
