"""Nothing a person keeps is ever lost: protection, keep/unkeep, best, evidence, copies, failures.

Each test reproduces a way the queue used to lose a model (issue "Nothing a
person keeps is ever lost"), against the embedded store and a real
``mlflow server`` where the behaviour depends on the store.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mlflow import MlflowClient
from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp import tags as T
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.checkpoint.faults import FAIL_ENV
from mlflow_ddsp.cli import main
from mlflow_ddsp.errors import ArtifactStoreUnavailable, CheckpointSaveError, ConfigError
from mlflow_ddsp.checkpoint.verify import fetch_verified

from conftest import Backend
from registry_checks import versions_by_step


def open_queue(backend, name, interval_force_save=None, **kwargs) -> CheckpointQueue:
    return CheckpointQueue(name, 10, interval_force_save, tracking_uri=backend.uri, experiment=backend.experiment, **kwargs)


def cli(backend, *args: str):
    return CliRunner().invoke(main, ["--tracking-uri", backend.uri, *args], catch_exceptions=False)


def model_and_step() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 4)


def folder_of(backend: Backend, store: RegistryStore, version) -> Path:
    """The folder holding a version's files on disk."""
    experiment = store.client.get_logged_model(version.model_id).experiment_id
    base = backend.artifacts_dir if backend.kind == "embedded" else backend.artifacts_dir / experiment
    return base / "models" / version.model_id


# -- 1. a promoted version is never deleted ---------------------------------------------------
@pytest.mark.parametrize("how", ["alias", "keep"])
def test_a_version_a_person_promoted_or_kept_survives_and_is_retired_once_released(backend, model_name, how):
    model = model_and_step()
    client = MlflowClient(backend.uri, backend.uri)
    with open_queue(backend, model_name) as queue:
        promoted = queue.save(10, model).result()
        promoted_folder = folder_of(backend, queue.store, promoted)
        if how == "alias":
            client.set_registered_model_alias(model_name, "champion", str(promoted.version))
        else:
            result = cli(backend, "keep", model_name, str(promoted.version))
            assert result.exit_code == 0 and "is kept" in result.output
        queue.save(20, model).result()
        queue.save(30, model).result()
        store = queue.store
        assert versions_by_step(store, model_name) == {10: "rolling", 30: "rolling"}
        with tempfile.TemporaryDirectory() as tmp:
            fetch_verified(store, store.get_version(model_name, promoted.version), tmp)  # bytes intact
        if how == "alias":
            assert int(client.get_model_version_by_alias(model_name, "champion").version) == promoted.version

        listing = cli(backend, "versions", model_name)
        row = next(line for line in listing.output.splitlines() if line.split()[:2] == [str(promoted.version), "10"])
        assert row.split()[-1] == ("alias:champion" if how == "alias" else "keep")

        # Protection removed: the next save retires it like any other old rolling checkpoint.
        if how == "alias":
            client.delete_registered_model_alias(model_name, "champion")
        else:
            assert "no longer kept" in cli(backend, "unkeep", model_name, str(promoted.version)).output
        queue.save(40, model).result()
    assert versions_by_step(store, model_name) == {40: "rolling"}
    assert not promoted_folder.exists()


@pytest.mark.stack("postgres")
@pytest.mark.parametrize("value", ["true", "yes", "On"])
def test_gc_never_deletes_a_protected_version(backend, model_name, value):
    """Whatever yes-word a person types into the tag in the UI (issue: `yes` was ignored and the version lost)."""
    model = model_and_step()
    with open_queue(backend, model_name) as queue:
        kept = queue.save(10, model).result()
        queue.store.set_version_tag(model_name, kept.version, T.KEEP, value)
        queue.save(20, model).result()
    assert cli(backend, "gc", model_name).output.strip() == f"{model_name}: nothing to do"
    assert versions_by_step(RegistryStore(backend.uri), model_name) == {10: "rolling", 20: "rolling"}


def test_keep_of_an_unknown_version_is_one_line(backend, model_name):
    with open_queue(backend, model_name) as queue:
        queue.save(10, model_and_step()).result()
    result = cli(backend, "keep", model_name, "99")
    assert result.exit_code == 1 and result.output.startswith("error:") and result.output.count("\n") == 1


# -- keep_last and best through a real store ------------------------------------------------------
def test_keep_last_and_best_are_registry_state(backend, model_name):
    model = model_and_step()
    losses = {10: 0.9, 20: 0.2, 30: 0.5, 40: 0.6, 50: 0.7, 60: 0.2}
    with open_queue(backend, model_name, keep_last=2, best_metric="validation/loss") as queue:
        for step, loss in losses.items():
            queue.save(step, model, metrics={"validation/loss": loss})
        store = queue.store
    assert set(versions_by_step(store, model_name)) == {20, 50, 60}  # best (tie: earlier step) + newest 2
    best = store.get_version(model_name, store.alias_version(model_name, "best"))
    assert best.step == 20 and best.tags[T.metric_tag("validation/loss")] == "0.2"
    assert store.get_version(model_name, store.alias_version(model_name, "rolling")).step == 60

    # gc (another process, no options) applies the recorded policy: nothing to delete.
    assert cli(backend, "gc", model_name).output.strip() == f"{model_name}: nothing to do"
    rows = {line.split()[1]: line.split()[-1] for line in cli(backend, "versions", model_name).stdout.splitlines()[1:]}
    assert rows == {"20": "best", "50": "keep_last", "60": "newest"}


def test_start_of_training_says_what_is_kept(backend, model_name, caplog):
    with caplog.at_level(logging.INFO, logger="mlflow_ddsp"):
        open_queue(backend, model_name).close()
        open_queue(backend, model_name + "-2", interval_force_save=30, best_metric="validation/loss").close()
    lines = [r.getMessage() for r in caplog.records if "keeping the newest" in r.getMessage()]
    assert lines[0].endswith("set train.interval_force_save (e.g. 50) or train.keep_last to keep more")
    assert "every 30th step forever, the best by validation/loss" in lines[1] and "keep more" not in lines[1]
    assert all("\n" not in line for line in lines)


# -- 5. an empty (unmounted) artifact store deletes nothing --------------------------------------
def test_an_empty_artifact_store_at_start_deletes_nothing(backend, model_name):
    model = model_and_step()
    with open_queue(backend, model_name) as queue:
        v = queue.save(10, model).result()
        store = queue.store
    # What an unmounted volume looks like: the folder is there, and empty.
    mounted = folder_of(backend, store, v).parent.parent if backend.kind == "server" else backend.artifacts_dir
    aside = mounted.with_name(mounted.name + "-aside")
    mounted.rename(aside)
    mounted.mkdir()
    try:
        with pytest.raises(ArtifactStoreUnavailable) as info:
            open_queue(backend, model_name)
        message = str(info.value)
        assert "\n" not in message and "nothing was deleted" in message and "mount" in message
        result = cli(backend, "gc", model_name)
        assert result.exit_code == 1 and "none of the 1 checkpoint versions" in result.output
        assert versions_by_step(store, model_name) == {10: "rolling"}
    finally:
        mounted.rmdir()
        aside.rename(mounted)
    with open_queue(backend, model_name) as queue:  # mounted again: everything is there
        assert queue.restore(model_and_step()) == 10


def test_gc_forget_missing_removes_versions_whose_files_are_gone(backend, model_name):
    with open_queue(backend, model_name) as queue:
        v = queue.save(10, model_and_step()).result()
        store = queue.store
    shutil.rmtree(folder_of(backend, store, v))
    assert cli(backend, "gc", model_name).exit_code == 1  # could be an unmounted store: refuse
    result = cli(backend, "gc", model_name, "--forget-missing")
    assert result.exit_code == 0 and "delete rolling version" in result.output
    assert versions_by_step(store, model_name) == {}


# -- 4. a copied store never touches the original's files ----------------------------------------
@pytest.mark.parametrize("where", ["sibling", "parent"])
def test_a_copied_store_never_deletes_the_originals_files(tmp_path, sqlite_template, model_name, caplog, where):
    """`cp -r work copy`, or the store's files copied into the folder above the original's."""
    from conftest import fresh_embedded

    original_root = tmp_path / "work"
    original_root.mkdir()
    original = fresh_embedded(sqlite_template, original_root, "copy-test")
    model = model_and_step()
    with open_queue(original, model_name) as queue:
        queue.save(10, model).result()
        queue.save(20, model).result()
    before = {p: p.read_bytes() for p in original.artifacts_dir.rglob("*") if p.is_file()}

    copy_root = tmp_path / "copy" if where == "sibling" else tmp_path
    copy_root.mkdir(exist_ok=True)
    shutil.copyfile(original_root / "mlflow.db", copy_root / "mlflow.db")
    shutil.copytree(original.artifacts_dir, copy_root / "mlartifacts")
    copy = Backend("embedded", f"sqlite:///{copy_root / 'mlflow.db'}", copy_root / "mlartifacts", "copy-test")
    with caplog.at_level(logging.WARNING, logger="mlflow_ddsp"), open_queue(copy, model_name) as queue:
        queue.save(30, model).result()  # retires v(20), whose bytes the copy shares with the original
    assert "outside this store's folder" in caplog.text
    assert cli(copy, "gc", model_name).exit_code == 0
    assert versions_by_step(RegistryStore(copy.uri), model_name) == {30: "rolling"}

    after = {p: p.read_bytes() for p in original.artifacts_dir.rglob("*") if p.is_file()}
    # MLflow keeps the original's absolute artifact path in the copy, so new files may land
    # there (the copy warns); none of the original's files may go or change.
    assert {p: after.get(p) for p in before} == before, "the copy deleted or changed files of the original store"
    assert cli(original, "verify", model_name).exit_code == 0


def test_an_artifact_folder_on_a_symlinked_volume_is_still_the_stores_own(tmp_path, sqlite_template, model_name):
    from conftest import fresh_embedded

    (tmp_path / "store").mkdir()
    (tmp_path / "volume").mkdir()
    backend = fresh_embedded(sqlite_template, tmp_path / "store", "volume-test")
    backend.artifacts_dir.symlink_to(tmp_path / "volume")
    with open_queue(backend, model_name) as queue:
        for step in (10, 20, 30):
            queue.save(step, model_and_step()).result()
    assert versions_by_step(RegistryStore(backend.uri), model_name) == {30: "rolling"}
    assert len(list((tmp_path / "volume" / "models").iterdir())) == 1  # retired checkpoints' bytes were freed


def test_gc_never_moves_an_alias_that_is_not_the_queues(backend, model_name):
    with open_queue(backend, model_name) as queue:
        promoted = queue.save(10, model_and_step()).result()
        queue.store.set_alias(model_name, "champion", promoted.version)
        queue.save(20, model_and_step()).result()
    for alias in ("champion", "best", "latest"):
        result = cli(backend, "gc", model_name, "--alias", alias)
        assert result.exit_code == 1 and result.output.startswith("error: alias=") and result.output.count("\n") == 1
    assert versions_by_step(RegistryStore(backend.uri), model_name) == {10: "rolling", 20: "rolling"}


def test_a_persons_best_alias_survives_turning_best_on(backend, model_name):
    model = model_and_step()
    with open_queue(backend, model_name) as queue:  # no best metric: 'best' is free for people
        theirs = queue.save(10, model, metrics={"validation/loss": 0.5}).result()
        queue.store.set_alias(model_name, "best", theirs.version)
        queue.save(20, model, metrics={"validation/loss": 0.4}).result()
    with open_queue(backend, model_name, best_metric="validation/loss") as queue:
        queue.save(30, model, metrics={"validation/loss": 0.1}).result()
        store = queue.store
    assert store.alias_version(model_name, "best") == theirs.version
    assert set(versions_by_step(store, model_name)) == {10, 30}


def test_registry_commands_in_a_folder_without_a_store_say_so(tmp_path):
    for command in (["versions", "voice"], ["verify", "voice"], ["gc", "voice"], ["keep", "voice", "1"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and result.output.startswith("error: no MLflow store at"), result.output
    assert not (tmp_path / "mlflow.db").exists()


# -- 6 (build). consistency after a partial failure, through the real server ---------------------
@pytest.mark.parametrize("point", ["after_register", "after_alias"], ids=["alias-move-fails", "retire-fails"])
def test_a_failed_alias_move_or_retire_is_finished_by_the_next_save(backend, model_name, point, monkeypatch):
    model = model_and_step()
    with open_queue(backend, model_name) as queue:
        queue.save(10, model).result()
        monkeypatch.setenv(FAIL_ENV, f"{point}@20")
        queue.save(20, model)
        with pytest.raises(CheckpointSaveError, match=r"step 20 failed: injected failure"):
            queue.flush()
        monkeypatch.delenv(FAIL_ENV)
        store = queue.store
        assert versions_by_step(store, model_name) == {10: "rolling", 20: "rolling"}  # committed, not cleaned up
        queue.save(30, model).result()
    assert versions_by_step(store, model_name) == {30: "rolling"}
    assert store.get_version(model_name, store.alias_version(model_name, "rolling")).step == 30


def test_a_retried_save_of_a_committed_step_finishes_its_plan_without_a_second_version(backend, model_name, monkeypatch):
    model = model_and_step()
    with open_queue(backend, model_name) as queue:
        queue.save(10, model).result()
        monkeypatch.setenv(FAIL_ENV, "after_register@20")
        queue.save(20, model)
        with pytest.raises(CheckpointSaveError):
            queue.flush()
        monkeypatch.delenv(FAIL_ENV)
        assert queue.save(20, model).result().step == 20  # the plan is applied now
        store = queue.store
        assert versions_by_step(store, model_name) == {20: "rolling"}
        assert store.get_version(model_name, store.alias_version(model_name, "rolling")).step == 20


def test_a_save_retried_after_a_failed_upload_saves(backend, model_name, monkeypatch):
    model = model_and_step()
    with open_queue(backend, model_name) as queue:
        monkeypatch.setenv(FAIL_ENV, "after_upload@10")
        queue.save(10, model)
        with pytest.raises(CheckpointSaveError):
            queue.flush()
        monkeypatch.delenv(FAIL_ENV)
        assert queue.save(10, model) is not None  # used to return None: "already saved"
        queue.flush()
    assert versions_by_step(RegistryStore(backend.uri), model_name) == {10: "rolling"}


# -- staging is per OS user ------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "fork") or os.geteuid() != 0, reason="needs root to become another user")
def test_a_second_os_user_can_save_on_the_same_machine(model_name):
    """Root saves and imports a file, then (in a forked child) the user 'nobody' does both into its own store.

    Saves go through the spool beside each store; imports (``register_file``) stage in a
    per-user folder under the system temp dir, which must never be shared.
    """
    import pwd

    nobody = pwd.getpwnam("nobody")
    shared = Path(tempfile.mkdtemp(prefix="mlflow-ddsp-two-users-"))
    shared.chmod(0o777)
    try:
        for owner in ("root", "nobody"):
            (shared / owner).mkdir()
        (shared / "nobody").chmod(0o777)
        model = model_and_step()
        uri_root = f"sqlite:///{shared / 'root' / 'mlflow.db'}"
        for owner in ("root", "nobody"):
            torch.save({"model": model.state_dict()}, shared / owner / "model_20.pt")
        with CheckpointQueue(model_name, 10, None, tracking_uri=uri_root) as queue:
            queue.save(10, model).result()
            queue.register_file(20, shared / "root" / "model_20.pt")  # root's staging folder exists now

        uri_nobody = f"sqlite:///{shared / 'nobody' / 'mlflow.db'}"
        pid = os.fork()
        if pid == 0:  # the child: become 'nobody' and save (all modules are loaded already)
            code = 1
            try:
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                os.environ["HOME"] = str(shared / "nobody")
                os.chdir(shared / "nobody")
                with CheckpointQueue(model_name, 10, None, tracking_uri=uri_nobody) as queue:
                    queue.save(10, model).result()
                    queue.register_file(20, shared / "nobody" / "model_20.pt")
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the second user's save failed"
        assert versions_by_step(RegistryStore(uri_nobody), model_name) == {20: "rolling"}
        folders = {p.name: p.stat() for p in Path(tempfile.gettempdir()).glob("mlflow-ddsp-staging-*")}
        assert folders[f"mlflow-ddsp-staging-{nobody.pw_uid}"].st_uid == nobody.pw_uid
        assert folders["mlflow-ddsp-staging-0"].st_mode & 0o777 == 0o700
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize("how", ["alias", "keep"])
def test_the_deleter_skips_a_version_protected_after_the_plan_was_made(backend, model_name, how):
    from mlflow_ddsp.checkpoint.deleter import apply_plan
    from mlflow_ddsp.checkpoint.policy import RetentionPolicy
    from mlflow_ddsp.checkpoint.retention import plan_retention
    from mlflow_ddsp.checkpoint.snapshot import take_snapshot

    with open_queue(backend, model_name) as queue:
        old = queue.save(10, model_and_step()).result()
        queue.store.set_version_tag(model_name, old.version, T.KEEP, "true")
        queue.save(20, model_and_step()).result()
        store = queue.store
        store.delete_version_tag(model_name, old.version, T.KEEP)
        plan = plan_retention(take_snapshot(store, model_name), RetentionPolicy(10, None), "rolling")
        assert [v.version for v in plan.delete_versions] == [old.version]
        if how == "alias":  # a person promotes it while the plan is being applied
            store.set_alias(model_name, "champion", old.version)
        else:
            store.set_version_tag(model_name, old.version, T.KEEP, "true")
        apply_plan(store, model_name, plan)
    assert versions_by_step(store, model_name) == {10: "rolling", 20: "rolling"}


def test_a_rolling_alias_setting_never_takes_over_a_persons_alias(backend, model_name):
    with open_queue(backend, model_name) as queue:
        theirs = queue.save(10, model_and_step()).result()
        queue.store.set_alias(model_name, "champion", theirs.version)
        queue.save(20, model_and_step()).result()
    with pytest.raises(ConfigError, match=r"alias='champion' is already used on .* by someone else"):
        open_queue(backend, model_name, alias="champion")
    store = RegistryStore(backend.uri)
    assert store.alias_version(model_name, "champion") == theirs.version
    assert versions_by_step(store, model_name) == {10: "rolling", 20: "rolling"}
