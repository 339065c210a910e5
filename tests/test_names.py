"""Every name the queue uses or derives, against MLflow's own rules in a real store.

A name our validation accepts must be accepted by MLflow for everything it is
used for (the registered model, its writer lease, the LoggedModel names derived
from it); a name refused for an MLflow rule must really be refused by MLflow.
"""

from __future__ import annotations

import errno
import os
import uuid
from urllib.parse import quote

import pytest
import torch
import yaml
from click.testing import CliRunner

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.checkpoint.lease import lease_model_name
from mlflow_ddsp.names import (
    logged_model_name,
    serving_folder_name,
    spool_folder_name,
    validate_experiment_name,
    validate_model_name,
)
from mlflow_ddsp.cli import main
from mlflow_ddsp.config import load_config
from mlflow_ddsp.errors import ConfigError

from conftest import tiny_config
from registry_checks import versions_by_step

CJK = "声"  # 3 bytes of UTF-8, 9 percent-encoded: DDSP-SVC's users name voices in Chinese

ACCEPTED = ["voice", "my.voice", "my voice", "v1.2-final_3", "50%-wet", "ünïcödé", "a" * 200, CJK * 20, CJK * 28,
            "é" * 42]
# Refused because MLflow refuses them (registered model or LoggedModel rules) ...
REFUSED_BY_MLFLOW = ["a/b", "a:b", "..", "."]
# ... or because they would break models:/ URIs and search filters, or exceed the database column.
REFUSED_BY_US = ["voice.writer-lease", "x.writer-lease.retired-0a1b", "voice.writer-lease-0a1b2c3d", "a@b", "it's", 'q"', "back`tick", "back\\slash", " voice", "", "a" * 201, "tab\tname",
                 CJK * 29, CJK * 30, "é" * 43, "é" * 200, "a b" * 65]


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_names_work_for_everything_mlflow_does_with_them(embedded, name, tmp_path):
    assert validate_model_name(name) == name
    client = MlflowClient(embedded.uri, embedded.uri)
    client.create_registered_model(name)
    client.create_registered_model(lease_model_name(name))
    client.create_registered_model(f"{name}.writer-lease-0a1b2c3d.retired-0123456789abcdef")  # the longest we derive
    experiment = client.create_experiment("names")
    client.create_logged_model(experiment, name=logged_model_name(name, 123456789))
    # the longest: the longest step, kind, metric name and value
    client.create_logged_model(experiment, name=logged_model_name(name, 2**63 - 1, "force_saved", "m" * 16, -1.234e-308))
    client.create_run(experiment, run_name=f"compare-{name}")  # runs.name is VARCHAR(250)
    # The folders named from it, on this file system: the spool's, and the longest serving folder.
    (tmp_path / spool_folder_name(name)).mkdir()
    (tmp_path / serving_folder_name(name, 2**31 - 1, 4194304)).mkdir()


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
    assert logged_model_name("my.voice", 10) == "step-10-rolling-my-voice"
    assert logged_model_name("50%-wet", 0) == "step-0-rolling-50--wet"
    assert logged_model_name("my.voice", 300, "force_saved", "validation/loss", 1.49126) == "step-300-force-loss-1,491-my-voice"
    assert logged_model_name("v", 10, "rolling", "validation/loss", float("nan")) == "step-10-rolling-v"
    assert logged_model_name("v", 10, "rolling", "a/b:c.d", 2.5e-7) == "step-10-rolling-b-c-d-2,5e-07-v"


def test_the_models_tab_shows_step_kind_and_loss_first(backend, model_name):
    """The experiment's Models tab shows ~29 characters of a LoggedModel's name and nothing else of
    ours at 1600 px (issue 23, point 9): the name starts with step, kind and validation loss."""
    queue = CheckpointQueue(model_name, 10, 20, tracking_uri=backend.uri, experiment=backend.experiment)
    with queue:
        queue.save(10, torch.nn.Linear(2, 2), metrics={"validation/loss": 1.49126}).result()
        queue.save(20, torch.nn.Linear(2, 2), metrics={"validation/loss": 0.25}).result()
        queue.save(25, torch.nn.Linear(2, 2)).result()  # a save with no validation (Ctrl-C between two)
    client = MlflowClient(backend.uri, backend.uri)
    names = {v.step: client.get_logged_model(v.model_id).name
             for v in RegistryStore(backend.uri).list_versions(model_name)}  # fmt: skip
    # step 10 was retired (rolling, superseded); the force-save and the newest stay
    assert names == {20: f"step-20-force-loss-0,25-{model_name}", 25: f"step-25-rolling-{model_name}"}


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


@pytest.mark.parametrize("name, encoded", [(CJK * 30, 270), ("é" * 200, 1200), (CJK * 29, 261)])
def test_a_name_too_long_for_its_spool_folder_names_its_bytes_and_the_limit(name, encoded, tmp_path):
    """Issue 20, point 11: 30 CJK characters passed, then the spool folder could not be made."""
    assert len(quote(name, safe="")) == encoded  # what the spool names its folder
    with pytest.raises(OSError) as too_long:  # the file system's own limit, not ours
        (tmp_path / quote(name, safe="")).mkdir()
    assert too_long.value.errno == errno.ENAMETOOLONG
    with pytest.raises(ConfigError) as info:
        validate_model_name(name)
    text = str(info.value)
    assert f"{encoded} bytes" in text and "at most 255" in text and "\n" not in text, text
    assert os.environ.get("MLFLOW_DDSP_SPOOL_DIR") is None and "MLFLOW_DDSP_SPOOL_DIR" not in text


def test_the_longest_accepted_names_of_each_script_fit_every_derived_form(tmp_path):
    """At the boundary: the longest accepted name of 1-, 2-, 3- and 4-byte characters fits, one more does not."""
    for char in ("a", "é", CJK, "🎤"):
        n = 1
        while True:
            try:
                validate_model_name(char * (n + 1))
            except ConfigError:
                break
            n += 1
        longest = char * n
        (tmp_path / spool_folder_name(longest)).mkdir()
        (tmp_path / serving_folder_name(longest, 2**31 - 1, 4194304)).mkdir()
        assert len(spool_folder_name(char * (n + 1)).encode()) > 255 or n + 1 > 200


def _train_cli(backend, demo_data, tmp_path, name: str):
    path = tiny_config(demo_data, tmp_path / "config.yaml", "cjk", max_steps=4)
    doc = yaml.safe_load(path.read_text())
    doc["mlflow"].update(registered_model=name, experiment=backend.experiment)
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return CliRunner().invoke(main, ["--tracking-uri", backend.uri, "train", "-c", str(path)])


def test_train_with_a_name_too_long_for_its_spool_is_refused_before_any_work(backend, demo_data, tmp_path):
    """One line, exit 1, and nothing left: no registered model (nor lease), no run, no experiment."""
    name = CJK * 30
    result = _train_cli(backend, demo_data, tmp_path, name)
    assert result.exit_code == 1, result.output
    text = result.output.strip()
    assert text.startswith("error: mlflow.registered_model: ") and "\n" not in text, result.output
    assert "270 bytes" in text and "at most 255" in text, text
    client = MlflowClient(backend.uri, backend.uri)
    assert [m.name for m in client.search_registered_models() if m.name.startswith(name)] == []  # nor its lease
    assert client.get_experiment_by_name(backend.experiment) is None  # no run could exist


@pytest.mark.slow
def test_a_name_of_20_cjk_characters_trains_through_the_spool(backend, demo_data, tmp_path):
    name = CJK * 14 + uuid.uuid4().hex[:6]  # 20 characters (174 bytes percent-encoded); unique on a shared server
    result = _train_cli(backend, demo_data, tmp_path, name)
    assert result.exit_code == 0, result.output
    assert versions_by_step(RegistryStore(backend.uri), name) == {4: "rolling"}
    from mlflow_ddsp.checkpoint.spool import Spool

    spool = Spool(backend.uri, name, create=False)
    assert spool.folder.name == spool_folder_name(name) and spool.folder.is_dir()  # every save went through it
    assert not any(p.name.startswith("step-") for p in spool.folder.iterdir())  # and was committed
    listed = CliRunner().invoke(main, ["--tracking-uri", backend.uri, "versions", name])
    assert listed.exit_code == 0 and "rolling" in listed.output, listed.output
