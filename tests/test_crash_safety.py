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

Every save depends on an encoder file (random bytes, issue 21): the first save
(step 10) stores it in the store's dependencies, the later ones find it there.
Beside the checks above, after each kill and restart the store holds exactly one
READY copy (a PENDING leftover only from a kill inside the first upload, which
``gc`` collects), every version records it, and a fresh cache fetches it
byte-identical. ``test_kill_during_the_save_that_uploads_the_dependency`` kills
that first save at its dependency points and where its checkpoint references it.

Each killed run is a process of its own, forked from a forkserver that has imported torch
and mlflow once (``tiny_trainer.run_forked``): the kernel kills it at the named point as it
would a fresh interpreter, without the ~3 s of imports each kill test paid.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp import tags as T
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.checkpoint.dependencies import DEPENDENCY_CRASH_POINTS, DependencyRecord, dependencies_tag
from mlflow_ddsp.checkpoint.dependency_cache import CACHE_ENV, resolve_dependency
from mlflow_ddsp.checkpoint.dependency_gc import collect_dependencies
from mlflow_ddsp.checkpoint.faults import CRASH_ENV, CRASH_POINTS
from mlflow_ddsp.checkpoint.lease import lease_model_name
from mlflow_ddsp.checkpoint.verify import fetch_verified
from mlflow_ddsp.serving.dependencies import registered_dependencies

import tiny_trainer
from conftest import Backend, fresh_embedded, scaled_timeout
from registry_checks import assert_invariants, forget_dependencies, versions_by_step

pytestmark = pytest.mark.slow

# The points of one save in the order it reaches them: its dependency is stored ("depend",
# commit.py) once the save is spooled and before its checkpoint's LoggedModel is created.
ORDER = (*CRASH_POINTS[:2], *DEPENDENCY_CRASH_POINTS, *CRASH_POINTS[2:])
COMMITTED_FROM = CRASH_POINTS.index("after_register")
DURABLE_FROM = ORDER.index("after_spool")  # from here the next start commits the spooled save
STEPS = 70
ENCODER_BYTES = 200_000


def run_in_process(backend: Backend, name: str, steps: int, capsys, *options: str) -> list[dict]:
    """Run the trainer in this process (no crash planned: saves a process start-up)."""
    capsys.readouterr()
    code = tiny_trainer.main(["train", backend.uri, name, backend.experiment, str(steps), *options])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert code == 0, events
    return events


def run_trainer(backend: Backend, name: str, steps: int, crash: str, *options: str):
    """Run the trainer in its own process (forked from a warm forkserver: ``tiny_trainer.run_forked``)
    that SIGKILLs itself at ``crash``."""
    env = {**os.environ, CRASH_ENV: crash}
    argv = ["train", backend.uri, name, backend.experiment, str(steps), *options]
    proc = tiny_trainer.run_forked(argv, env, Path(tempfile.mkdtemp(prefix="crash-run-")), scaled_timeout(300))
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, events


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> tuple[str, DependencyRecord]:
    """The encoder file every save of this module depends on (random bytes), and its record."""
    path = tmp_path_factory.mktemp("weights") / "encoder-tiny.pt"
    path.write_bytes(os.urandom(ENCODER_BYTES))
    return tiny_trainer.encoder_dependency(str(path))


@pytest.fixture(scope="module")
def uninterrupted_weights(tmp_path_factory, sqlite_template, encoder) -> str:
    """The weights of a run never interrupted, with the same dependency as the crashed ones."""
    backend = fresh_embedded(sqlite_template, tmp_path_factory.mktemp("reference"), "reference")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = tiny_trainer.main(["train", backend.uri, "reference", "reference", str(STEPS), "--encoder", encoder[0]])
    assert code == 0
    return json.loads(out.getvalue().splitlines()[-1])["weights"]


@dataclass
class Harness:
    """What every kill test uses besides its store: the reference weights, the dependency, pytest's helpers."""

    reference: str
    encoder: tuple[str, DependencyRecord]
    capsys: pytest.CaptureFixture
    monkeypatch: pytest.MonkeyPatch
    tmp_path: Path


@pytest.fixture
def harness(uninterrupted_weights, encoder, capsys, monkeypatch, tmp_path) -> Harness:
    return Harness(uninterrupted_weights, encoder, capsys, monkeypatch, tmp_path)


@pytest.fixture
def forget_server_dependencies(request):
    """A session server is shared by a worker's tests: delete the dependency stored there after the test."""
    servers = [name for name in ("mlflow_server", "stack_backend") if name in request.fixturenames]
    uris = [request.getfixturevalue(name).uri for name in servers]  # before the test: torn down after
    yield
    for uri in uris:
        forget_dependencies(uri)


def dependency_models(store: RegistryStore, record: DependencyRecord):
    """Every LoggedModel of the dependencies experiment holding ``record`` (any status)."""
    experiment_id = store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)
    return store.find_logged_models([experiment_id], {T.DEPENDENCY_SHA256: record.sha256}) if experiment_id else []


def assert_dependency_stored_once(store: RegistryStore, backend: Backend, name: str, record: DependencyRecord) -> str:
    """One READY copy of ``record`` (listed in the artifact store with its bytes), and every
    version of ``name`` records it (its manifest, what serving reads; its LoggedModel's tag,
    what gc keeps); returns the copy's LoggedModel id."""
    [ready] = [m for m in dependency_models(store, record) if m.status == "READY"]
    experiment_id = store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)
    listing = {d: backend.checkpoint_files(experiment_id, d) for d in backend.checkpoint_dirs([experiment_id])}
    holding = [d for d, files in listing.items() if files.get(f"artifacts/{record.file}") == record.size]
    assert holding == [ready.model_id], holding
    for version in store.list_versions(name):
        assert registered_dependencies(store, version) == [record], version.label
        assert store.get_files(version.model_id).tags[T.DEPENDENCIES] == dependencies_tag([record])
    return ready.model_id


def expected_steps(durable: int, keep_last: int, protected: set[int]) -> dict[int, str]:
    """What stays once ``durable`` is the newest checkpoint: force-saves, the newest
    ``keep_last`` saves, and the protected ones."""
    saved = list(range(10, durable + 1, 10))
    steps = {s for s in saved if s % 30 == 0} | set(saved[-keep_last:]) | protected
    return {s: "force_saved" if s % 30 == 0 else "rolling" for s in steps}


def check_crash_and_resume(
    backend: Backend, name: str, point: str, crash_step: int, h: Harness, keep_last: int = 1,
    protect_step: int | None = None,
):
    path, record = h.encoder
    options = ("--keep-last", str(keep_last), "--encoder", path)
    store = RegistryStore(backend.uri)
    protected = set()
    if protect_step is not None:  # a person promoted an early rolling checkpoint
        events = run_in_process(backend, name, protect_step + 10, h.capsys, *options)
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

    # The next start (same config: same dependency) takes over the dead process's lease and reconciles.
    durable = crash_step if ORDER.index(point) >= DURABLE_FROM else crash_step - 10
    with CheckpointQueue(name, 10, 30, tracking_uri=backend.uri, experiment=backend.experiment,
                         keep_last=keep_last, dependencies=[h.encoder]) as queue:  # fmt: skip
        pass
    assert not [p for p in queue.spool.folder.iterdir() if not p.name.startswith(".damaged")], "spool not emptied"
    assert not store.registered_model_exists(lease_model_name(name))
    max_rolling = keep_last + len(protected)
    assert assert_invariants(store, backend, name, max_rolling=max_rolling) == durable
    assert versions_by_step(store, name) == expected_steps(durable, keep_last, protected)
    # A kill inside the dependency's first upload leaves one PENDING copy, never used; gc collects it.
    pending = [m.model_id for m in dependency_models(store, record) if m.status == "PENDING"]
    uploading = point in DEPENDENCY_CRASH_POINTS[:-1] and crash_step == 10
    assert len(pending) == (1 if uploading else 0), (point, pending)
    if pending:
        assert [r for r, _ in collect_dependencies(store, pending_grace_s=0)] == [record]
        assert [m.status for m in dependency_models(store, record)] == ["READY"]
    stored = assert_dependency_stored_once(store, backend, name, record)

    # Training resumes from the durable step and ends where an uninterrupted run ends.
    events = run_in_process(backend, name, STEPS, h.capsys, *options)
    assert events[0] == {"event": "resumed", "step": durable}
    assert events[-1]["weights"] == h.reference
    assert versions_by_step(store, name) == expected_steps(STEPS, keep_last, protected)
    assert_invariants(store, backend, name, max_rolling=max_rolling)
    if protected:
        assert store.get_version(name, store.alias_version(name, "champion")).step == protect_step
    # Stored once: the resumed saves found the same copy; a machine with an empty cache fetches it.
    assert assert_dependency_stored_once(store, backend, name, record) == stored
    h.monkeypatch.setenv(CACHE_ENV, str(h.tmp_path / "fresh-cache"))
    fetched = resolve_dependency(store, record)
    assert fetched.is_relative_to(h.tmp_path / "fresh-cache")
    assert fetched.read_bytes() == Path(path).read_bytes()


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_during_rolling_save(point, embedded, model_name, harness):
    check_crash_and_resume(embedded, model_name, point, 50, harness)


@pytest.mark.parametrize("point", ["after_finalize", "after_register", "after_alias", "after_delete_bytes"])
def test_kill_during_force_save(point, embedded, model_name, harness):
    check_crash_and_resume(embedded, model_name, point, 60, harness)


# keep_last and protection decide what is retired, which happens from the commit point on;
# the points before it are the same as in the test above (nothing is retired yet), and so is
# after_unspool (the spool is this save's alone).
@pytest.mark.parametrize("point", [p for p in CRASH_POINTS[COMMITTED_FROM:] if p != "after_unspool"])
def test_kill_with_keep_last_3_and_a_protected_version(point, embedded, model_name, harness):
    check_crash_and_resume(embedded, model_name, point, 50, harness, keep_last=3, protect_step=10)


# The first save (step 10) is the one that uploads the dependency; the later ones find it.
# The queue's points before "depend" (after_write, after_spool) leave the store untouched, and
# mid_upload, after_upload and after_finalize leave what after_create leaves for the dependency.
@pytest.mark.parametrize("point", [
    "dependency_after_create",  # a PENDING copy, no bytes: the next start uploads a fresh one
    "dependency_after_upload",  # a PENDING copy with every byte: never used, gc collects it
    "dependency_after_verify",  # ... its size verified, still PENDING (the commit point not reached)
    "dependency_after_finalize",  # READY, no checkpoint references it yet: the next start finds it
    "after_create",  # READY and referenced by a PENDING checkpoint the next start deletes as an orphan
    "after_register",  # the commit point: the first version records it
])  # fmt: skip
def test_kill_during_the_save_that_uploads_the_dependency(point, embedded, model_name, harness):
    check_crash_and_resume(embedded, model_name, point, 10, harness)


# Through a server, the four points that matter there are split between the plain
# SQLite-backed server (below) and the team stacks (further down): every point runs
# on some server, and the suite stays under its time budget. The embedded store runs
# all ten.
@pytest.mark.server
@pytest.mark.usefixtures("forget_server_dependencies")
@pytest.mark.parametrize("point", ["after_register", "after_delete_bytes"])
def test_kill_during_rolling_save_through_server(point, mlflow_server, model_name, harness):
    backend = Backend("server", mlflow_server.uri, mlflow_server.artifacts_dir, f"exp-{model_name}")
    check_crash_and_resume(backend, model_name, point, 50, harness)


# On the team stacks, the points where they differ from the SQLite server: the bucket's
# objects when a retired version's bytes were being deleted (S3 proxied: the server deletes
# them; S3 direct: the client does), a partial upload left in the bucket, and
# the registry write that is the commit point on PostgreSQL. Each checks, by listing the
# bucket, that no orphaned object remains and that training resumes to the exact weights.
@pytest.mark.usefixtures("forget_server_dependencies")
@pytest.mark.stack("s3-proxied", "s3-direct")
@pytest.mark.parametrize("point", ["after_delete_version"])
def test_kill_while_retiring_on_s3(point, stack_backend, model_name, harness):
    check_crash_and_resume(stack_backend, model_name, point, 50, harness)


@pytest.mark.usefixtures("forget_server_dependencies")
@pytest.mark.stack("s3-direct")
@pytest.mark.parametrize("point", ["mid_upload"])
def test_kill_mid_upload_on_s3(point, stack_backend, model_name, harness):
    check_crash_and_resume(stack_backend, model_name, point, 50, harness)


@pytest.mark.usefixtures("forget_server_dependencies")
@pytest.mark.stack("postgres")
@pytest.mark.parametrize("point", ["after_register"])
def test_kill_at_the_commit_point_on_postgres(point, stack_backend, model_name, harness):
    check_crash_and_resume(stack_backend, model_name, point, 50, harness)
