"""Parts a newcomer can hold (issue 22's acceptance), checked on the source.

In ``checkpoint/`` (the queue) and ``store/`` (the MLflow edge): no module and no class
over :data:`MAX_MODULE_LINES` lines, no function or method over :data:`MAX_FUNCTION_LINES`
lines (decorators and docstrings included).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mlflow_ddsp"
PARTS = ("checkpoint", "store")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

MODULES = sorted(p for part in PARTS for p in (PACKAGE / part).rglob("*.py"))


def _span(node: ast.AST) -> int:
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return node.end_lineno - first + 1


def _too_long(source: str) -> list[str]:
    found = []
    if len(source.splitlines()) > MAX_MODULE_LINES:
        found.append(f"the module: {len(source.splitlines())} lines > {MAX_MODULE_LINES}")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and _span(node) > MAX_MODULE_LINES:
            found.append(f"class {node.name} (line {node.lineno}): {_span(node)} lines > {MAX_MODULE_LINES}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _span(node) > MAX_FUNCTION_LINES:
            found.append(f"{node.name} (line {node.lineno}): {_span(node)} lines > {MAX_FUNCTION_LINES}")
    return found


def test_the_parts_exist():
    assert len(MODULES) > 10, MODULES


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_module_class_or_function_is_too_long(path):
    assert not _too_long(path.read_text()), _too_long(path.read_text())


def test_the_size_check_sees_every_kind():
    long_function = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    long_method = "class C:\n    @staticmethod\n    def m():\n" + "        x = 1\n" * (MAX_FUNCTION_LINES - 1)
    long_class = "class C:\n" + "    x = 1\n" * MAX_MODULE_LINES
    assert [f.split(" ")[0] for f in _too_long(long_function)] == ["f"]
    assert [f.split(" ")[0] for f in _too_long(long_method)] == ["m"]
    assert [f.split(":")[0] for f in _too_long(long_class)] == ["the module", "class C (line 1)"]
    assert not _too_long("def f():\n" + "    x = 1\n" * (MAX_FUNCTION_LINES - 1))
