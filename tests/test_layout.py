"""The layout the architecture promises, checked on the source.

- One MLflow edge: ``MlflowClient`` is created and used only in
  ``checkpoint/registry.py`` and ``tracking.py``; every other module goes through
  ``RegistryStore``, whose ``_calling`` turns MLflow's errors into ours.
- The training loop never imports MLflow (it talks to a Checkpointer and a Tracker).
- Tag keys live in ``tags.py``: no ``"mlflow_ddsp.<key>"`` literal elsewhere.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mlflow_ddsp"
EDGE = {"checkpoint/registry.py", "tracking.py"}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


@pytest.mark.parametrize("path", [p for p in modules() if rel(p) not in EDGE], ids=rel)
def test_no_raw_mlflow_client_outside_the_edge(path):
    source = path.read_text()
    assert "MlflowClient" not in source
    assert not re.search(r"\.client\.", source), "use the RegistryStore's methods, not its client"


def test_the_training_loop_never_imports_mlflow():
    tree = ast.parse((PACKAGE / "training" / "loop.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.split(".")[0] == "mlflow" for name in imported), imported


@pytest.mark.parametrize("path", [p for p in modules() if rel(p) != "tags.py"], ids=rel)
def test_tag_keys_are_named_in_tags_py(path):
    literals = re.findall(r"""["'](mlflow_ddsp\.[a-z_]+(?:\.[a-z_]+)*)["']""", path.read_text())
    modules_named = {"mlflow_ddsp." + p.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".") for p in modules()}
    packages = {m.rsplit(".", 1)[0] for m in modules_named} | {"mlflow_ddsp"}
    tags = [x for x in literals if x not in modules_named | packages and not x.startswith("mlflow_ddsp.serving.pyfunc")]
    assert not tags, f"tag keys outside tags.py: {tags}"
