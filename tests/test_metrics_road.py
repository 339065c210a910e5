"""Validation metrics take one road (issue 22, point 4).

The training loop logs every validation point through its tracker (the run's
outbox), stamped once; the checkpoint queue only links a committed checkpoint to
the same point (same step, same timestamp), which MLflow stores once. So a
checkpoint skipped as busy or dropped from the spool leaves no gap in the run's
curve, and a linked checkpoint adds no second point.

Real parts: the :class:`TrainLoop`, a :class:`CheckpointQueue` and an
:class:`MlflowTracker` on a real run of the embedded store or a real server.
The only hook holds the committer at its first MLflow call (as in test_queue.py)
so that saves pile up behind it.
"""

from __future__ import annotations

import threading

import torch

from mlflow import MlflowClient
from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.training.loop import TrainLoop
from mlflow_ddsp.training.tracker import MlflowTracker

from conftest import scaled_timeout
from registry_checks import versions_by_step
from test_progress import _TinyModel


def _batch() -> dict:
    torch.manual_seed(0)
    return {"units": torch.zeros(1, 5, 3), "f0": torch.ones(1, 5, 1), "volume": torch.rand(1, 5, 1),
            "spk_id": torch.ones(1, 1, dtype=torch.long), "audio": torch.rand(1, 20)}  # fmt: skip


class _HeldCommits:
    """Holds the queue's committer at its first MLflow call until released."""

    def __init__(self, store: RegistryStore):
        self.gate = threading.Event()
        self.entered = threading.Event()
        real = store.create_files

        def held(*args, **kwargs):
            self.entered.set()
            assert self.gate.wait(timeout=scaled_timeout(60)), "the test never released the gate"
            return real(*args, **kwargs)

        store.create_files = held


def _train(backend, model_name, *, max_steps: int, hold: bool = False, **queue_options):
    """Train ``max_steps`` steps validating every 2; return (run id, client, store)."""
    client = MlflowClient(backend.uri, backend.uri)
    store = RegistryStore(backend.uri)
    run_id = store.create_run(store.experiment_id(backend.experiment), "metrics-road")
    model = _TinyModel()
    tracker = MlflowTracker(store, run_id, sampling_rate=44100)
    queue = CheckpointQueue(model_name, 2, queue_options.pop("interval_force_save", 1000), tracking_uri=backend.uri,
                            run_id=run_id, **queue_options)  # fmt: skip
    held = _HeldCommits(queue.store) if hold else None
    try:
        loop = TrainLoop(
            model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
            loss_fn=torch.nn.functional.mse_loss, validation_loss_fn=torch.nn.functional.mse_loss,
            train_loader=[_batch()] * 100, valid_loader=[_batch()], checkpointer=queue, tracker=tracker,
            device=torch.device("cpu"), interval_log=100, interval_val=2, epochs=1, max_steps=max_steps,
            audio_clips=0, progress=False,
        )  # fmt: skip
        assert loop.run(start_step=0) == max_steps
        if held is not None:
            assert held.entered.wait(timeout=scaled_timeout(60)), "the first commit never reached the server"
            held.gate.set()
        queue.close()
    finally:
        if held is not None:
            held.gate.set()
    report = tracker.finish("FINISHED", timeout=scaled_timeout(60))
    assert report.complete, report.describe()
    return run_id, client, store


def _points(client, run_id, key) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_a_skipped_save_keeps_its_validation_loss_in_the_run(embedded, model_name):
    """when_busy="skip" skips the checkpoint, not the validation point: the curve has no gap."""
    run_id, client, store = _train(embedded, model_name, max_steps=6, hold=True, when_busy="skip")
    assert versions_by_step(store, model_name) == {2: "rolling"}  # 4 and 6 were skipped as busy
    assert _points(client, run_id, "validation/loss") == [2, 4, 6]


def test_a_save_dropped_from_the_spool_keeps_its_validation_loss_in_the_run(embedded, model_name):
    """A rolling save superseded in the spool while the committer is busy is never registered,
    but its validation loss stays in the run's history."""
    run_id, client, store = _train(embedded, model_name, max_steps=6, hold=True)
    assert versions_by_step(store, model_name) == {6: "rolling"}  # 4 was dropped for 6 in the spool
    assert _points(client, run_id, "validation/loss") == [2, 4, 6]


def test_one_history_point_per_validation_step_when_the_checkpoint_is_linked(backend, model_name):
    """The tracker's point and the queue's link (same step, same timestamp) are stored once;
    the LoggedModel of each committed checkpoint carries the same value."""
    run_id, client, store = _train(backend, model_name, max_steps=4, interval_force_save=2)
    history = client.get_metric_history(run_id, "validation/loss")
    assert sorted(m.step for m in history) == [2, 4]
    by_step = {m.step: m for m in history}
    for version in store.list_versions(model_name):
        linked = {m.key: m for m in client.get_logged_model(version.model_id).metrics}["validation/loss"]
        assert (linked.value, linked.step, linked.timestamp) == (
            by_step[version.step].value, version.step, by_step[version.step].timestamp)
    assert versions_by_step(store, model_name) == {2: "force_saved", 4: "force_saved"}
