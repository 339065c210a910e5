"""One writer per registered model: the lease, against the embedded store and a real server."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlflow_ddsp import CheckpointQueue, LeaseHeldError
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.checkpoint.lease import WriterLease, lease_model_name
from mlflow_ddsp import tags as T

from registry_checks import acquire_at_once, assert_invariants

TRAINER = Path(__file__).with_name("tiny_trainer.py")


def open_queue(backend, name, **kwargs) -> CheckpointQueue:
    return CheckpointQueue(name, 10, 30, tracking_uri=backend.uri, experiment=backend.experiment, **kwargs)


class Holder:
    """A live writer in another process (``tiny_trainer.py hold``), driven over stdin."""

    def __init__(self, backend, name):
        self.proc = subprocess.Popen(
            [sys.executable, str(TRAINER), "hold", backend.uri, name, backend.experiment, "0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.wait_for("ready")

    def wait_for(self, event: str) -> dict:
        for line in self.proc.stdout:
            if line.startswith("{"):
                message = json.loads(line)
                if message["event"] in (event, "error"):
                    return message
        raise AssertionError(f"holder exited before {event!r}: {self.proc.stderr.read()[-2000:]}")

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.mark.stack("postgres")  # races and takeovers are database work
def test_second_writer_fails_fast_naming_the_holder(backend, model_name):
    first = open_queue(backend, model_name)
    started = time.monotonic()
    with pytest.raises(LeaseHeldError) as info:
        open_queue(backend, model_name)
    assert time.monotonic() - started < 30  # fails fast, no waiting for a ttl
    message = str(info.value)
    assert f"pid {os.getpid()}" in message and "takeover=True" in message and "\n" not in message
    first.close()
    assert not RegistryStore(backend.uri).registered_model_exists(lease_model_name(model_name))
    open_queue(backend, model_name).close()  # free again once the first writer closed


def plant_lease(store: RegistryStore, name: str, tags: dict[str, str]) -> None:
    """The lease model of a holder that crashed after recording itself on ``name`` (what a real holder does)."""
    store.ensure_registered_model(name, "planted lease")
    lock = lease_model_name(name)
    assert store.try_create_registered_model(lock, tags, "planted")
    _, created = store.registered_model_created(lock)
    store.set_registered_model_tag(name, T.LEASE_HOLDER, f"{tags[T.LEASE_OWNER]} {created}")


def plant_stale_lease(store: RegistryStore, name: str, owner: str = "crashed-long-ago") -> None:
    """A lease of another machine whose heartbeat stopped long ago: anyone may take it over."""
    tags = {
        T.LEASE_MARKER: T.LEASE_MARKER_VALUE, T.LEASE_OWNER: owner, T.LEASE_HOST: "gpu-box-7",
        T.LEASE_PID: "4242", T.LEASE_HEARTBEAT: f"{time.time() - 3600:.3f}", T.LEASE_TTL: "60",
    }  # fmt: skip
    plant_lease(store, name, tags)


def lease_models(backend, name: str) -> list[str]:
    """Every registered model whose name starts with the lease's (leases and tombstones)."""
    from mlflow import MlflowClient

    client = MlflowClient(backend.uri, backend.uri)
    return sorted(m.name for m in client.search_registered_models(f"name LIKE '{lease_model_name(name)}%'"))


@pytest.mark.stack("postgres")  # races and takeovers are database work
@pytest.mark.parametrize("stale_lease_first", [False, True], ids=["free", "stale"])
def test_concurrent_acquires_have_exactly_one_winner(backend, model_name, stale_lease_first):
    contenders = 4
    store = RegistryStore(backend.uri)
    store.ensure_registered_model(model_name, "lease race")
    for round_ in range(3):
        if stale_lease_first:  # every contender tries to take the same stale lease over at once
            plant_stale_lease(store, model_name, owner=f"crashed{round_}")
        leases = [WriterLease(RegistryStore(backend.uri), model_name) for _ in range(contenders)]
        outcomes = acquire_at_once(leases)  # anything but LeaseHeldError fails the assertions below
        assert outcomes.count("held") == 1, outcomes
        assert all(o == "held" or isinstance(o, LeaseHeldError) for o in outcomes), outcomes
        winner = leases[outcomes.index("held")]
        winner.check()  # no live lease was retired by a loser
        assert store.registered_model_tags(lease_model_name(model_name))[T.LEASE_OWNER] == winner.owner
        winner.release()
        assert lease_models(backend, model_name) == []  # no tombstone left behind


def test_a_model_that_is_not_our_lease_is_never_touched_the_lease_moves(backend, model_name, caplog):
    """Issue 20 point 4: a model at the lease's name no longer blocks the queue (it used to be refused)."""
    from mlflow import MlflowClient

    from mlflow_ddsp.checkpoint.lease import bound_lease_model

    store = RegistryStore(backend.uri)
    someone = lease_model_name(model_name)
    store.ensure_registered_model(someone, "a person's own model that happens to have this name")
    store.set_registered_model_tag(someone, T.LEASE_HEARTBEAT, "0")  # even one that looks stale
    for takeover in (False, True):
        with caplog.at_level(logging.WARNING, logger="mlflow_ddsp"), open_queue(backend, model_name, takeover=takeover):
            assert bound_lease_model(store, model_name).startswith(someone + "-")
    assert "is not an mlflow-ddsp writer lease" in caplog.text and "left untouched" in caplog.text
    assert MlflowClient(backend.uri, backend.uri).get_registered_model(someone).description.startswith("a person's")
    assert store.registered_model_tags(someone) == {T.LEASE_HEARTBEAT: "0"}
    assert lease_models(backend, model_name) == [someone]


@pytest.mark.stack("postgres")  # races and takeovers are database work
@pytest.mark.slow
def test_lease_of_a_killed_writer_is_taken_over_at_once(backend, model_name, caplog):
    holder = Holder(backend, model_name)
    with pytest.raises(LeaseHeldError, match=rf"pid {holder.proc.pid}"):
        open_queue(backend, model_name)
    holder.proc.send_signal(signal.SIGKILL)
    holder.stop()
    with caplog.at_level(logging.WARNING, logger="mlflow_ddsp"), open_queue(backend, model_name):
        pass  # no ttl wait: the dead process is recognised on this machine
    assert "taking over the stale writer lease" in caplog.text


@pytest.mark.stack("postgres")  # races and takeovers are database work
@pytest.mark.slow
def test_takeover_fences_off_the_previous_writer(backend, model_name):
    holder = Holder(backend, model_name)
    try:
        import torch

        model = torch.nn.Linear(2, 2)
        with open_queue(backend, model_name, takeover=True) as queue:
            mine = queue.save(10, model).result()
            holder.send("save 20")
            outcome = holder.wait_for("saved")
            assert outcome["event"] == "error" and outcome["type"] == "LeaseLostError", outcome
            assert "taken over" in outcome["message"]
            assert holder.proc.wait(timeout=60) == 3
            store = queue.store
            assert store.alias_version(model_name, "rolling") == mine.version
            assert [v.step for v in store.list_versions(model_name)] == [10]  # the fenced writer registered nothing
            queue.save(20, model).result()
        with open_queue(backend, model_name) as reopened:  # it saw the other writer's version: uploaded nothing
            assert reopened.last_reconcile.delete_models == ()
        assert_invariants(store, backend, model_name)
    finally:
        holder.stop()


def test_lease_from_another_machine_is_respected_until_its_ttl(embedded, model_name):
    store = RegistryStore(embedded.uri)
    store.ensure_registered_model(model_name, "foreign writer")

    def plant(heartbeat_age: float) -> None:
        store.delete_registered_model(lease_model_name(model_name))
        tags = {
            T.LEASE_MARKER: T.LEASE_MARKER_VALUE,
            T.LEASE_OWNER: "someone-else", T.LEASE_HOST: "gpu-box-7", T.LEASE_PID: "4242",
            T.LEASE_PROCESS: "another-boot:1", T.LEASE_HEARTBEAT: f"{time.time() - heartbeat_age:.3f}",
            T.LEASE_TTL: "60",
        }  # fmt: skip
        plant_lease(store, model_name, tags)

    plant(heartbeat_age=5)
    with pytest.raises(LeaseHeldError, match=r"gpu-box-7 pid 4242 \(last heartbeat \d+ s ago\)") as info:
        open_queue(embedded, model_name)
    age = int(re.search(r"last heartbeat (\d+) s ago", str(info.value)).group(1))
    assert 5 <= age < 60  # 5 s when planted, plus however long opening the queue took; under the ttl
    plant(heartbeat_age=61)
    open_queue(embedded, model_name).close()


def test_heartbeat_renews_the_lease(embedded, model_name):
    store = RegistryStore(embedded.uri)
    store.ensure_registered_model(model_name, "heartbeat")
    lease = WriterLease(store, model_name, ttl=0.4)
    lease.acquire()
    try:
        first = store.registered_model_tags(lease.lock_name)[T.LEASE_HEARTBEAT]
        deadline = time.monotonic() + 30
        while store.registered_model_tags(lease.lock_name)[T.LEASE_HEARTBEAT] == first:
            assert time.monotonic() < deadline, "heartbeat never renewed the lease"
            time.sleep(0.05)  # polling a condition, bounded by the deadline
        lease.check()
    finally:
        lease.release()


@pytest.mark.parametrize(
    "namespace, taken_at_once",
    [("same", True), ("pid:[4026531999]", False), ("", False)],
    ids=["same-pid-namespace", "other-container", "unknown"],
)
def test_a_dead_pid_counts_only_within_the_same_pid_namespace(backend, model_name, namespace, taken_at_once):
    """Containers sharing a host name (host networking) see other pids: judge those by ttl."""
    import socket

    from mlflow_ddsp.checkpoint.lease import _boot_id, _pid_namespace

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    store = RegistryStore(backend.uri)
    store.ensure_registered_model(model_name, "namespaces")
    tags = {
        T.LEASE_MARKER: T.LEASE_MARKER_VALUE, T.LEASE_OWNER: "container-b", T.LEASE_HOST: socket.gethostname(),
        T.LEASE_PID: dead.stdout.strip(), T.LEASE_PROCESS: f"{_boot_id()}:123",
        T.LEASE_HEARTBEAT: f"{time.time():.3f}", T.LEASE_TTL: "600",
        T.LEASE_PID_NAMESPACE: _pid_namespace() if namespace == "same" else namespace,
    }  # fmt: skip
    plant_lease(store, model_name, tags)
    if taken_at_once:
        open_queue(backend, model_name).close()
    else:
        with pytest.raises(LeaseHeldError, match=r"ttl 600 s"):
            open_queue(backend, model_name)
