"""`mlflow-ddsp attach-dependencies` and the dependency part of `mlflow-ddsp gc` (issue 21, point 4).

Real stores (the embedded SQLite store and the session's `mlflow server`), versions made by a real
checkpoint queue (which records no dependencies: what versions from before issue 21 look like), a
tiny hubertsoft encoder the test writes (loaded by the product's loader, as check-weights does),
and the real CLI through click's CliRunner. The dependencies experiment is shared by every test
of a server: assertions are about this test's files only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp import tags as T
from mlflow_ddsp.checkpoint.dependencies import Companion, DependencyRecord, dependencies_tag, store_dependency
from mlflow_ddsp.checkpoint.dependency_attach import version_dependencies
from mlflow_ddsp.checkpoint.dependency_cache import resolve_dependency
from mlflow_ddsp.checkpoint.files import sha256_file
from mlflow_ddsp.cli import main
from mlflow_ddsp.preprocess import MANIFEST_NAME
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.vocoder import NsfHifiGanGenerator, default_vocoder_config, write_vocoder_config

from conftest import Backend, second_machine
from test_auth import AuthServer, auth_server  # noqa: F401  (the session's basic-auth server)
from test_encoders import _write_hubert_soft

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "projects" / "demo" / "config.yaml")



pytestmark = pytest.mark.usefixtures("forget_stored_dependencies")

def cli(backend, *args: str):
    return CliRunner().invoke(main, ["--tracking-uri", backend.uri, *args], catch_exceptions=False)


def encoder_config(tmp_path: Path) -> tuple[list[str], DependencyRecord]:
    """`-c demo --set ...` arguments naming a tiny hubertsoft encoder (random weights), and its record."""
    path = tmp_path / "pretrain" / f"hubert-soft-{uuid.uuid4().hex[:8]}.pt"
    path.parent.mkdir(parents=True)
    _write_hubert_soft(path, seed=int.from_bytes(os.urandom(2), "little"))
    digest = sha256_file(path)
    args = ["-c", DEMO, "--set", "data.encoder=hubertsoft", "--set", f"data.encoder_ckpt={path}",
            "--set", "data.encoder_out_channels=16", "--set", f"data.train_path={tmp_path / 'data' / 'train'}",
            "--set", f"data.valid_path={tmp_path / 'data' / 'val'}"]  # fmt: skip
    return args, DependencyRecord("encoder", digest.sha256, digest.size, path.name)


def queue_versions(backend, name: str, steps=(10, 20)) -> RegistryStore:
    """Versions written by a checkpoint queue, which records no dependencies (force-saved: all kept)."""
    with CheckpointQueue(name, 1, 10, tracking_uri=backend.uri, experiment=backend.experiment) as queue:
        for step in steps:
            queue.save(step, torch.nn.Linear(4, 4)).result()
    return RegistryStore(backend.uri)


def dependency_models(store: RegistryStore, record: DependencyRecord):
    experiment_id = store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)
    return store.find_logged_models([experiment_id], {T.DEPENDENCY_SHA256: record.sha256}) if experiment_id else []


def tag_of(store: RegistryStore, version) -> str | None:
    return store.get_files(version.model_id).tags.get(T.DEPENDENCIES)


def test_attach_records_queue_versions_stores_the_file_once_and_twice_is_a_no_op(backend, model_name, tmp_path):
    store = queue_versions(backend, model_name)
    versions = store.list_versions(model_name)
    assert [tag_of(store, v) for v in versions] == [None, None]  # a queue records none (yet)
    args, record = encoder_config(tmp_path)

    dry = cli(backend, "attach-dependencies", model_name, *args, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"would attach {record.label} ({record.file}" in dry.output
    assert [tag_of(store, v) for v in versions] == [None, None] and dependency_models(store, record) == []

    result = cli(backend, "attach-dependencies", model_name, *args)
    assert result.exit_code == 0, result.output
    assert f"{model_name}: attached dependencies to 2 of 2 version(s)" in result.output
    assert [tag_of(store, v) for v in versions] == [dependencies_tag([record])] * 2
    assert [m.status for m in dependency_models(store, record)] == ["READY"]  # stored once, for both
    assert [version_dependencies(store, v, None) for v in versions] == [[record], [record]]

    again = cli(backend, "attach-dependencies", model_name, *args)
    assert again.exit_code == 0, again.output
    for v in versions:
        assert f"{v.label}: skipped, already records its dependencies (encoder {record.sha256[:12]})" in again.output
    assert "attached dependencies to 0 of 2 version(s)" in again.output
    assert len(dependency_models(store, record)) == 1
    assert [tag_of(store, v) for v in versions] == [dependencies_tag([record])] * 2


def test_attach_records_a_cascade_vocoder_with_its_config_json(embedded, model_name, tmp_path, monkeypatch):
    """A 6.x/5.0 version depends on the vocoder's weights and the config.json beside them (its
    companion): attached through ``config_dependencies``, stored together, fetched together."""
    store = queue_versions(embedded, model_name, steps=(10,))
    voc = tmp_path / "pretrain" / "nsf_hifigan"
    config = dataclasses.replace(default_vocoder_config(), upsample_initial_channel=32)
    write_vocoder_config(voc, config)
    torch.manual_seed(int.from_bytes(os.urandom(2), "little"))
    torch.save({"generator": NsfHifiGanGenerator(config).state_dict()}, voc / "model")
    args = ["-c", str(ROOT / "projects" / "reflow" / "config.yaml"), "--set", "data.encoder=logmel",
            "--set", "data.encoder_out_channels=128", "--set", "data.f0_extractor=parselmouth",
            "--set", f"vocoder.ckpt={voc / 'model'}", "--set", f"data.train_path={tmp_path / 'data' / 'train'}",
            "--set", f"data.valid_path={tmp_path / 'data' / 'val'}"]  # fmt: skip
    result = cli(embedded, "attach-dependencies", model_name, *args)
    assert result.exit_code == 0, result.output
    (record,) = version_dependencies(store, store.get_version(model_name, 1), None)  # from the stored copy's tags
    companion = sha256_file(voc / "config.json")
    assert (record.role, record.sha256) == ("vocoder", sha256_file(voc / "model").sha256)
    assert record.companions == (Companion("config.json", companion.sha256, companion.size),)
    (stored,) = dependency_models(store, record)
    assert set(store.list_sizes(store.get_files(stored.model_id))) == {"model", "config.json"}
    second_machine(tmp_path, monkeypatch)
    got = resolve_dependency(store, record)
    assert (got.parent / "config.json").read_bytes() == (voc / "config.json").read_bytes()

    # the weights without their config.json: refused in one line naming it, nothing attached
    other = queue_versions(embedded, f"{model_name}-b", steps=(10,))
    (voc / "config.json").unlink()
    refused = cli(embedded, "attach-dependencies", f"{model_name}-b", *args)
    assert refused.exit_code != 0 and "config.json" in refused.output and len(refused.output.strip().splitlines()) == 1
    assert tag_of(other, other.get_version(f"{model_name}-b", 1)) is None


def test_a_file_whose_digest_differs_from_the_recorded_one_is_refused_naming_both(embedded, model_name, tmp_path):
    store = queue_versions(embedded, model_name, steps=(10,))
    args, record = encoder_config(tmp_path)
    made_by = "ab" * 32  # the features were made by another encoder file than the config names now
    train = tmp_path / "data" / "train"
    train.mkdir(parents=True)
    (train / MANIFEST_NAME).write_text(json.dumps({
        "version": 1, "content_digest": "0" * 64,
        "dependencies": [{"role": "encoder", "sha256": made_by, "size": 1, "path": "/elsewhere/encoder.pt"}],
    }))  # fmt: skip
    result = cli(embedded, "attach-dependencies", model_name, "1", *args)
    assert result.exit_code == 1
    message = result.output.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    for needle in (record.sha256[:12], made_by[:12], "data.encoder_ckpt", str(train)):
        assert needle in message, message
    assert tag_of(store, store.get_version(model_name, 1)) is None and dependency_models(store, record) == []


def test_gc_frees_an_unreferenced_dependency_keeps_an_attached_one_and_a_dry_run_deletes_nothing(
    backend, model_name, tmp_path
):
    store = queue_versions(backend, model_name, steps=(10,))
    args, attached = encoder_config(tmp_path)
    assert cli(backend, "attach-dependencies", model_name, *args).exit_code == 0
    loose = tmp_path / f"vocoder-{uuid.uuid4().hex[:8]}.pt"
    loose.write_bytes(os.urandom(123_457))
    unreferenced = DependencyRecord("vocoder", sha256_file(loose).sha256, 123_457, loose.name)
    store_dependency(store, loose, unreferenced)

    dry = cli(backend, "gc", model_name, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"would free {unreferenced.label} ({unreferenced.file}, 123457 bytes" in dry.output
    assert attached.label not in dry.output
    assert [m.status for m in dependency_models(store, unreferenced)] == ["READY"]  # nothing deleted

    result = cli(backend, "gc", model_name)
    assert result.exit_code == 0, result.output
    assert f"free {unreferenced.label} ({unreferenced.file}, 123457 bytes, 123.5 KB)" in result.output
    assert "dependencies: freed" in result.output and attached.label not in result.output
    assert dependency_models(store, unreferenced) == []
    assert [m.status for m in dependency_models(store, attached)] == ["READY"]  # the attached version's
    assert version_dependencies(store, store.get_version(model_name, 1), None) == [attached]


@pytest.mark.server
def test_gc_refused_a_listing_collects_no_dependency_and_says_so_in_one_line(
    auth_server: AuthServer, model_name, tmp_path, monkeypatch  # noqa: F811  (the fixture imported above)
):
    loose = tmp_path / f"f0-{uuid.uuid4().hex[:8]}.pt"
    loose.write_bytes(os.urandom(4096))
    record = DependencyRecord("f0", sha256_file(loose).sha256, 4096, loose.name)
    auth_server.login(monkeypatch, "admin")
    admin_store = RegistryStore(auth_server.uri)
    store_dependency(admin_store, loose, record)  # unreferenced: an admin's gc would free it
    user = auth_server.create_user(monkeypatch, f"hidden-{uuid.uuid4().hex[:6]}")
    experiment_id = admin_store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)
    auth_server.admin_client(monkeypatch).grant_user_permission(user, "experiment", experiment_id, "DENY")

    auth_server.login(monkeypatch, user)
    backend = Backend("server", auth_server.uri, None, f"exp-{model_name}")
    queue_versions(backend, model_name, steps=(10,))  # the user's own queue: gc NAME is theirs to run
    result = cli(backend, "gc", model_name)
    assert result.exit_code == 0, result.output  # the queue's own repair stands
    refusals = [line for line in result.output.splitlines() if line.startswith("dependencies not collected")]
    assert len(refusals) == 1 and "HTTP 403" in refusals[0] and "READ on every experiment" in refusals[0], result.output
    auth_server.login(monkeypatch, "admin")
    [model] = dependency_models(admin_store, record)
    assert model.status == "READY"  # nothing deleted
    admin_store.delete_bytes(admin_store.get_files(model.model_id))  # leave no unreferenced file to the
    admin_store.delete_record(model.model_id)  # next test's gc on this server (it would print it)
