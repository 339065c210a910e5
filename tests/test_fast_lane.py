"""The fast lane (``pytest -m "not slow and not server and not stack"``) starts no server.

``tests/conftest.py``'s autouse guard refuses, in a test without those markers,
any subprocess that would start ``mlflow server``, ``mlflow models serve`` or
``mlflow-ddsp serve``; these tests pin what it matches and that it lets the rest through.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import _ServerStartRefused, starts_a_server

SERVERS = [
    [sys.executable, "-m", "mlflow", "server", "--port", "1"],
    "exec mlflow server --backend-store-uri sqlite:///x.db --port 5001",
    [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/a/1"],
    "mlflow ui",
    [sys.executable, "-m", "mlflow_ddsp", "serve", "-m", "models:/a/1"],
    "mlflow-ddsp serve -m models:/demo-voice@rolling --port 5002",
]
NOT_SERVERS = [
    [sys.executable, "-m", "mlflow_ddsp", "versions", "voice"],
    "mlflow-ddsp train --config c.yaml",
    [sys.executable, "-c", "print('mlflow_ddsp.serving')"],
    "git status --porcelain",
    [sys.executable, "-m", "mlflow_ddsp", "serve", "--help"],  # tests/test_cli_startup.py: help starts nothing
]


@pytest.mark.parametrize("command", SERVERS, ids=str)
def test_an_unmarked_test_may_not_start_a_server(command):
    assert starts_a_server(command if isinstance(command, str) else " ".join(command))
    with pytest.raises(_ServerStartRefused, match="not marked server/slow/stack"):
        subprocess.Popen(command, shell=isinstance(command, str))


@pytest.mark.parametrize("command", NOT_SERVERS, ids=str)
def test_other_commands_are_not_taken_for_servers(command):
    assert not starts_a_server(command if isinstance(command, str) else " ".join(command))


def test_the_guard_lets_ordinary_subprocesses_run():
    done = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "42"


@pytest.mark.server
def test_a_server_marked_test_is_not_guarded():
    assert subprocess.Popen.__module__ == "subprocess" and subprocess.Popen.__name__ == "Popen"
