"""Assertions about a checkpoint queue's state in a real registry, shared by several test modules."""

from __future__ import annotations

import logging
import tempfile
import threading

from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.tags import DEPENDENCY_EXPERIMENT, KIND_FORCE_SAVED, KIND_ROLLING
from mlflow_ddsp.checkpoint.verify import fetch_verified


def versions_by_step(store: RegistryStore, name: str) -> dict[int, str]:
    """step -> kind for every version of ``name``; fails on two versions of one step."""
    out: dict[int, str] = {}
    for v in store.list_versions(name):
        assert v.step not in out, f"two versions for step {v.step}"
        out[v.step] = v.kind
    return out


def assert_invariants(store: RegistryStore, backend, name: str, alias: str = "rolling", max_rolling: int = 1) -> int:
    """The queue invariants; returns the aliased step.

    * every version's bytes match their registration (sha256 of every file);
    * at most ``max_rolling`` rolling versions (keep_last + best + protected ones), and the
      alias points at the newest version;
    * the artifact folder on disk holds exactly the live versions' files (and, on the embedded
      store, the stored dependencies') and the registry lists no LoggedModel that no version uses.
    """
    versions = store.list_versions(name)
    for v in versions:
        with tempfile.TemporaryDirectory() as tmp:
            fetch_verified(store, v, tmp)  # raises on any mismatch
    kinds = [v.kind for v in versions]
    assert kinds.count(KIND_ROLLING) <= max_rolling, kinds
    assert set(kinds) <= {KIND_ROLLING, KIND_FORCE_SAVED}
    newest = max(versions, key=lambda v: v.version)
    assert store.alias_version(name, alias) == newest.version
    live_ids = {v.model_id for v in versions}
    experiments = store.experiment_ids(name)
    assert len(experiments) == len(set(experiments)), f"experiment ids recorded twice: {experiments}"
    assert {m.model_id for m in store.queue_models(name, experiments)} == live_ids
    # The embedded store keeps every experiment's LoggedModel folders in one place: the stored
    # dependencies' folders sit beside the checkpoints' there.
    dependencies = store.find_experiment_id(DEPENDENCY_EXPERIMENT)
    stored = {m.model_id for m in store.find_logged_models([dependencies])} if dependencies else set()
    assert backend.checkpoint_dirs(experiments) - stored == live_ids
    return newest.step


class LogSeen(logging.Handler):
    """Sets ``event`` when a log record of ``mlflow_ddsp`` contains ``text`` (the code's own report:
    what a test waits on instead of sleeping). ``LogSeen.watch(text)`` attaches one."""

    def __init__(self, text: str):
        super().__init__()
        self.text, self.event = text, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()

    @classmethod
    def watch(cls, text: str) -> "LogSeen":
        seen = cls(text)
        logging.getLogger("mlflow_ddsp").addHandler(seen)
        return seen


def acquire_at_once(leases) -> list:
    """Every lease's ``acquire()`` started at the same moment (a barrier), one thread each;
    returns ``"held"`` or the exception each got."""
    barrier = threading.Barrier(len(leases))
    outcomes: list = [None] * len(leases)

    def contend(i: int) -> None:
        barrier.wait()
        try:
            leases[i].acquire()
            outcomes[i] = "held"
        except BaseException as exc:  # noqa: BLE001 - the caller asserts what is allowed
            outcomes[i] = exc

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(leases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return outcomes


def forget_dependencies(uri: str) -> None:
    """Delete every stored dependency (bytes and record) of the store at ``uri``: a test that stored
    some on a session server leaves nothing for a later test's ``gc`` to free and print."""
    store = RegistryStore(uri)
    experiment_id = store.find_experiment_id(DEPENDENCY_EXPERIMENT)
    for model in store.find_logged_models([experiment_id] if experiment_id else []):
        store.delete_bytes(store.get_files(model.model_id))
        store.delete_record(model.model_id)
