"""The private MLflow APIs mlflow-ddsp relies on, pinned by behaviour.

mlflow-ddsp uses three names MLflow does not publish; each is here with the
behaviour we need, so an MLflow upgrade that changes one fails here, by name,
instead of somewhere in a save. pyproject pins ``mlflow>=3.17,<3.18``: the minor CI tests.

- ``mlflow.tracking._tracking_service.utils._use_tracking_uri``: MLflow's SQLite
  registry resolves a ``models:/<model_id>`` version source with a fresh
  ``MlflowClient()``, i.e. through the process-wide tracking URI (a TODO in
  ``SqlAlchemyStore.create_model_version``); ``RegistryStore.create_version``
  points it at its own store for that one call, under a lock.
- ``mlflow.models.utils._save_example`` and ``mlflow.utils.environment._PythonEnv``:
  write a version's input example and ``python_env.yaml`` once per queue, without
  ``mlflow.pyfunc.save_model``'s requirement inference (5-10 s a call).

One public name is used for a behaviour MLflow does not document:
``mlflow.pyfunc.scoring_server.invocations`` is looked up by the ``/invocations``
route at request time, so the loader can wrap it (``guard_scoring_server``: one-line
answers to MLflow's own request errors). Pinned over real HTTP by
``tests/test_serving.py::test_bad_payloads_get_a_4xx_and_the_server_keeps_serving``
(a deeply nested body, not JSON).

Where MLflow keeps an error only as text, ``mlflow_ddsp/store/errors.py`` has one function
per string; each is pinned below by a test of the same name that provokes the real MLflow
error (a real SQLite store, a real HTTP connection) and asserts the function recognises it.
So are the shapes in which MLflow's scoring server rewrites a request error
(``serving/pyfunc.py``'s ``_PREDICT_ECHO`` and ``_SCHEMA_ECHO``), provoked through its real
``invocations`` with a real pyfunc model.
"""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.exceptions import MlflowException

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.store import RegistryStore

ROOT = Path(__file__).resolve().parents[1]


def test_installed_mlflow_is_inside_the_pinned_range():
    pin = re.search(r'"mlflow>=([\d.]+),<([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin, "pyproject.toml must pin mlflow to a range"
    low, high = (tuple(int(x) for x in group.split(".")) for group in pin.groups())
    installed = tuple(int(x) for x in re.findall(r"\d+", mlflow.__version__)[:3])
    assert low <= installed[: len(low)] and installed[: len(high)] < high, mlflow.__version__


def test_the_pinned_range_is_one_tested_minor():
    """Issue 22: the declared range is what CI installs and tests (one minor), not every 3.x."""
    pin = re.search(r'"mlflow>=([\d.]+),<([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    low, high = (tuple(int(x) for x in group.split(".")) for group in pin.groups())
    assert len(low) >= 2 and high == (low[0], low[1] + 1), pin.group(0)
    assert tuple(int(x) for x in re.findall(r"\d+", mlflow.__version__)[:2]) == low[:2], mlflow.__version__


def test_use_tracking_uri_switches_and_restores_the_global_uri(tmp_path):
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    before = mlflow.get_tracking_uri()
    inner = f"sqlite:///{tmp_path}/other.db"
    with _use_tracking_uri(inner):
        assert mlflow.get_tracking_uri() == inner
    assert mlflow.get_tracking_uri() == before


def test_a_version_registers_in_its_own_store_whatever_the_global_uri(embedded, sqlite_template, tmp_path, model_name):
    """Why the switch is needed, and that it works: the global URI names another store."""
    import shutil

    other = tmp_path / "other"
    other.mkdir()
    shutil.copyfile(sqlite_template, other / "mlflow.db")
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(f"sqlite:///{other}/mlflow.db"):  # restores the unset global afterwards
        with CheckpointQueue(model_name, 10, None, tracking_uri=embedded.uri, experiment=embedded.experiment) as q:
            version = q.save(10, torch.nn.Linear(2, 2)).result()
        assert RegistryStore(embedded.uri).get_version(model_name, version.version).model_id == version.model_id
        assert mlflow.get_tracking_uri() == f"sqlite:///{other}/mlflow.db"  # restored after the call


def test_save_example_and_python_env_write_what_pyfunc_reads(tmp_path):
    from mlflow.models import Model
    from mlflow.models.utils import _save_example
    from mlflow.utils.environment import _PythonEnv

    from mlflow_ddsp.serving.payload import input_example

    model = Model()
    _save_example(model, input_example(16000), str(tmp_path))
    assert model.saved_input_example_info and (tmp_path / model.saved_input_example_info["artifact_path"]).is_file()
    env = _PythonEnv(python="3.11.7", build_dependencies=["pip"], dependencies=["-r requirements.txt"])
    env.to_yaml(tmp_path / "python_env.yaml")
    assert _PythonEnv.from_yaml(tmp_path / "python_env.yaml").dependencies == ["-r requirements.txt"]


def test_only_the_listed_private_names_are_imported():
    """A new private import must be added to this file (with a behaviour test) first."""
    used = set()
    for path in (ROOT / "mlflow_ddsp").rglob("*.py"):
        for match in re.finditer(r"from (mlflow[\w.]*) import (_\w+)", path.read_text()):
            used.add(match.group(2))
    assert used <= {"_use_tracking_uri", "_save_example", "_PythonEnv"}, used


def test_connection_failures_are_recognised_by_type_not_by_message():
    """MLflow's REST client raises a plain MlflowException while handling requests' ConnectionError."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request

    from mlflow_ddsp.store.errors import _is_connection_error
    from mlflow_ddsp.testing.server import free_port

    creds = MlflowHostCreds(f"http://127.0.0.1:{free_port()}")
    try:
        http_request(creds, "/api/2.0/mlflow/experiments/search", "GET", max_retries=0, timeout=5)
    except MlflowException as exc:
        refused = exc
    else:
        raise AssertionError("a closed port answered")
    assert _is_connection_error(refused)
    assert not _is_connection_error(MlflowException("Max retries exceeded: Connection refused (a message only)"))


class _RaceOn:
    """Run ``act`` once, on a connection of its own, just before MLflow's SQL store sends the first
    statement starting with ``prefix``: another writer that got there between MLflow's read and its write."""

    def __init__(self, prefix: str, act):
        self.prefix, self.act, self.raced = prefix.upper(), act, False

    def __enter__(self):
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "before_cursor_execute", self._before)
        return self

    def __exit__(self, *exc):
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.remove(Engine, "before_cursor_execute", self._before)

    def _before(self, conn, cursor, statement, parameters, context, executemany):
        if not self.raced and statement.lstrip().upper().startswith(self.prefix):
            self.raced = True
            self.act()


def _sql(db, statement: str, *args) -> None:
    import sqlite3

    other = sqlite3.connect(db)
    try:
        with other:
            other.execute(statement, args)
    finally:
        other.close()


def test_unique_key_collision(embedded, model_name):
    """Two writers insert the same registered-model tag at once: MLflow's SQL store answers with a
    BAD_REQUEST whose only trace of the cause is SQLite's ``IntegrityError`` text."""
    from mlflow_ddsp.store.errors import _unique_key_collision
    from mlflow_ddsp.store.location import embedded_database

    store = RegistryStore(embedded.uri)
    store.ensure_registered_model(model_name, "")
    db = embedded_database(embedded.uri)
    insert = "INSERT INTO registered_model_tags (name, key, value) VALUES (?, ?, ?)"
    with _RaceOn("INSERT INTO registered_model_tags", lambda: _sql(db, insert, model_name, "k", "first")) as race:
        with pytest.raises(MlflowException) as caught:
            store.client.set_registered_model_tag(model_name, "k", "second")
    assert race.raced
    assert caught.value.error_code == "BAD_REQUEST"  # no code of its own: the text is all there is
    assert _unique_key_collision(caught.value)
    assert not _unique_key_collision(MlflowException("Registered Model with name=x not found"))
    with _RaceOn("INSERT INTO registered_model_tags", lambda: _sql(db, insert, model_name, "k2", "first")) as race:
        store.set_registered_model_tag(model_name, "k2", "second")  # the store retries: last writer wins
    assert race.raced and store.registered_model_tags(model_name)["k2"] == "second"


def test_lost_concurrent_rename(embedded, model_name):
    """A registered model deleted between MLflow's read and its update of the rename: SQLAlchemy's
    ``StaleDataError`` ("0 were matched"), passed on as a BAD_REQUEST with only its text."""
    from mlflow_ddsp.store.errors import _lost_concurrent_rename
    from mlflow_ddsp.store.location import embedded_database

    store = RegistryStore(embedded.uri)
    db = embedded_database(embedded.uri)
    delete = "DELETE FROM registered_models WHERE name = ?"
    store.ensure_registered_model(model_name, "")
    with _RaceOn("UPDATE registered_models", lambda: _sql(db, delete, model_name)) as race:
        with pytest.raises(MlflowException) as caught:
            store.client.rename_registered_model(model_name, f"{model_name}-renamed")
    assert race.raced
    assert caught.value.error_code not in ("RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS")
    assert _lost_concurrent_rename(caught.value)
    assert not _lost_concurrent_rename(MlflowException("Registered Model (name=x) already exists."))
    store.ensure_registered_model(model_name, "")
    with _RaceOn("UPDATE registered_models", lambda: _sql(db, delete, model_name)) as race:
        assert store.try_rename_registered_model(model_name, f"{model_name}-renamed") is False  # lost, not an error
    assert race.raced


def test_download_failed_on_connection(tmp_path, monkeypatch):
    """A download through the server's artifact proxy whose answer is cut mid-body: MLflow's download
    threads' failures come back as one new MlflowException, raised outside any handler, with only text."""
    import http.server
    import threading

    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from mlflow_ddsp.store.errors import _chain, _download_failed_on_connection, is_connection_error

    class CutAnswers(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if "?" in self.path:  # the listing: a file, not a folder
                body = b'{"files": []}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(200)  # the file: half its body, then the connection closes
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 500)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CutAnswers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}/api/2.0/mlflow-artifacts/artifacts/root"
        with pytest.raises(MlflowException) as caught:
            get_artifact_repository(uri).download_artifacts("model_10.pt", dst_path=str(tmp_path))
    finally:
        server.shutdown()
        server.server_close()
    assert caught.value.message.startswith("The following failures occurred while downloading")
    assert list(_chain(caught.value)) == [caught.value]  # nothing to decide by type
    assert _download_failed_on_connection(caught.value) and is_connection_error(caught.value)
    assert not _download_failed_on_connection(MlflowException(
        "The following failures occurred while downloading one or more artifacts: 404 Not Found"
    ))  # fmt: skip


# -- the scoring server's rewritten request errors: text only, one test per shape -------------
@pytest.fixture(scope="module")
def refusing_pyfunc(tmp_path_factory):
    """A real pyfunc model (one double column ``x``) whose predict refuses with ``boom-reason``."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    class Refusing(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            raise MlflowException("boom-reason")

    path = tmp_path_factory.mktemp("refusing") / "model"
    mlflow.pyfunc.save_model(path, python_model=Refusing(), signature=ModelSignature(Schema([ColSpec("double", "x")])))
    return mlflow.pyfunc.load_model(str(path))


def _invocations_message(model, body: dict) -> str:
    import json

    from mlflow.pyfunc import scoring_server

    with pytest.raises(MlflowException) as info:
        scoring_server.invocations(json.dumps(body), "application/json", model, model.metadata.get_input_schema())
    return info.value.message


def test_predict_echo(refusing_pyfunc):
    """MLflow rewrites an error raised in predict to "Failed to predict data '<payload>'. \\nError: <reason>"
    (serving/pyfunc.py ``_PREDICT_ECHO``); ``mlflow_request_reason`` gives back the reason alone."""
    from mlflow_ddsp.serving.pyfunc import _PREDICT_ECHO, mlflow_request_reason

    message = _invocations_message(refusing_pyfunc, {"dataframe_records": [{"x": 1.0}]})
    assert _PREDICT_ECHO.match(message), message
    assert mlflow_request_reason(message) == "boom-reason"


def test_schema_echo(refusing_pyfunc):
    """A request that does not fit the signature: "... Error: Failed to enforce schema of data '<data>' with
    schema '<schema>'. Error: <reason>" (``_SCHEMA_ECHO``), answered as one line naming the schema."""
    from mlflow_ddsp.serving.pyfunc import _PREDICT_ECHO, _SCHEMA_ECHO, mlflow_request_reason

    message = _invocations_message(refusing_pyfunc, {"dataframe_records": [{"y": 1.0}]})
    assert _SCHEMA_ECHO.match(_PREDICT_ECHO.sub("", message, count=1)), message
    assert mlflow_request_reason(message) == (
        "the request does not fit the model's input schema: Model is missing inputs ['x']. "
        "Note that there were extra inputs: ['y']."
    )
