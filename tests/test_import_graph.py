"""The house drawn from the imports: every arrow points down, none back up, no cycle.

Each part of the package (a subpackage such as ``checkpoint``, or a top-level module
such as ``config``) sits on one floor of :data:`FLOORS`; a part may import only parts
on lower floors. Imports inside functions count as arrows too, and a package-internal
one is refused outright: it is how an arrow back up hides (issue 22). Optional
third-party extras may still be imported lazily.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mlflow_ddsp"

# Top floor first. A part may import any part on a floor below its own.
FLOORS: list[set[str]] = [
    {"testing"},  # the harness of tests and bench: it may use anything
    {"__main__"},
    {"cli"},
    {"demo"},
    {"training", "transfer", "compare", "dependency_files"},
    {"serving", "preprocess"},
    {"inference", "lineage", "weights"},
    {"config"},  # a DDSP-SVC config: names models, features and the retention policy
    {"models", "vocoder", "loss", "demo_data"},  # the networks; the checkpoint queue never builds one
    {"checkpoint"},  # the queue: bytes, versions and rules, whatever the model
    {"store"},  # the one MLflow edge
    {"features", "dsp", "corpus", "crops", "optimizer"},
    {"audio", "plots", "subnormals", "state_dict", "destinations", "progress", "device"},
    {"names", "processes", "wrappers", "pyfunc_layout", "tags"},
    {"errors"},
]

# `mlflow-ddsp --help` must not import torch or mlflow (issue 23: under 0.5 s of CPU), so the
# command modules import what a command needs when it runs; so does the package's PEP 562 door.
LAZY_BY_DESIGN = {"cli", "mlflow_ddsp", "__main__"}


def _module_name(path: Path) -> str:
    parts = ("mlflow_ddsp",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function, line) for each package-internal import of ``path``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}  # no runtime arrow
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names] if not node.module or node.level else [target]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == "mlflow_ddsp" or name.startswith("mlflow_ddsp."):
                found.append((name, id(node) in local, node.lineno))
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mlflow_ddsp"


def _floor(part: str) -> int | None:
    return next((i for i, floor in enumerate(FLOORS) if part in floor), None)


MODULES = sorted(PACKAGE.rglob("*.py"))
KNOWN = {_module_name(p) for p in MODULES}


def test_every_part_has_a_floor():
    parts = {_part(_module_name(p)) for p in MODULES} - {"mlflow_ddsp"}
    assert not {p for p in parts if _floor(p) is None}, "add new parts to FLOORS"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_arrows_point_down(path):
    here = _part(_module_name(path))
    upward, local = [], []
    for target, in_function, line in _imports(path):
        if target not in KNOWN:
            continue  # a name imported from a module, counted through the module itself
        if in_function and here not in LAZY_BY_DESIGN:
            local.append(f"line {line}: {target}")
        there = _part(target)
        if here in ("mlflow_ddsp", there) or there == "mlflow_ddsp":
            continue
        if _floor(there) <= _floor(here):
            upward.append(f"line {line}: {here} -> {there}")
    assert not local and not upward, f"package imports inside functions: {local}; arrows that do not point down: {upward}"


def _module_edges() -> dict[str, set[str]]:
    """Module -> the package modules it imports at its top level (a ``from pkg import sub`` names
    the submodule, not the package; everything else lives at the top level, as checked above)."""
    edges: dict[str, set[str]] = {}
    for path in MODULES:
        targets = set()
        for name, in_function, _ in _imports(path):
            if in_function:
                continue
            if name in KNOWN:
                targets.add(name)
        # `from pkg import sub`: keep pkg only when no submodule of it was named
        edges[_module_name(path)] = {t for t in targets if not any(o.startswith(t + ".") for o in targets)}
    return edges


def test_no_import_cycle_between_modules():
    edges = _module_edges()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target] if target in path else [module, target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles[:5]}"
