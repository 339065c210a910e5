"""The private MLflow APIs mlflow-ddsp relies on, pinned by behaviour.

mlflow-ddsp uses three names MLflow does not publish; each is here with the
behaviour we need, so an MLflow upgrade that changes one fails here, by name,
instead of somewhere in a save. pyproject pins ``mlflow>=3.4,<4``.

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
"""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import torch

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.checkpoint import RegistryStore

ROOT = Path(__file__).resolve().parents[1]


def test_installed_mlflow_is_inside_the_pinned_range():
    pin = re.search(r'"mlflow>=([\d.]+),<(\d+)"', (ROOT / "pyproject.toml").read_text())
    assert pin, "pyproject.toml must pin mlflow to a range"
    low, high = tuple(int(x) for x in pin.group(1).split(".")), int(pin.group(2))
    installed = tuple(int(x) for x in re.findall(r"\d+", mlflow.__version__)[:3])
    assert low <= installed[: len(low)] and installed[0] < high, mlflow.__version__


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

    from mlflow_ddsp.checkpoint.registry import _is_connection_error
    from mlflow_ddsp.local_server import free_port

    creds = MlflowHostCreds(f"http://127.0.0.1:{free_port()}")
    try:
        http_request(creds, "/api/2.0/mlflow/experiments/search", "GET", max_retries=0, timeout=5)
    except MlflowException as exc:
        refused = exc
    else:
        raise AssertionError("a closed port answered")
    assert _is_connection_error(refused)
    assert not _is_connection_error(MlflowException("Max retries exceeded: Connection refused (a message only)"))
