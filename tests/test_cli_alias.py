"""`mlflow-ddsp alias NAME VERSION ALIAS` / `alias NAME --delete ALIAS` (issue 23 point 2).

A person's alias protects its version (``checkpoint/retention.py`` ``protection``);
the queue's own aliases (the rolling one, ``best``, those recorded in
``mlflow_ddsp.own_aliases``) are refused in one line, as ``gc --alias`` refuses
them. Against the embedded store and a real ``mlflow server`` (``backend``), the
installed console script, and a basic-auth server for the refusals (403).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.cli import main

from registry_checks import versions_by_step
from test_auth import auth_server, team  # noqa: F401  (fixtures: the basic-auth server and its users)

CLI = Path(sys.executable).with_name("mlflow-ddsp")


def cli(uri: str, *args: str):
    return CliRunner().invoke(main, ["--tracking-uri", uri, *args], catch_exceptions=False)


def open_queue(backend, name: str, **kwargs) -> CheckpointQueue:
    return CheckpointQueue(name, 10, None, tracking_uri=backend.uri, experiment=backend.experiment, **kwargs)


def one_line_error(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    return result.output


def kept_column(uri: str, name: str) -> dict[str, tuple[str, str]]:
    """step -> (ALIASES, KEPT) from the `versions` table."""
    result = cli(uri, "versions", name)
    assert result.exit_code == 0, result.output
    return {r.split()[1]: (r.split()[3], r.split()[-1]) for r in result.stdout.splitlines()[1:]}


def test_an_alias_of_yours_protects_the_version_until_you_delete_it(backend, model_name):
    model = torch.nn.Linear(4, 4)
    with open_queue(backend, model_name) as queue:
        first = queue.save(10, model).result()
        result = cli(backend.uri, "alias", model_name, str(first.version), "champion")
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"{model_name}@champion -> v{first.version}: protected")
        assert f"models:/{model_name}@champion" in result.output
        queue.save(20, model).result()
        queue.save(30, model).result()
        store = queue.store
        # The rolling alias moved on; the promoted version stays, shown as kept by your alias.
        assert versions_by_step(store, model_name) == {10: "rolling", 30: "rolling"}
        assert store.alias_version(model_name, "champion") == first.version
        assert kept_column(backend.uri, model_name)["10"] == ("champion", "alias:champion")

        # Setting it again changes nothing; the removal says the version is now unprotected.
        again = cli(backend.uri, "alias", model_name, str(first.version), "champion")
        assert again.exit_code == 0 and "already points at" in again.output
        removed = cli(backend.uri, "alias", model_name, "--delete", "champion")
        assert removed.exit_code == 0, removed.output
        assert removed.output.strip() == (
            f"removed {model_name}@champion (was v{first.version}); v{first.version} is now kept by no rule: "
            f"the next save or `mlflow-ddsp gc {model_name}` deletes it"
        )
        assert store.alias_version(model_name, "champion") is None
        queue.save(40, model).result()
    assert versions_by_step(store, model_name) == {40: "rolling"}


def test_moving_an_alias_says_what_keeps_the_version_it_left(backend, model_name):
    model = torch.nn.Linear(4, 4)
    with CheckpointQueue(model_name, 10, 20, tracking_uri=backend.uri, experiment=backend.experiment) as queue:
        for step in (10, 20, 30):
            queue.save(step, model).result()
    store = RegistryStore(backend.uri)
    by_step = {v.step: v.version for v in store.list_versions(model_name)}
    assert cli(backend.uri, "alias", model_name, str(by_step[20]), "stage").exit_code == 0
    moved = cli(backend.uri, "alias", model_name, str(by_step[30]), "stage")
    assert moved.exit_code == 0, moved.output
    assert moved.output.splitlines()[-1] == f"moved from v{by_step[20]}; v{by_step[20]} stays, kept as force_saved"
    assert store.alias_version(model_name, "stage") == by_step[30]


def test_the_queues_own_aliases_are_refused_in_one_line(backend, model_name):
    model = torch.nn.Linear(4, 4)
    with open_queue(backend, model_name, best_metric="validation/loss") as queue:
        queue.save(10, model, metrics={"validation/loss": 0.5}).result()
        queue.save(20, model, metrics={"validation/loss": 0.7}).result()
    store = RegistryStore(backend.uri)
    before = store.registered_model(model_name)[1]
    assert before == {"rolling": 2, "best": 1}
    for args in (["1", "rolling"], ["1", "best"], ["--delete", "rolling"], ["--delete", "best"]):
        line = one_line_error(cli(backend.uri, "alias", model_name, *args))
        alias = args[1]
        assert f"alias {alias!r} is the checkpoint queue's own on {model_name!r}" in line, line
        assert "best, rolling" in line and "e.g. champion" in line
    assert store.registered_model(model_name)[1] == before  # nothing changed


def test_a_recorded_rolling_alias_is_the_queues_own(embedded, model_name):
    """A queue whose rolling alias is `head` (mlflow.alias): `head` is refused, as `gc --alias` would."""
    with open_queue(embedded, model_name, alias="head") as queue:
        queue.save(10, torch.nn.Linear(4, 4)).result()
    line = one_line_error(cli(embedded.uri, "alias", model_name, "1", "head"))
    assert f"alias 'head' is the checkpoint queue's own on {model_name!r} (it maintains best, head itself)" in line
    assert "alias=" in one_line_error(cli(embedded.uri, "gc", model_name, "--alias", "other"))  # the same rule


def test_missing_model_version_and_alias_are_one_line(backend, model_name):
    with open_queue(backend, model_name) as queue:
        queue.save(10, torch.nn.Linear(4, 4)).result()
    line = one_line_error(cli(backend.uri, "alias", "no-such-model", "1", "champion"))
    assert line.strip() == f"error: registered model 'no-such-model' does not exist at {backend.uri}"
    line = one_line_error(cli(backend.uri, "alias", model_name, "7", "champion"))
    assert f"{model_name!r} has no version 7 (its versions: 1;" in line
    line = one_line_error(cli(backend.uri, "alias", model_name, "--delete", "champion"))
    assert f"{model_name!r} has no alias 'champion' (aliases of yours on it: none)" in line
    assert RegistryStore(backend.uri).registered_model(model_name)[1] == {"rolling": 1}


def test_bad_arguments_are_one_line_usage_errors(embedded, model_name):
    for args, needle in (
        ([model_name], "missing VERSION and ALIAS"),
        ([model_name, "1"], "missing ALIAS"),
        ([model_name, "1", "champion", "--delete", "champion"], "not both"),
        ([model_name, "champion"], "is not a valid integer"),
    ):
        line = one_line_error(cli(embedded.uri, "alias", *args), code=2)
        assert needle in line and "mlflow-ddsp alias --help" in line, line
    for bad in ("latest", "v3", "has space"):
        line = one_line_error(cli(embedded.uri, "alias", model_name, "1", bad))
        assert f"alias={bad!r}" in line and "e.g. 'champion'" in line, line


def test_the_console_script_sets_and_removes_an_alias(backend, model_name):
    with open_queue(backend, model_name) as queue:
        queue.save(10, torch.nn.Linear(4, 4)).result()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(CLI), "--tracking-uri", backend.uri, "alias", model_name, *args],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    done = run("1", "champion")
    assert done.returncode == 0 and done.stdout.startswith(f"{model_name}@champion -> v1: protected"), done.stderr
    assert RegistryStore(backend.uri).alias_version(model_name, "champion") == 1
    refused = run("1", "rolling")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "queue's own" in refused.stderr
    done = run("--delete", "champion")
    assert done.returncode == 0
    assert done.stdout.startswith(f"removed {model_name}@champion (was v1); v1 stays, kept as newest"), done.stdout
    assert RegistryStore(backend.uri).alias_version(model_name, "champion") is None


@pytest.mark.server
def test_a_user_without_the_permission_gets_one_line_naming_it(team, auth_server, model_name, monkeypatch):  # noqa: F811
    writer, reader = team  # the writer saved steps 10, 20 (v2, force-saved), 30 (v3)
    auth_server.login(monkeypatch, reader)
    line = one_line_error(cli(auth_server.uri, "alias", model_name, "2", "champion"))
    assert f"user '{reader}' lacks the EDIT permission on registered model '{model_name}' (HTTP 403)" in line

    auth_server.login(monkeypatch, writer)
    assert cli(auth_server.uri, "alias", model_name, "2", "champion").exit_code == 0
    auth_server.login(monkeypatch, reader)
    line = one_line_error(cli(auth_server.uri, "alias", model_name, "--delete", "champion"))
    assert f"user '{reader}' lacks the MANAGE permission on registered model '{model_name}' (HTTP 403)" in line
    assert RegistryStore(auth_server.uri).alias_version(model_name, "champion") == 2  # still there

    auth_server.login(monkeypatch, writer)
    assert cli(auth_server.uri, "alias", model_name, "--delete", "champion").exit_code == 0
    assert RegistryStore(auth_server.uri).alias_version(model_name, "champion") is None
