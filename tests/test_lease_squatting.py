"""Lease squatting (issue 20, point 4): the writer lease cannot be held hostage by a user without EDIT.

On a basic-auth server anyone with the default READ permission can create the
registered model ``NAME.writer-lease``. The lease model is therefore bound to
NAME by tags on NAME itself (``mlflow_ddsp.lease_model``: which lease model is
in use; ``mlflow_ddsp.lease_holder``: the holder's owner id and the lease model's
server-side creation time), which only a user with EDIT on NAME can write. A
lease model that is not the recorded one is never renamed or deleted: the
owner moves the lease to a fresh name. These tests use a real
``mlflow server --app-name basic-auth`` (``tests/test_auth.py``'s fixtures) and,
for the logic without permissions, the embedded store and a plain server.
"""

from __future__ import annotations

import signal
import time
from types import SimpleNamespace

import pytest
import torch

from mlflow_ddsp import CheckpointQueue, LeaseHeldError, LeaseLostError
from mlflow_ddsp import tags as T
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.checkpoint import lease as lease_module
from mlflow_ddsp.checkpoint.lease import WriterLease, bound_lease_model, lease_model_name
from mlflow_ddsp.errors import PermissionDeniedError

from test_auth import assert_one_line_error, auth_server, cli, team  # noqa: F401 (fixtures)
from registry_checks import acquire_at_once
from test_lease import Holder

SQUAT_DESCRIPTION = "mine now"


def fake_holder_tags(owner: str = "squatter") -> dict[str, str]:
    """The tags of a live lease of another machine: what a squatter would forge."""
    return {
        T.LEASE_MARKER: T.LEASE_MARKER_VALUE, T.LEASE_OWNER: owner, T.LEASE_HOST: "gpu-box-7",
        T.LEASE_PID: "4242", T.LEASE_PROCESS: "another-boot:1", T.LEASE_HEARTBEAT: f"{time.time() + 3600:.3f}",
        T.LEASE_TTL: "600",
    }  # fmt: skip


def lease_models(uri: str, name: str) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(uri, uri)
    return sorted(m.name for m in client.search_registered_models(f"name LIKE '{lease_model_name(name)}%'"))


@pytest.fixture
def short_grace(monkeypatch):
    """No grace (30 s in use): a lease model nobody recorded is a squat as soon as it exists, so the
    tests need not wait for the grace to pass (what the grace does is tested on its own)."""
    monkeypatch.setattr(lease_module, "_RECORD_GRACE", 0.0)


def open_queue(uri: str, name: str, **kwargs) -> CheckpointQueue:
    return CheckpointQueue(name, 10, 20, tracking_uri=uri, experiment=f"exp-{name}", **kwargs)


# -- a real basic-auth server ----------------------------------------------------------------------------
@pytest.mark.server
@pytest.mark.parametrize("squat", ["plain", "marker-tagged"])
def test_a_readers_squat_blocks_neither_training_nor_gc_nor_takeover(team, auth_server, model_name, monkeypatch,
                                                                   short_grace, squat):  # fmt: skip
    writer, reader = team
    auth_server.login(monkeypatch, reader)
    squatter = RegistryStore(auth_server.uri)
    squat_name = lease_model_name(model_name)
    squat_tags = fake_holder_tags() if squat == "marker-tagged" else {}
    assert squatter.try_create_registered_model(squat_name, squat_tags, SQUAT_DESCRIPTION)  # READ is enough for that

    auth_server.login(monkeypatch, writer)
    store = RegistryStore(auth_server.uri)
    with open_queue(auth_server.uri, model_name) as queue:  # the owner trains
        queue.save(40, torch.nn.Linear(4, 4)).result()
        moved = bound_lease_model(store, model_name)
        assert moved != squat_name and moved.startswith(squat_name + "-")
    assert 40 in {v.step for v in store.list_versions(model_name)}
    gc = cli(auth_server.uri, "gc", model_name)
    assert gc.exit_code == 0, gc.output
    with open_queue(auth_server.uri, model_name, takeover=True) as queue:  # and takes over
        queue.save(50, torch.nn.Linear(4, 4)).result()

    # The squat was never renamed, retagged or deleted; nothing of ours is left behind.
    from mlflow import MlflowClient

    kept = MlflowClient(auth_server.uri, auth_server.uri).get_registered_model(squat_name)
    assert kept.description == SQUAT_DESCRIPTION and dict(kept.tags) == squat_tags
    assert lease_models(auth_server.uri, model_name) == [squat_name]
    assert T.LEASE_HOLDER not in store.registered_model_tags(model_name)  # cleared at release


@pytest.mark.server
def test_a_reader_can_neither_redirect_the_binding_nor_train_past_a_squat(team, auth_server, model_name, monkeypatch):
    _, reader = team
    auth_server.login(monkeypatch, reader)
    store = RegistryStore(auth_server.uri)
    for key, value in ((T.LEASE_MODEL, lease_model_name(model_name) + "-0badc0de"), (T.LEASE_HOLDER, "squatter 1")):
        with pytest.raises(PermissionDeniedError) as info:
            store.set_registered_model_tag(model_name, key, value)
        message = str(info.value)
        assert "\n" not in message and f"lacks the EDIT permission on registered model '{model_name}' (HTTP 403)" in message

    # Another reader squatted the lease name: this reader's start is refused for EDIT, in one line, leaving nothing.
    assert store.try_create_registered_model(lease_model_name(model_name), {}, SQUAT_DESCRIPTION)
    with pytest.raises(PermissionDeniedError, match=rf"lacks the EDIT permission on registered model '{model_name}' \(HTTP 403\)"):
        open_queue(auth_server.uri, model_name)
    assert lease_models(auth_server.uri, model_name) == [lease_model_name(model_name)]
    tags = store.registered_model_tags(model_name)
    assert T.LEASE_MODEL not in tags and T.LEASE_HOLDER not in tags
    result = cli(auth_server.uri, "gc", model_name)
    assert_one_line_error(result, "EDIT permission", "HTTP 403")


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.parametrize("holder_state", ["crashed", "live"])
def test_a_teammate_with_edit_takes_over_another_users_lease(auth_server, model_name, monkeypatch, holder_state):
    """Renaming a lease another user created needs EDIT on *that* model (HTTP 403): the teammate moves the lease.

    A crashed holder's lease is taken over at once; a live one with takeover=True, and the
    live holder is fenced at its next save (LeaseLostError), its lease model left to it.
    """
    suffix = model_name[-6:]
    first = auth_server.create_user(monkeypatch, f"first-{suffix}")
    second = auth_server.create_user(monkeypatch, f"second-{suffix}")
    auth_server.login(monkeypatch, first)
    open_queue(auth_server.uri, model_name).close()  # `first` creates the queue
    admin = auth_server.admin_client(monkeypatch)
    admin.grant_user_permission(second, "registered_model", model_name, "EDIT")
    auth_server.login(monkeypatch, first)
    (experiment,) = RegistryStore(auth_server.uri).experiment_ids(model_name)
    auth_server.admin_client(monkeypatch).grant_user_permission(second, "experiment", experiment, "EDIT")  # its checkpoints

    auth_server.login(monkeypatch, first)  # the subprocess inherits these credentials
    holder = Holder(SimpleNamespace(uri=auth_server.uri, experiment=f"exp-{model_name}"), model_name)
    try:
        if holder_state == "crashed":
            holder.proc.send_signal(signal.SIGKILL)
            holder.stop()
        auth_server.login(monkeypatch, second)
        store = RegistryStore(auth_server.uri)
        with open_queue(auth_server.uri, model_name, takeover=holder_state == "live") as queue:
            mine = queue.save(10, torch.nn.Linear(2, 2)).result()
            assert bound_lease_model(store, model_name) != lease_model_name(model_name)
            if holder_state == "live":
                holder.send("save 20")
                outcome = holder.wait_for("saved")
                assert outcome["event"] == "error" and outcome["type"] == "LeaseLostError", outcome
                assert holder.proc.wait(timeout=60) == 3
            assert store.alias_version(model_name, "rolling") == mine.version
        assert [v.step for v in store.list_versions(model_name)] == [10]
    finally:
        holder.stop()


# -- the binding's logic, without permissions: the embedded store and a plain server -----------------------
def test_a_forged_holder_record_does_not_make_a_planted_lease_ours(embedded, model_name, short_grace):
    """The record binds the holder's id to the lease model's server-side creation time, which nobody can forge."""
    store = RegistryStore(embedded.uri)
    store.ensure_registered_model(model_name, "forged")
    real = WriterLease(store, model_name).acquire()
    recorded = store.registered_model_tags(model_name)[T.LEASE_HOLDER]
    real.release()
    # A squatter re-creates the lease name with the released holder's tags (it can read them all).
    assert store.try_create_registered_model(lease_model_name(model_name), fake_holder_tags(real.owner), "squat")
    store.set_registered_model_tag(model_name, T.LEASE_HOLDER, recorded)  # even the old record (needs EDIT)
    lease = WriterLease(store, model_name).acquire()  # a live-looking lease of "another machine": moved around
    try:
        assert lease.lock_name != lease_model_name(model_name)
        lease.check()
    finally:
        lease.release()


def test_a_holder_whose_lease_was_moved_away_is_fenced(embedded, model_name):
    store = RegistryStore(embedded.uri)
    store.ensure_registered_model(model_name, "moved")
    first = WriterLease(store, model_name).acquire()
    first.check()
    store.set_registered_model_tag(model_name, T.LEASE_MODEL, lease_model_name(model_name) + "-0123abcd")
    with pytest.raises(LeaseLostError, match="moved"):
        first.check()
    first.release()  # its own lease model goes; the binding it lost stays
    assert lease_models(embedded.uri, model_name) == []
    assert bound_lease_model(store, model_name) == lease_model_name(model_name) + "-0123abcd"


@pytest.fixture
def one_second_grace(monkeypatch):
    """Contenders' own new lease models keep a grace (1 s) so they do not move each other's at once."""
    monkeypatch.setattr(lease_module, "_RECORD_GRACE", 1.0)


@pytest.mark.stack("postgres")  # races are database work
def test_writers_starting_at_once_past_a_squat_end_with_one_holder(backend, model_name, one_second_grace):
    contenders = 4
    store = RegistryStore(backend.uri)
    store.ensure_registered_model(model_name, "squat race")
    assert store.try_create_registered_model(lease_model_name(model_name), fake_holder_tags(), "squat")
    time.sleep(1.1)  # not a synchronization: the squat must be older than the wall-clock grace rule
    leases = [WriterLease(RegistryStore(backend.uri), model_name) for _ in range(contenders)]
    outcomes = acquire_at_once(leases)  # anything but LeaseHeldError fails the assertion below
    assert all(o == "held" or isinstance(o, LeaseHeldError) for o in outcomes), outcomes
    valid = []
    for lease in leases:
        if lease.held:
            try:
                lease.check()
                valid.append(lease)
            except LeaseLostError:
                pass  # moved at the same instant as the winner: fenced before any write
    assert len(valid) == 1, outcomes
    for lease in leases:
        lease.release()
    assert lease_models(backend.uri, model_name) == [lease_model_name(model_name)]  # only the squat stays
