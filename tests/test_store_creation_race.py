"""Issue 20, point 9: commands started at once in a folder without ``mlflow.db`` race creating it.

Several real processes wait on one barrier (a file whose exclusive lock the test holds; each
child blocks on a shared lock of it after its slow imports), are released together, and open
the embedded store of one fresh folder: every one of them must succeed, all must see one
store (one experiment, every process's registered model, the pinned artifact root), and no
temporary file is left beside it. Before the fix, two concurrent MLflow migrations of one
database file ended one process with ``duplicate column name: step`` (a 60-line SQLAlchemy
traceback).
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlflow_ddsp.store import RegistryStore

pytestmark = pytest.mark.slow

PROCESSES = 3

CHILD = textwrap.dedent('''
    import fcntl, json, sys
    from mlflow_ddsp.store import RegistryStore
    import mlflow.store.tracking.sqlalchemy_store, mlflow.store.model_registry.sqlalchemy_store  # slow imports first
    barrier, name = sys.argv[1:3]
    print("ready", flush=True)
    with open(barrier, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_SH)  # released by the test, for every child at once
    store = RegistryStore()  # the embedded default: ./mlflow.db
    experiment = store.experiment_id("race")
    store.ensure_registered_model(name, "created in a race")
    print(json.dumps({"experiment": experiment}), flush=True)
''')


def _run_together(folder: Path, script: Path, barrier: Path, args: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Start one child per argument list, release them at once through the barrier, collect them."""
    with open(barrier, "wb") as gate:
        fcntl.flock(gate, fcntl.LOCK_EX)
        children = [
            subprocess.Popen([sys.executable, str(script), str(barrier), *a], cwd=folder,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
            for a in args
        ]
        try:
            for child in children:  # every child has imported everything and waits on the barrier
                assert child.stdout.readline().strip() == "ready", child.communicate(timeout=60)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
    results = []
    for child, a in zip(children, args):
        out, err = child.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(child.args, child.returncode, out, err))
    return results


def test_concurrent_starts_create_one_embedded_store(tmp_path):
    folder = tmp_path / "fresh"
    folder.mkdir()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    names = [f"voice-{i}" for i in range(PROCESSES)]
    results = _run_together(folder, script, tmp_path / "barrier", [[n] for n in names])

    for result in results:
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    experiments = {json.loads(r.stdout.strip().splitlines()[-1])["experiment"] for r in results}
    assert len(experiments) == 1, experiments
    # One complete store: every process's writes are in it, nothing half-made is left beside it.
    store = RegistryStore(f"sqlite:///{folder / 'mlflow.db'}")
    assert all(store.registered_model_exists(n) for n in names)
    default = store.client.get_experiment("0").artifact_location
    assert default == (folder / "mlartifacts" / "0").as_uri(), default
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []

