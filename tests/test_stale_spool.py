"""Issue 20, points 1 and 5: what is left in a spool never replaces newer checkpoints, and its record is checked.

"Newest" means the newest of the committed lineage. A spool entry written by a writer
that another one has since replaced (a ``--takeover``, or a lease that expired during an
outage while another machine trained on) is never registered: it is set aside in the
spool folder, said in one line, and nothing in the registry is deleted because of it.
A fenced writer sets its own uncommitted entries aside. ``spool.json`` is cross-checked
with the entry's folder name, its manifest and the checkpoint's own ``global_step``.

Against the embedded store and a real ``mlflow server`` (the ``backend`` fixture).
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.checkpoint.faults import FAIL_ENV
from mlflow_ddsp.errors import LeaseLostError

from registry_checks import versions_by_step

from conftest import scaled_timeout


def _queue(backend, name, **kwargs) -> CheckpointQueue:
    # interval_force_save=100: every save below is rolling, so a stale one could delete the newer one
    return CheckpointQueue(name, 10, 100, tracking_uri=backend.uri, experiment=backend.experiment, **kwargs)


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 2)


def _set_aside(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".set-aside-"))


def _entries(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("step-"))


def _leave_in_spool(queue: CheckpointQueue, step: int, model, monkeypatch) -> None:
    """Save ``step`` so that it stays in the spool, as a writer that died before its commit leaves it."""
    monkeypatch.setenv(FAIL_ENV, f"after_create@{step}")
    future = queue.save(step, model)
    with pytest.raises(Exception, match="injected failure"):
        future.result(timeout=scaled_timeout(120))
    monkeypatch.delenv(FAIL_ENV)


def _writer_that_died_with_step_20_in_its_spool(backend, name, monkeypatch) -> CheckpointQueue:
    """A queue that committed step 10, left step 20 in its spool, then "died": its lease left
    behind (stale at once for this machine) and nothing more done by it. Returns it (for its spool)."""
    first = _queue(backend, name)
    first.save(10, _model(1)).result(timeout=scaled_timeout(120))
    _leave_in_spool(first, 20, _model(2), monkeypatch)
    first._lease.abandon()
    first._closed = True
    return first


@pytest.mark.stack("postgres")  # which version is newest is the database's answer
def test_a_dead_writers_spool_never_replaces_what_another_machine_committed_since(backend, model_name, tmp_path, monkeypatch, caplog):
    store = RegistryStore(backend.uri)
    folder = _writer_that_died_with_step_20_in_its_spool(backend, model_name, monkeypatch).spool.folder
    assert _entries(folder) == ["step-000000000020"]

    # Another machine (its own spool) resumes from step 10 and trains on to step 30.
    with _queue(backend, model_name, spool_dir=tmp_path / "other-machine", takeover=True) as other:
        assert other.restore(_model(3)) == 10
        other.save(30, _model(4)).result(timeout=scaled_timeout(120))
    assert versions_by_step(store, model_name) == {30: "rolling"}

    # The first machine starts again: its step 20 is older than the lineage's step 30.
    with caplog.at_level(logging.WARNING, logger="mlflow_ddsp"):
        with _queue(backend, model_name) as again:
            assert again.restore(_model(5)) == 30
    assert versions_by_step(store, model_name) == {30: "rolling"}, "the stale step took the alias or deleted 30"
    assert _entries(folder) == [] and len(_set_aside(folder)) == 1
    aside = folder / _set_aside(folder)[0]
    assert (aside / "model_20.pt").is_file(), "the stale checkpoint's bytes are kept for a person"
    line = next(r.getMessage() for r in caplog.records if "step 20" in r.getMessage() and "set aside" in r.getMessage())
    assert "\n" not in line and "v" in line and str(aside) in line and "mlflow-ddsp import" in line


def test_a_fenced_writer_sets_its_spool_aside_and_the_next_start_keeps_the_new_writers_step(backend, model_name, monkeypatch, caplog):
    store = RegistryStore(backend.uri)
    fenced = _queue(backend, model_name)
    fenced.save(10, _model(1)).result(timeout=scaled_timeout(120))
    with _queue(backend, model_name, takeover=True) as new:  # same machine, same spool folder
        assert new.restore(_model(2)) == 10
        new.save(30, _model(3)).result(timeout=scaled_timeout(120))
        # The fenced writer does not know yet; its next save goes to the shared spool.
        future = fenced.save(20, _model(4))
        with pytest.raises(LeaseLostError):
            future.result(timeout=scaled_timeout(120))
        folder = new.spool.folder
        assert _entries(folder) == [], "the fenced writer left its step 20 for the next start to commit"
        assert len(_set_aside(folder)) == 1
    with pytest.raises(LeaseLostError):
        fenced.close()
    with _queue(backend, model_name) as again:
        assert again.restore(_model(5)) == 30
    assert versions_by_step(store, model_name) == {30: "rolling"}


def test_the_spool_of_a_writer_nobody_replaced_is_still_committed(backend, model_name, monkeypatch):
    """The normal recovery holds: a dead writer's newest save is the lineage's newest."""
    store = RegistryStore(backend.uri)
    _writer_that_died_with_step_20_in_its_spool(backend, model_name, monkeypatch)
    with _queue(backend, model_name, takeover=True) as again:  # this process plays the next one
        assert again.restore(_model(3)) == 20
    assert versions_by_step(store, model_name) == {20: "rolling"}


@pytest.mark.parametrize("tamper", ["spool.json step", "folder name", "global_step"])
def test_a_spool_record_that_disagrees_with_its_checkpoint_is_set_aside_not_committed(backend, model_name, monkeypatch, caplog, tamper):
    store = RegistryStore(backend.uri)
    folder = _writer_that_died_with_step_20_in_its_spool(backend, model_name, monkeypatch).spool.folder
    entry = folder / "step-000000000020"
    if tamper == "spool.json step":
        doc = json.loads((entry / "spool.json").read_text())
        doc["step"] = 999999
        (entry / "spool.json").write_text(json.dumps(doc))
    elif tamper == "folder name":
        entry.rename(folder / "step-000000999999")
    else:  # a checkpoint whose own step is not the one its name, record and manifest say
        from mlflow_ddsp.checkpoint.files import Manifest, sha256_file

        payload = torch.load(entry / "model_20.pt", weights_only=True)
        payload["global_step"] = 999999
        torch.save(payload, entry / "model_20.pt")
        manifest = Manifest.from_json((entry / "manifest.json").read_bytes())
        files = {**manifest.files, "model_20.pt": sha256_file(entry / "model_20.pt")}
        (entry / "manifest.json").write_bytes(Manifest(step=20, files=files).to_json())
        doc = json.loads((entry / "spool.json").read_text())
        digest = sha256_file(entry / "manifest.json")
        doc["manifest_sha256"], doc["manifest_size"] = digest.sha256, digest.size
        (entry / "spool.json").write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="mlflow_ddsp"):
        with _queue(backend, model_name, takeover=True) as again:
            assert again.restore(_model(3)) == 10
    assert versions_by_step(store, model_name) == {10: "rolling"}
    assert not any(p.name.startswith("step-") for p in folder.iterdir())
    assert [p.name.startswith(".damaged-") for p in folder.iterdir()] == [True]
    line = next(r.getMessage() for r in caplog.records if "damaged" in r.getMessage())
    assert "999999" in line and "20" in line and "\n" not in line
