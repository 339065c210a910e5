"""A team's server with ``mlflow server --app-name basic-auth``: credentials and permissions.

One basic-auth server per session (SQLite backend, its own auth database and
config ini in a tmp folder; default permission READ). Users are created with
MLflow's own auth client. Refusals are classified by MLflow's error code / HTTP
status at the edge (``RegistryStore``) and reach the user as one line:

* wrong or missing credentials: ``NotAuthenticatedError`` at the first request,
  before any data is loaded;
* a user with READ on the registered model can list, verify, restore, convert
  with ``infer`` and serve with ``mlflow-ddsp serve``, but a save, ``keep``
  (EDIT), ``unkeep`` and ``gc`` deletions (MANAGE) are refused naming the
  permission;
* ``gc``'s store-wide dependency collection runs only for an admin: the server hides from
  anyone else the experiments he may not read, and the references in them (no 403), so a
  non-admin's gc collects nothing and says so in one line.
"""

from __future__ import annotations

import secrets
import tempfile

import pytest
import torch
from click.testing import CliRunner

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp import tags as T
from mlflow_ddsp.checkpoint import CheckpointReader
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.checkpoint.lease import lease_model_name
from mlflow_ddsp.cli import main
from mlflow_ddsp.errors import NotAuthenticatedError, PermissionDeniedError
from mlflow_ddsp.testing.server import LocalServer

from conftest import tiny_config
from registry_checks import versions_by_step

pytestmark = pytest.mark.server

ADMIN = "admin"


class AuthServer:
    def __init__(self, server: LocalServer, admin_password: str):
        self.server = server
        self.uri = server.uri
        self.admin_password = admin_password
        self.passwords: dict[str, str] = {ADMIN: admin_password}

    def login(self, monkeypatch, user: str | None, password: str | None = None) -> None:
        """Set the credentials MLflow's client sends (None: send none)."""
        for var, value in (("MLFLOW_TRACKING_USERNAME", user),
                           ("MLFLOW_TRACKING_PASSWORD", password if password is not None else self.passwords.get(user))):  # fmt: skip
            if value is None:
                monkeypatch.delenv(var, raising=False)
            else:
                monkeypatch.setenv(var, value)

    def admin_client(self, monkeypatch):
        from mlflow.server import get_app_client

        self.login(monkeypatch, ADMIN)
        return get_app_client("basic-auth", tracking_uri=self.uri)

    def create_user(self, monkeypatch, name: str) -> str:
        password = secrets.token_urlsafe(12)
        self.admin_client(monkeypatch).create_user(name, password)
        self.passwords[name] = password
        return name


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-basic-auth")
    admin_password = secrets.token_urlsafe(16)
    ini = root / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN}\n"
        f"admin_password = {admin_password}\n"
        "auth_cache_ttl_seconds = 300\n"  # else every request re-hashes the password (seconds on a busy CPU)
    )
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    with LocalServer(root, app_name="basic-auth", env=env) as server:
        yield AuthServer(server, admin_password)


@pytest.fixture
def team(auth_server, monkeypatch, model_name):
    """A writer (who saves ``model_name`` at steps 10, 20, 30) and a reader with READ on it."""
    suffix = model_name[-6:]
    writer = auth_server.create_user(monkeypatch, f"writer-{suffix}")
    reader = auth_server.create_user(monkeypatch, f"reader-{suffix}")
    auth_server.login(monkeypatch, writer)
    with CheckpointQueue(model_name, 10, 20, tracking_uri=auth_server.uri, experiment=f"exp-{model_name}") as queue:
        model = torch.nn.Linear(4, 4)
        for step in (10, 20, 30):
            queue.save(step, model).result()
    admin = auth_server.admin_client(monkeypatch)
    admin.grant_user_permission(reader, "registered_model", model_name, "READ")
    return writer, reader


def cli(uri: str, *args: str):
    return CliRunner().invoke(main, ["--tracking-uri", uri, *args])


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_valid_credentials_save_and_read_back(team, auth_server, model_name, monkeypatch):
    writer, _ = team
    auth_server.login(monkeypatch, writer)
    assert versions_by_step(RegistryStore(auth_server.uri), model_name) == {20: "force_saved", 30: "rolling"}
    result = cli(auth_server.uri, "verify", model_name)
    assert result.exit_code == 0 and "2 versions verified, no problems" in result.output


@pytest.mark.parametrize("credentials", ["wrong-password", "unknown-user", "none"])
def test_bad_or_missing_credentials_fail_at_start_in_one_line(auth_server, tmp_path, model_name, monkeypatch, credentials):
    if credentials == "none":
        auth_server.login(monkeypatch, None)
    else:
        user = ADMIN if credentials == "wrong-password" else "nobody"
        auth_server.login(monkeypatch, user, "not-the-password")
    # Unreadable data: had training loaded data first, it would fail otherwise.
    data = tmp_path / "unreadable-data"  # recordings listed, none readable: loading them would fail
    for split in ("train", "val"):
        (data / split / "audio").mkdir(parents=True)
        (data / split / "audio" / "a.wav").write_bytes(b"not audio")
    config = tiny_config(data, tmp_path / "tiny.yaml", model_name)
    result = cli(auth_server.uri, "train", "-c", str(config))
    assert_one_line_error(result, "HTTP 401", "MLFLOW_TRACKING_USERNAME")
    assert ("without credentials" in result.output) == (credentials == "none")
    with pytest.raises(NotAuthenticatedError):
        CheckpointQueue(model_name, 10, 20, tracking_uri=auth_server.uri, experiment=f"exp-{model_name}")


def test_a_reader_lists_verifies_and_restores_but_cannot_save(team, auth_server, model_name, monkeypatch):
    _, reader = team
    auth_server.login(monkeypatch, reader)
    listing = cli(auth_server.uri, "versions", model_name)
    assert listing.exit_code == 0 and listing.stdout.count("\n") == 3, listing.output
    verified = cli(auth_server.uri, "verify", model_name)
    assert verified.exit_code == 0 and "2 versions verified, no problems" in verified.output, verified.output
    restored = CheckpointReader(model_name, tracking_uri=auth_server.uri).fetch()
    assert restored is not None and restored.version.step == 30

    with pytest.raises(PermissionDeniedError, match=rf"user '{reader}' lacks the EDIT permission on registered model '{model_name}' \(HTTP 403\)"):
        CheckpointQueue(model_name, 10, 20, tracking_uri=auth_server.uri, experiment=f"exp-{model_name}")
    store = RegistryStore(auth_server.uri)
    assert not store.registered_model_exists(lease_model_name(model_name)), "the refused writer left its lease"
    assert versions_by_step(store, model_name) == {20: "force_saved", 30: "rolling"}


def test_keep_unkeep_and_gc_name_the_permission_they_need(team, auth_server, model_name, monkeypatch):
    writer, reader = team
    auth_server.login(monkeypatch, writer)
    store = RegistryStore(auth_server.uri)
    rolling = next(v for v in store.list_versions(model_name) if v.step == 30)
    experiment = store.experiment_ids(model_name)[0]
    orphan = store.create_files(experiment, "crashed", None, {T.QUEUE: model_name, T.STEP: "40", T.KIND: "rolling"})
    with tempfile.TemporaryDirectory() as tmp:
        partial = f"{tmp}/model_40.pt"
        open(partial, "wb").write(b"\0" * 100)
        store.upload(orphan, partial)

    auth_server.login(monkeypatch, reader)
    assert_one_line_error(cli(auth_server.uri, "keep", model_name, str(rolling.version)), "EDIT permission", "HTTP 403")
    assert_one_line_error(cli(auth_server.uri, "gc", model_name), "permission on", "HTTP 403")

    admin = auth_server.admin_client(monkeypatch)
    admin.revoke_user_permission(reader, "registered_model", model_name)
    admin.grant_user_permission(reader, "registered_model", model_name, "EDIT")
    auth_server.login(monkeypatch, reader)
    kept = cli(auth_server.uri, "keep", model_name, str(rolling.version))
    assert kept.exit_code == 0, kept.output
    assert_one_line_error(cli(auth_server.uri, "unkeep", model_name, str(rolling.version)), "MANAGE permission", "HTTP 403")
    assert_one_line_error(cli(auth_server.uri, "gc", model_name), "MANAGE permission", "HTTP 403")
    auth_server.login(monkeypatch, writer)  # the writer created the model and experiment: MANAGE
    assert cli(auth_server.uri, "unkeep", model_name, str(rolling.version)).exit_code == 0
    assert cli(auth_server.uri, "gc", model_name).exit_code == 0
    assert orphan.model_id not in {m.model_id for m in store.queue_models(model_name, [experiment])}


def test_a_reader_converts_with_infer_and_serves_a_version(auth_server, model_name, monkeypatch, tmp_path):
    """READ is enough for `infer` and `mlflow-ddsp serve` (download, verify, serve).

    READ is this server's default permission, so the reader holds READ on the experiment too; the
    grant on the registered model is what a team would set, and no EDIT is needed anywhere.
    """
    import json
    import urllib.request

    import numpy as np
    import soundfile as sf

    from mlflow_ddsp.config import parse_config
    from mlflow_ddsp.testing.server import LocalModelServer
    from mlflow_ddsp.models import build_model_from_config
    from mlflow_ddsp.serving.model_files import pyfunc_files

    from test_serving import TINY, sung_tone

    suffix = model_name[-6:]
    writer = auth_server.create_user(monkeypatch, f"vwriter-{suffix}")
    reader = auth_server.create_user(monkeypatch, f"vreader-{suffix}")
    auth_server.login(monkeypatch, writer)
    cfg = parse_config(TINY)
    with CheckpointQueue(model_name, 10, 20, config=cfg.to_yaml(), tracking_uri=auth_server.uri,
                         experiment=f"exp-{model_name}", extra_files=pyfunc_files()) as queue:  # fmt: skip
        queue.save(10, build_model_from_config(cfg)).result()
    auth_server.admin_client(monkeypatch).grant_user_permission(reader, "registered_model", model_name, "READ")

    auth_server.login(monkeypatch, reader)
    sf.write(tmp_path / "in.wav", sung_tone(1.0, 16000), 16000)
    result = cli(auth_server.uri, "infer", "-m", f"models:/{model_name}@rolling", "-i", str(tmp_path / "in.wav"),
                 "-o", str(tmp_path / "out.wav"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sf.info(str(tmp_path / "out.wav")).samplerate == 44100

    with LocalModelServer(f"models:/{model_name}@rolling", auth_server.uri, tmp_path / "serve.log") as served:
        body = {"dataframe_records": [{"samples": sung_tone(0.5, 16000).tolist(), "sample_rate": 16000}]}
        request = urllib.request.Request(served.url + "/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    (prediction,) = answer["predictions"]
    assert prediction["sample_rate"] == 44100 and np.isfinite(prediction["samples"]).all()


@pytest.mark.usefixtures("forget_stored_dependencies")
def test_gc_collects_dependencies_only_as_an_admin_who_sees_every_experiment(auth_server, model_name, monkeypatch, tmp_path):
    """The server hides from a non-admin the experiments he may not read, and the references in them
    (no 403). A user with MANAGE on the dependencies experiment, who cannot read an experiment
    whose LoggedModel references a file, would free that file: his gc collects nothing and says so
    in one line (his queue's own repair still runs). An admin's gc sees the reference, keeps that
    file and frees the unreferenced one."""
    import os
    import uuid

    from mlflow_ddsp.checkpoint.dependencies import DependencyRecord, dependencies_tag, store_dependency
    from mlflow_ddsp.checkpoint.files import sha256_file

    records = {}
    for role in ("f0", "vocoder"):  # f0: referenced in a hidden experiment only; vocoder: by nothing
        loose = tmp_path / f"{role}-{uuid.uuid4().hex[:8]}.pt"
        loose.write_bytes(os.urandom(3000))
        records[role] = (loose, DependencyRecord(role, sha256_file(loose).sha256, 3000, loose.name))
    (_, hidden_ref), (_, unreferenced) = records["f0"], records["vocoder"]
    auth_server.login(monkeypatch, ADMIN)
    admin_store = RegistryStore(auth_server.uri)
    for path, record in records.values():
        store_dependency(admin_store, path, record)
    hidden = admin_store.experiment_id(f"hidden-{model_name}")
    referrer = admin_store.create_logged_model(hidden, "checkpoint-files", {T.DEPENDENCIES: dependencies_tag([hidden_ref])},
                                               what="create a LoggedModel", where="a hidden experiment")  # fmt: skip
    dependencies = admin_store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)
    assert admin_store.current_user() == (ADMIN, True)
    user = auth_server.create_user(monkeypatch, f"gc-{model_name[-6:]}")
    admin = auth_server.admin_client(monkeypatch)
    admin.grant_user_permission(user, "experiment", hidden, "DENY")
    admin.grant_user_permission(user, "experiment", dependencies, "MANAGE")

    auth_server.login(monkeypatch, user)
    user_store = RegistryStore(auth_server.uri)
    assert user_store.current_user() == (user, False)
    assert hidden not in user_store.all_experiment_ids()  # hidden, not refused
    with CheckpointQueue(model_name, 10, 20, tracking_uri=auth_server.uri, experiment=f"exp-{model_name}") as queue:
        queue.save(10, torch.nn.Linear(4, 4)).result()
    result = cli(auth_server.uri, "gc", model_name)
    assert result.exit_code == 0, result.output  # the queue's own part ran
    assert f"{model_name}: nothing to do" in result.output, result.output
    assert not [line for line in result.output.splitlines() if line.startswith(("free ", "dependencies:"))]
    refusals = [line for line in result.output.splitlines() if line.startswith("dependencies not collected")]
    assert len(refusals) == 1 and f"user {user!r} is not an admin" in refusals[0], result.output
    assert "run `mlflow-ddsp gc` as an admin" in refusals[0], result.output
    auth_server.login(monkeypatch, ADMIN)
    for record in (hidden_ref, unreferenced):  # nothing deleted
        [model] = admin_store.find_logged_models([dependencies], {T.DEPENDENCY_SHA256: record.sha256})
        assert model.status == "READY"

    freed = cli(auth_server.uri, "gc", model_name)
    assert freed.exit_code == 0, freed.output
    assert f"free {unreferenced.label} ({unreferenced.file}, 3000 bytes" in freed.output, freed.output
    assert hidden_ref.label not in freed.output and "dependencies not collected" not in freed.output
    assert admin_store.find_logged_models([dependencies], {T.DEPENDENCY_SHA256: unreferenced.sha256}) == []
    assert len(admin_store.find_logged_models([dependencies], {T.DEPENDENCY_SHA256: hidden_ref.sha256})) == 1
    admin_store.delete_record(referrer.model_id)  # leave no reference for a later test on this server
