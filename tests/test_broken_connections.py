"""Issue 20, point 8: every way a connection to the tracking server breaks is an outage.

A refused connection was an outage (the committer backs off, training goes on) but a
server that died in the middle of an answer was not: ``saving the checkpoint of step 2
failed: ... Connection broken: IncompleteRead`` stopped training. Here a real
``mlflow server`` sits behind :class:`FaultyProxy`, a TCP proxy (threads and sockets)
that forwards each request and then breaks the answer in one of the ways a server or
a network does: cut in the middle of the body, closed without an answer, reset, or
never answered (a read timeout).
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import struct
import threading
from urllib.parse import urlparse

import pytest
import torch

from mlflow_ddsp import CheckpointQueue, TrackingServerUnavailable
from mlflow_ddsp import tags as T
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.errors import TrackingServerUnreachable
from mlflow_ddsp.store.location import check_reachable
from mlflow_ddsp.training.outbox import RunOutbox

from registry_checks import LogSeen, versions_by_step


def _read_head(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """An HTTP message's head (through the blank line) and the bytes read past it; None at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    end = data.index(b"\r\n\r\n") + 4
    return data[:end], data[end:]


def _close_after(head: bytes) -> bytes:
    """The request head with ``Connection: close``: one request per connection, so that every
    request meets the fault set when it arrives (a kept-alive connection would not)."""
    lines = [line for line in head.split(b"\r\n")[:-2] if not line.lower().startswith(b"connection:")]
    return b"\r\n".join(lines + [b"Connection: close", b"", b""])


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


class FaultyProxy:
    """A TCP proxy on 127.0.0.1 in front of a real server, one request per connection.

    ``fault`` decides the fate of each request that arrives while it is set:

    * ``None``: forwarded both ways;
    * ``"cut"``: forwarded; the server's whole answer is read, then its status line, headers
      and half its body are sent and the connection closed (a server dying mid-answer:
      ``IncompleteRead``, ``ChunkedEncodingError``); an answer without a body is not sent at all;
    * ``"silent"``: forwarded; closed without an answer (``RemoteDisconnected``);
    * ``"reset"``: forwarded; the connection is reset (RST: ``ConnectionResetError``);
    * ``"stall"``: never answered, until the client gives up (a read timeout).

    In every case but ``stall`` the server did the work: only its answer is lost. With
    ``only`` set, the fault hits only requests whose request line contains it.
    """

    FAULTS = ("cut", "silent", "reset", "stall")

    def __init__(self, upstream: str):
        parsed = urlparse(upstream)
        self._upstream = (parsed.hostname, parsed.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.fault: str | None = None
        self.only: str | None = None
        self.broken: collections.Counter = collections.Counter()
        self._cond = threading.Condition()
        threading.Thread(target=self._accept, name="faulty-proxy", daemon=True).start()

    def wait_broken(self, fault: str, count: int, timeout: float = 120) -> bool:
        """Wait until ``count`` answers were broken by ``fault``."""
        with self._cond:
            return self._cond.wait_for(lambda: self.broken[fault] >= count, timeout=timeout)

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _broke(self, fault: str) -> None:
        with self._cond:
            self.broken[fault] += 1
            self._cond.notify_all()

    def _serve(self, client: socket.socket) -> None:
        try:
            request = _read_head(client)
            if request is None:
                return
            head, rest = request
            fault, only = self.fault, self.only
            if only is not None and only.encode() not in head.split(b"\r\n", 1)[0]:
                fault = None
            if fault == "stall":
                self._broke(fault)
                _read_all(client)  # until the client times out and closes
                return
            with socket.create_connection(self._upstream) as upstream:
                upstream.sendall(_close_after(head) + rest)
                threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()  # the request's body
                if fault is None:
                    _pump(upstream, client)
                    return
                answer = _read_all(upstream)
            self._broke(fault)
            if fault == "cut":
                end = answer.find(b"\r\n\r\n") + 4
                body = len(answer) - end
                if end > 3 and body > 1:
                    client.sendall(answer[: end + body // 2])
            elif fault == "reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        finally:
            try:
                client.shutdown(socket.SHUT_RDWR)  # wakes the request pump blocked in recv
            except OSError:
                pass
            client.close()


@pytest.fixture
def proxy(mlflow_server, monkeypatch):
    # MLflow's client would retry each broken request for minutes (and wait 120 s for an
    # answer); the queue's own backoff takes over at once here. Behaviour is the same.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    p = FaultyProxy(mlflow_server.uri)
    yield p
    p.close()


@pytest.mark.server
@pytest.mark.parametrize("fault", FaultyProxy.FAULTS)
def test_a_broken_answer_is_an_outage_at_the_edge(proxy, fault, model_name, tmp_path):
    """Every kind of call the queue and the run logging make (REST read and write, artifact
    listing, upload, download) raises TrackingServerUnavailable, in one line, whatever broke."""
    store = RegistryStore(proxy.uri)
    experiment_id = store.experiment_id(model_name)
    store.ensure_registered_model(model_name, "broken answers")
    files = store.create_files(experiment_id, f"{model_name}-files", None, {T.QUEUE: model_name})
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(300_000))
    store.upload(files, blob)
    (tmp_path / "dl").mkdir()
    # what -> (the request line the fault hits, the call): the download's own GET, not the
    # listing before it (MLflow reports a failed download only as text).
    calls = {
        "read": (None, lambda: store.registered_model_tags(model_name)),
        "write": (None, lambda: store.set_registered_model_tag(model_name, "mlflow_ddsp.test", "1")),
        "list": (None, lambda: store.list_sizes(files)),
        "upload": (None, lambda: store.upload(files, blob)),
        "download": ("GET /api/2.0/mlflow-artifacts/artifacts/",
                     lambda: store.download(files, ["blob.bin"], tmp_path / "dl", listed={"blob.bin": 300_000})),
    }  # fmt: skip
    proxy.fault = fault
    for what, (only, call) in calls.items():
        proxy.only = only
        with pytest.raises(TrackingServerUnavailable) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message and proxy.uri in message, (what, message)
    proxy.only = None
    assert proxy.broken[fault] >= len(calls)
    proxy.fault = None
    assert store.list_sizes(files) == {"blob.bin": 300_000}
    store.download(files, ["blob.bin"], tmp_path / "dl", listed={"blob.bin": 300_000})
    assert (tmp_path / "dl" / "blob.bin").read_bytes() == blob.read_bytes()


@pytest.mark.server
@pytest.mark.slow
def test_saves_and_run_logging_go_on_while_answers_break_and_arrive_once_they_flow(proxy, mlflow_server, model_name):
    """A save loop (what training does) and the run's metrics through a proxy that breaks
    every answer for a while, each fault in turn: no save fails, nothing waits on the server;
    once the proxy forwards again every checkpoint is committed exactly once and every metric
    arrives."""
    direct = RegistryStore(mlflow_server.uri)
    via_proxy = RegistryStore(proxy.uri)
    run_id = direct.create_run(direct.experiment_id(model_name), run_name="broken-answers")
    outbox = RunOutbox(lambda points: via_proxy.log_metric_points(run_id, points))
    model = torch.nn.Linear(4, 2)
    with CheckpointQueue(model_name, 10, 20, tracking_uri=proxy.uri, experiment=model_name, close_timeout=120) as queue:
        queue.save(10, model).result()  # committed through the proxy while it forwards
        outage = LogSeen.watch("training goes on")
        step = 10
        try:
            for fault in FaultyProxy.FAULTS:
                proxy.fault = fault
                before = proxy.broken[fault]
                for _ in range(2):
                    step += 10
                    with torch.no_grad():
                        model.weight.add_(1.0)
                    queue.save(step, model)  # raises CheckpointSaveError if a commit failed
                    outbox.log_metrics({"train/loss": 1.0 / step}, step)
                assert proxy.wait_broken(fault, before + 2), f"no answer was broken by {fault!r}"
            assert outage.event.wait(timeout=120), "the committer never met the outage"
        finally:
            logging.getLogger("mlflow_ddsp").removeHandler(outage)
            proxy.fault = None
        assert queue.flush().step == step
    report = outbox.close(timeout=120)
    assert report.complete, report.describe()
    kinds = versions_by_step(direct, model_name)  # fails on two versions of one step
    assert kinds[step] == "rolling" and all(kinds[s] == "force_saved" for s in range(20, step, 20)), kinds
    assert [m.step for m in sorted(direct.client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)] == list(
        range(20, step + 1, 10)
    )


@pytest.mark.parametrize("answer", [b"", b"HELLO\r\n", b"HTTP/1.1 2"], ids=["closed", "garbage", "cut-status-line"])
def test_the_health_probe_calls_any_broken_answer_unreachable(answer):
    """The probe the committer and the run logging ask before retrying: a server that closes
    without a status line, or answers garbage or half of one, is unreachable (one line), not a
    traceback (``http.client.BadStatusLine`` is no OSError)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def answer_once() -> None:
            client, _ = listener.accept()
            with client:
                _read_head(client)
                client.sendall(answer)

        server = threading.Thread(target=answer_once, daemon=True)
        server.start()
        with pytest.raises(TrackingServerUnreachable) as caught:
            check_reachable(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=30)
        server.join(timeout=30)
    assert "\n" not in str(caught.value) and "cannot reach" in str(caught.value)
