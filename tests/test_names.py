"""Every name the queue uses or derives, against MLflow's own rules in a real store.

A name our validation accepts must be accepted by MLflow for everything it is
used for (the registered model, its writer lease, the LoggedModel names derived
from it); a name refused for an MLflow rule must really be refused by MLflow.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.checkpoint import RegistryStore
from mlflow_ddsp.checkpoint.lease import lease_model_name
from mlflow_ddsp.checkpoint.names import logged_model_name, validate_experiment_name, validate_model_name
from mlflow_ddsp.cli import main
from mlflow_ddsp.config import load_config
from mlflow_ddsp.errors import ConfigError

from registry_checks import versions_by_step

ACCEPTED = ["voice", "my.voice", "my voice", "v1.2-final_3", "50%-wet", "ünïcödé", "a" * 200]
# Refused because MLflow refuses them (registered model or LoggedModel rules) ...
REFUSED_BY_MLFLOW = ["a/b", "a:b", "..", "."]
# ... or because they would break models:/ URIs and search filters, or exceed the database column.
REFUSED_BY_US = ["voice.writer-lease", "x.writer-lease.retired-0a1b", "a@b", "it's", 'q"', "back`tick", "back\\slash", " voice", "", "a" * 201, "tab\tname"]


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_names_work_for_everything_mlflow_does_with_them(embedded, name):
    assert validate_model_name(name) == name
    client = MlflowClient(embedded.uri, embedded.uri)
    client.create_registered_model(name)
    client.create_registered_model(lease_model_name(name) + ".retired-0123456789abcdef")  # the longest we derive
    experiment = client.create_experiment("names")
    client.create_logged_model(experiment, name=logged_model_name(name, 123456789))


@pytest.mark.parametrize("name", REFUSED_BY_MLFLOW)
def test_names_refused_for_mlflow_rules_are_refused_by_mlflow(embedded, name):
    with pytest.raises(ConfigError, match=r"registered_model="):
        validate_model_name(name)
    client = MlflowClient(embedded.uri, embedded.uri)
    with pytest.raises(MlflowException):
        client.create_registered_model(name)


@pytest.mark.parametrize("name", REFUSED_BY_US)
def test_names_that_break_uris_or_columns_are_refused_in_one_line(name):
    with pytest.raises(ConfigError, match=r"registered_model=") as info:
        validate_model_name(name)
    assert "\n" not in str(info.value)


def test_logged_model_names_never_carry_what_mlflow_refuses_there():
    assert logged_model_name("my.voice", 10) == "my-voice-step-10"
    assert logged_model_name("50%-wet", 0) == "50--wet-step-0"


@pytest.mark.parametrize("name", ["", "   ", "x" * 501, None])
def test_bad_experiment_names(name):
    with pytest.raises(ConfigError, match=r"experiment="):
        validate_experiment_name(name)


def test_a_dotted_registered_model_trains_and_saves(backend, model_name):
    """`mlflow.registered_model: my.voice` used to pass validation and fail at every save."""
    dotted = "my.voice." + model_name
    with CheckpointQueue(dotted, 10, None, tracking_uri=backend.uri, experiment=backend.experiment) as queue:
        version = queue.save(10, torch.nn.Linear(2, 2)).result()
    assert version.name == dotted
    assert versions_by_step(RegistryStore(backend.uri), dotted) == {10: "rolling"}


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("mlflow", "registered_model", "a/b", r"mlflow.registered_model: registered_model='a/b' contains '/'"),
        ("mlflow", "experiment", "", r"mlflow.experiment='' must be a non-empty name"),
        ("mlflow", "alias", "best", r"mlflow.alias='best' is the alias of the best checkpoint"),
        ("train", "keep_last", 0, r"train.keep_last=0 must be an integer >= 1"),
        ("train", "best_mode", "lowest", r"train.best_mode='lowest' must be one of min, max"),
    ],
)
def test_config_names_and_retention_options_fail_at_load(tmp_path, section, key, value, message):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({section: {key: value}}))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_import_with_a_refused_name_leaves_nothing_behind(backend, tmp_path):
    expdir = tmp_path / "exp"
    expdir.mkdir()
    result = CliRunner().invoke(main, ["--tracking-uri", backend.uri, "import", str(expdir), "--name", "a/b"])
    assert result.exit_code == 1 and result.output.startswith("error: registered_model='a/b'")
    assert result.output.count("\n") == 1
    assert MlflowClient(backend.uri, backend.uri).search_registered_models("name = 'a/b'") == []
