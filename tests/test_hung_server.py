"""A tracking server that accepts connections and never answers (a SIGSTOPped or wedged
`mlflow server`): nothing in training may wait on it beyond its bounded time.

The server here is a listening socket that never accepts: the kernel completes the
connection, the request is sent, no answer ever comes (as with a stopped process).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
import torch

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.store import RegistryStore, facade
from mlflow_ddsp.store.location import check_reachable
from mlflow_ddsp.training.outbox import RunOutbox


@pytest.fixture
def hung_server():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def _store_of(uri: str, monkeypatch) -> RegistryStore:
    """The store edge on a server that stopped answering after the store was opened."""
    with monkeypatch.context() as m:
        m.setattr(facade, "check_reachable", lambda uri: None)
        return RegistryStore(uri)


def test_run_logging_close_is_bounded_while_a_request_hangs(hung_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    store = _store_of(hung_server, monkeypatch)
    outbox = RunOutbox(lambda points: store.log_metric_points("0" * 32, points),  # never answered
                       probe=lambda: check_reachable(hung_server, timeout=0.2))  # fmt: skip
    outbox.log_metrics({"train/loss": 1.0}, step=5)
    outbox.log_metrics({"train/loss": 0.5}, step=10)
    started = time.monotonic()
    report = outbox.close(timeout=0.5)
    assert time.monotonic() - started < 10  # MLflow's own request timeout is 120 s
    assert report.undelivered_points == 2 and not report.complete


@pytest.mark.server
def test_queue_close_is_bounded_when_the_server_hangs_after_the_last_commit(mlflow_server, model_name):
    """Nothing left to commit, the server stopped (SIGSTOP): close() must not wait on the lease release."""
    queue = CheckpointQueue(model_name, 10, 20, tracking_uri=mlflow_server.uri, experiment=model_name, close_timeout=1)
    queue.save(10, torch.nn.Linear(2, 2)).result()  # committed: the spool is empty
    closer = threading.Thread(target=queue.close, daemon=True)
    os.killpg(mlflow_server._process.pid, signal.SIGSTOP)
    try:
        closer.start()
        closer.join(timeout=20)  # MLflow's client would wait 120 s per try
        assert not closer.is_alive(), "close() hangs on a server that does not answer"
    finally:
        os.killpg(mlflow_server._process.pid, signal.SIGCONT)
    closer.join()
