"""The weight files a version depends on, stored once per tracking store, fetched, verified and
cached where they are used, collected when nothing references them (issue 21, points 1, 3-5;
``mlflow_ddsp/checkpoint/dependencies.py``).

Real stores throughout: the embedded SQLite store, the session's ``mlflow server`` and, for
storing once and the "second machine", the team stack (PostgreSQL, S3 proxied, S3 direct);
permissions on the basic-auth server of ``tests/test_auth.py``. Each test writes its own
random weight file, under a unique name: the dependencies experiment is shared by every
test of a server, so assertions are about this test's file only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from mlflow_ddsp import tags as T
from mlflow_ddsp.checkpoint.dependencies import (
    DEPENDENCY_CRASH_POINTS,
    DependencyRecord,
    confirm_dependencies,
    dependencies_tag,
    parse_dependencies_tag,
    store_dependency,
)
from mlflow_ddsp.checkpoint.dependency_cache import CACHE_ENV, cache_root, resolve_dependency
from mlflow_ddsp.checkpoint.dependency_gc import collect_dependencies, referenced_dependencies
from mlflow_ddsp.checkpoint.faults import CRASH_ENV
from mlflow_ddsp.checkpoint.files import sha256_file
from mlflow_ddsp.errors import CheckpointIntegrityError, CheckpointNotFoundError, ConfigError, PermissionDeniedError
from mlflow_ddsp.store import RegistryStore

from conftest import Backend, scaled_timeout, second_machine, server_of
from registry_checks import forget_dependencies
from test_auth import AuthServer, auth_server  # noqa: F401  (the session's basic-auth server)


class CountingStore(RegistryStore):
    """A real store that counts the downloads it makes (what a cache hit must not do)."""

    downloads = 0

    def download(self, *args, **kwargs):
        self.downloads += 1
        return super().download(*args, **kwargs)



pytestmark = pytest.mark.usefixtures("forget_stored_dependencies")

def weights(folder: Path, role: str = "encoder", size: int = 300_000) -> tuple[Path, DependencyRecord]:
    """A file of random bytes under a unique name, and its record."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{role}-{uuid.uuid4().hex[:10]}.pt"
    path.write_bytes(os.urandom(size))
    return path, DependencyRecord(role, sha256_file(path).sha256, size, path.name)



def stored_copies(backend: Backend, store: RegistryStore, record: DependencyRecord) -> list[dict[str, int]]:
    """Every LoggedModel folder of the dependencies experiment holding ``record.file``: its listing."""
    experiment_id = store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)
    listings = [backend.checkpoint_files(experiment_id, d) for d in backend.checkpoint_dirs([experiment_id])]
    return [files for files in listings if any(Path(name).name == record.file for name in files)]


def dependency_models(store: RegistryStore, record: DependencyRecord):
    experiment_id = store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)
    return store.find_logged_models([experiment_id], {T.DEPENDENCY_SHA256: record.sha256})


def reference(store: RegistryStore, backend: Backend, *records: DependencyRecord) -> str:
    """A checkpoint LoggedModel (PENDING, as during a save) that references ``records``; its id."""
    ref = store.create_files(store.experiment_id(backend.experiment), f"ckpt-{uuid.uuid4().hex[:8]}", None,
                             {T.DEPENDENCIES: dependencies_tag(records)})  # fmt: skip
    return ref.model_id


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


def test_record_round_trip_and_rules():
    record = DependencyRecord("f0", "ab" * 32, 12, "rmvpe.pt")
    assert DependencyRecord.from_dict(record.to_dict()) == record
    assert parse_dependencies_tag(dependencies_tag([record])) == [("f0", "ab" * 32)]
    assert parse_dependencies_tag("") == []
    for bad in ({"role": "hubert", "sha256": "ab" * 32, "size": 1, "file": "x"},
                {"role": "f0", "sha256": "AB" * 32, "size": 1, "file": "x"},
                {"role": "f0", "sha256": "ab" * 32, "size": -1, "file": "x"},
                {"role": "f0", "sha256": "ab" * 32, "size": 1, "file": "../x"},
                {"role": "f0", "sha256": "ab" * 32, "size": 1}):  # fmt: skip
        with pytest.raises(ConfigError):
            DependencyRecord.from_dict(bad)
    with pytest.raises(ConfigError, match="role:sha256"):
        parse_dependencies_tag("f0:123")


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "mlflow-ddsp"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "mlflow-ddsp"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


@pytest.mark.stack
def test_stored_once_then_fetched_verified_and_cached_on_a_second_machine(backend, tmp_path, monkeypatch):
    path, record = weights(tmp_path / "first")
    store = RegistryStore(backend.uri)
    first = store_dependency(store, path, record)
    again = store_dependency(store, path, record)
    assert again.model_id == first.model_id
    models = dependency_models(store, record)
    assert [(m.model_id, m.status) for m in models] == [(first.model_id, "READY")]
    assert models[0].tags[T.DEPENDENCY_ROLE] == "encoder" and models[0].tags[T.DEPENDENCY_FILE] == record.file
    copies = stored_copies(backend, store, record)
    assert len(copies) == 1 and set(copies[0].values()) == {record.size}, copies

    home = second_machine(tmp_path, monkeypatch)
    reader = CountingStore(backend.uri)
    got = resolve_dependency(reader, record)
    assert got == home / ".cache" / "mlflow-ddsp" / "weights" / record.sha256 / record.file
    assert got.read_bytes() == path.read_bytes() and reader.downloads == 1
    assert sorted(p.name for p in got.parent.iterdir()) == [record.file, record.file + ".verified"]
    inode = got.stat().st_ino
    assert resolve_dependency(reader, record) == got
    assert reader.downloads == 1 and got.stat().st_ino == inode  # served from the cache


def test_a_matching_local_file_is_used_a_changed_one_refused_naming_both_digests(embedded, tmp_path, monkeypatch):
    path, record = weights(tmp_path / "first")
    store = CountingStore(embedded.uri)
    store_dependency(store, path, record)
    second_machine(tmp_path, monkeypatch)
    assert resolve_dependency(store, record, local=path) == path and store.downloads == 0

    changed = tmp_path / "changed.pt"
    changed.write_bytes(path.read_bytes()[:-1] + b"\0")  # same size, other bytes
    with pytest.raises(CheckpointIntegrityError) as err:
        resolve_dependency(store, record, local=changed)
    message = one_line(err.value)
    assert record.sha256[:12] in message and sha256_file(changed).sha256[:12] in message
    assert "encoder" in message and store.downloads == 0

    # a damaged copy in the cache is replaced by a verified download
    cached = resolve_dependency(store, record)
    cached.write_bytes(b"x" * record.size)
    assert resolve_dependency(store, record).read_bytes() == path.read_bytes() and store.downloads == 2


def test_a_dependency_missing_everywhere_names_role_digest_and_the_way_to_provide_it(embedded, tmp_path):
    _, record = weights(tmp_path / "nowhere", role="vocoder")
    (tmp_path / "nowhere" / record.file).unlink()
    with pytest.raises(CheckpointNotFoundError) as err:
        resolve_dependency(RegistryStore(embedded.uri), record, local=tmp_path / "nowhere" / record.file)
    message = one_line(err.value)
    for needle in ("vocoder", record.sha256[:12], "mlflow-ddsp attach-dependencies", "vocoder.ckpt"):
        assert needle in message, message


@pytest.mark.stack
def test_gc_keeps_a_referenced_dependency_and_frees_it_once_unreferenced(backend, tmp_path, monkeypatch):
    path, record = weights(tmp_path / "first", role="f0")
    store = RegistryStore(backend.uri)
    stored = store_dependency(store, path, record)
    holder = reference(store, backend, record)
    assert record.sha256 in referenced_dependencies(store)
    assert record not in [r for r, _ in collect_dependencies(store, dry_run=True)]
    assert record not in [r for r, _ in collect_dependencies(store)]
    assert [m.model_id for m in dependency_models(store, record)] == [stored.model_id]

    store.delete_record(holder)  # the last version that referenced it is retired
    assert (record, record.size) in collect_dependencies(store, dry_run=True)
    assert len(stored_copies(backend, store, record)) == 1  # a dry run changes nothing
    assert (record, record.size) in collect_dependencies(store)
    assert dependency_models(store, record) == [] and stored_copies(backend, store, record) == []
    second_machine(tmp_path, monkeypatch)
    with pytest.raises(CheckpointNotFoundError):
        resolve_dependency(store, record)


def _saver_during_gc(backend, tmp_path, monkeypatch, at: str):
    """gc pauses at ``at``; meanwhile a save references the dependency and confirms it."""
    path, record = weights(tmp_path / "first")
    store = RegistryStore(backend.uri)
    original = store_dependency(store, path, record).model_id
    confirmed = []

    def save_now(point):
        if point == at:
            reference(store, backend, record)
            confirmed.extend(confirm_dependencies(store, [(path, record)]))

    freed = collect_dependencies(store, pause=save_now)
    assert len(confirmed) == 1 and confirmed[0].model_id != original  # the marked file was not reused
    second_machine(tmp_path, monkeypatch)
    assert resolve_dependency(store, record).read_bytes() == path.read_bytes()
    assert record.sha256 in referenced_dependencies(store)
    return store, record, original, confirmed[0].model_id, freed


def test_gc_race_a_save_referencing_before_the_relist_keeps_the_file(backend, tmp_path, monkeypatch):
    store, record, original, reuploaded, freed = _saver_during_gc(backend, tmp_path, monkeypatch, "after_mark")
    assert record not in [r for r, _ in freed]
    models = {m.model_id: m for m in dependency_models(store, record)}
    assert set(models) == {original, reuploaded}
    assert all(m.status == "READY" and T.DEPENDENCY_RETIRING not in m.tags for m in models.values())


def test_gc_race_a_save_referencing_after_the_relist_uploads_again(backend, tmp_path, monkeypatch):
    store, record, _, reuploaded, freed = _saver_during_gc(backend, tmp_path, monkeypatch, "after_relist")
    assert (record, record.size) in freed
    assert [(m.model_id, m.status) for m in dependency_models(store, record)] == [(reuploaded, "READY")]
    assert T.DEPENDENCY_RETIRING not in dependency_models(store, record)[0].tags


STORE_ONE = """
import sys
from mlflow_ddsp.checkpoint.dependencies import DependencyRecord, store_dependency
from mlflow_ddsp.store import RegistryStore
uri, path, role, sha256, size, file = sys.argv[1:]
store_dependency(RegistryStore(uri), path, DependencyRecord(role, sha256, int(size), file))
"""


@pytest.mark.slow
@pytest.mark.parametrize("point", DEPENDENCY_CRASH_POINTS)
def test_a_store_killed_at_each_step_leaves_nothing_used_and_gc_cleans_it(embedded, tmp_path, monkeypatch, point):
    killed_while_storing(embedded, tmp_path, monkeypatch, point)


# On a server, the two points that leave a PENDING copy with its bytes and a READY one (suite time:
# each kill costs a process start).
@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("point", ["dependency_after_upload", "dependency_after_finalize"])
def test_a_store_killed_on_a_server_leaves_nothing_used_and_gc_cleans_it(request, tmp_path, monkeypatch, point):
    server = server_of(request, "server", f"exp-killed-{uuid.uuid4().hex[:6]}")
    try:
        killed_while_storing(server, tmp_path, monkeypatch, point)
    finally:
        forget_dependencies(server.uri)  # the session server is shared (no `backend` fixture to do it)


def killed_while_storing(backend: Backend, tmp_path: Path, monkeypatch, point: str) -> None:
    """SIGKILL a process storing a dependency at ``point``: nothing half-stored is used; gc cleans it."""
    path, record = weights(tmp_path / "first")
    proc = subprocess.run(
        [sys.executable, "-c", STORE_ONE, backend.uri, str(path), record.role, record.sha256, str(record.size), record.file],
        capture_output=True, text=True, env={**os.environ, CRASH_ENV: point}, timeout=scaled_timeout(300), check=False,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    store = RegistryStore(backend.uri)
    second_machine(tmp_path, monkeypatch)
    [model] = dependency_models(store, record)
    if point == "dependency_after_finalize":  # the commit point passed: stored, and used
        assert model.status == "READY"
        assert resolve_dependency(store, record).read_bytes() == path.read_bytes()
        return
    assert model.status == "PENDING"
    with pytest.raises(CheckpointNotFoundError):
        resolve_dependency(store, record)  # a half-upload is never used
    assert record not in [r for r, _ in collect_dependencies(store)]  # younger than the grace: maybe live
    stored = store_dependency(store, path, record)  # the next save stores anew ...
    assert stored.model_id != model.model_id
    reference(store, backend, record)  # ... and references it
    freed = collect_dependencies(store, pending_grace_s=0)
    assert [r for r, _ in freed].count(record) == 1  # the dead upload only
    assert [(m.model_id, m.status) for m in dependency_models(store, record)] == [(stored.model_id, "READY")]
    assert len(stored_copies(backend, store, record)) == 1


@pytest.mark.server
def test_a_reader_fetches_and_a_read_only_save_of_a_new_dependency_says_edit_is_needed(
    auth_server: AuthServer, tmp_path, monkeypatch  # noqa: F811  (the fixture imported above)
):
    path, record = weights(tmp_path / "first")
    auth_server.login(monkeypatch, "admin")
    store_dependency(RegistryStore(auth_server.uri), path, record)  # creates the experiment: the admin owns it
    reader = auth_server.create_user(monkeypatch, f"reader-{uuid.uuid4().hex[:6]}")  # default permission: READ
    auth_server.login(monkeypatch, reader)
    second_machine(tmp_path, monkeypatch)
    store = RegistryStore(auth_server.uri)
    assert resolve_dependency(store, record).read_bytes() == path.read_bytes()

    new_path, new_record = weights(tmp_path / "new", role="vocoder")
    with pytest.raises(PermissionDeniedError) as err:
        store_dependency(store, new_path, new_record)
    message = one_line(err.value)
    assert "EDIT" in message and T.DEPENDENCY_EXPERIMENT in message and reader in message, message
    auth_server.login(monkeypatch, "admin")
    assert dependency_models(RegistryStore(auth_server.uri), new_record) == []  # nothing partial left
