"""Start-up cost of the command line (issue 23 point 10): `--help` loads neither torch nor MLflow.

Timed assertions depend on the machine's load, so these tests assert the cause
instead: Python's own import trace (``-X importtime`` / ``PYTHONPROFILEIMPORTTIME``)
of ``mlflow-ddsp [COMMAND] --help`` names no heavy package. The CPU figure is
``bench/cli_startup.py`` (0.07 s against 1.4 s before on the 2-core host).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlflow_ddsp.cli import main

CLI = Path(sys.executable).with_name("mlflow-ddsp")
# Each costs 0.1-1.5 s of CPU to import; a command imports them inside its function.
HEAVY = ("torch", "mlflow", "numpy", "scipy", "pandas", "librosa", "torchaudio", "matplotlib", "sqlalchemy")


def imported_modules(command: list[str], **env: str) -> set[str]:
    """Every module ``command`` imported, from Python's import trace on stderr; asserts it succeeded."""
    environ = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", **env}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environ)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip(), "printed nothing"
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the header line
                modules.add(name)
    assert "mlflow_ddsp" in modules, "no import trace: was PYTHONPROFILEIMPORTTIME ignored?"
    return modules


def heavy_among(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in HEAVY}


@pytest.mark.parametrize("how", ["console-script", "python-m"])
def test_top_level_help_imports_no_heavy_package(how):
    python_m = [sys.executable, "-X", "importtime", "-m", "mlflow_ddsp", "--help"]
    command = [str(CLI), "--help"] if how == "console-script" else python_m
    assert heavy_among(imported_modules(command)) == set()


def test_every_command_help_imports_no_heavy_package():
    """Each command's own --help too: a command module importing torch at its top fails this."""
    commands = sorted(main.commands)
    assert {"train", "versions", "alias", "infer", "serve"} <= set(commands)
    for name in commands:
        heavy = heavy_among(imported_modules([sys.executable, "-m", "mlflow_ddsp", name, "--help"]))
        assert heavy == set(), f"`mlflow-ddsp {name} --help` imports {sorted(heavy)}"


def test_the_package_imports_light_and_its_public_names_still_work():
    """`import mlflow_ddsp` is light; `from mlflow_ddsp import CheckpointQueue` and `__all__` still work."""
    code = (
        "import sys, mlflow_ddsp\n"
        "assert 'torch' not in sys.modules and 'mlflow' not in sys.modules, 'import mlflow_ddsp was heavy'\n"
        "from mlflow_ddsp import CheckpointQueue, CheckpointReader, RetentionPolicy, ConfigError\n"
        "from mlflow_ddsp.checkpoint import CheckpointQueue as Q\n"
        "assert CheckpointQueue is Q and 'torch' in sys.modules\n"
        "missing = [n for n in mlflow_ddsp.__all__ if not hasattr(mlflow_ddsp, n)]\n"
        "assert not missing, missing\n"
        "assert set(mlflow_ddsp.__all__) <= set(dir(mlflow_ddsp))\n"
        "try:\n"
        "    mlflow_ddsp.no_such_name\n"
        "except AttributeError as exc:\n"
        "    assert 'no_such_name' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_star_import_gives_every_public_name():
    namespace: dict = {}
    exec("from mlflow_ddsp import *", namespace)
    import mlflow_ddsp

    assert set(mlflow_ddsp.__all__) <= set(namespace)
    assert namespace["CheckpointQueue"].__name__ == "CheckpointQueue"
