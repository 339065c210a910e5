"""Start-up recovery of a checkpoint queue: repair what an earlier process left.

Run once by :meth:`CheckpointQueue.recover <mlflow_ddsp.checkpoint.queue.CheckpointQueue.recover>`
before the first save, while this process holds the writer lease:

1. the registered model exists, records its experiment and retention policy;
2. the spool's entries left by an earlier process are committed in step order
   (steps 2-8 of the commit order, ``commit.py``), after the spool's drop decision;
   an entry the registry already holds (a crash between register and unspool)
   is removed, not committed twice;
3. reconcile (``reconcile.collect``): the newest versions are checked
   byte for byte and the retention plan is applied, so what a crash left is repaired.
"""

from __future__ import annotations

import logging

from ..errors import CheckpointSaveError, MlflowDdspError
from ..store import RegistryStore
from ..store.fluent import active_run_id
from ..store.location import DEFAULT_EXPERIMENT
from .commit import QueueSetup
from .committer import Committer
from .lease import WriterLease
from .pending import Pending
from .policy_record import record_policy
from .reconcile import collect
from .retention import SpoolItem, spool_drops

__all__ = ["connect", "recover", "commit_left_spool", "warn_foreign_location"]

log = logging.getLogger(__name__)


def connect(name: str, description: str, lease: WriterLease | None, *, tracking_uri: str | None,
            store: RegistryStore | None, run_id: str | None, experiment: str | None, takeover: bool,
            lease_ttl: float) -> tuple[RegistryStore, str | None, str, WriterLease]:  # fmt: skip
    """The queue's first server calls: its store, run and experiment, and writer lease.

    Returns:
        ``(store, run_id, experiment_id, lease)``: ``store`` as given or opened on
        ``tracking_uri``; ``run_id`` as given, else the active run's (None: no run);
        the run's experiment, else ``experiment`` (default ``mlflow-ddsp``); ``lease``
        as given, else acquired now.
    Raises:
        LeaseHeldError: another live process writes into ``name``.
    """
    opened = store or RegistryStore(tracking_uri)
    run_id = run_id or active_run_id(tracking_uri if store is None else store.tracking_uri)
    experiment_id = (opened.experiment_of_run(run_id) if run_id
                     else opened.experiment_id(experiment or DEFAULT_EXPERIMENT))  # fmt: skip
    if lease is None:
        lease = WriterLease(opened, name, ttl=lease_ttl, takeover=takeover, description=description).acquire()
    return opened, run_id, experiment_id, lease


def recover(setup: QueueSetup, committer: Committer, pending: Pending, *, description: str, experiment_id: str):
    """Steps 1-3 of the module docstring; returns reconcile's report (what it repaired).

    Raises:
        CheckpointSaveError: an entry of the spool could not be committed (the spool is kept).
        MlflowDdspError: the registry refused a step (one line).
    """
    store, name = setup.store, setup.name
    store.ensure_registered_model(name, description)
    store.record_experiment(name, experiment_id)
    record_policy(store, name, setup.alias, setup.policy)
    commit_left_spool(setup, committer, pending)
    report = collect(store, name, setup.alias, setup.policy)
    known = max((v.version for v in store.list_versions(name)), default=0)
    with pending.cond:
        pending.known_version = max(pending.known_version, known)
    for line in report.describe():
        log.warning("%s: repaired at start: %s", name, line)
    return report


def commit_left_spool(setup: QueueSetup, committer: Committer, pending: Pending) -> None:
    """Commit what an earlier process left in the spool, in step order (in this thread)."""
    spool = setup.spool
    entries = spool.entries(verify=True)
    if not entries:
        return
    drops = spool_drops([SpoolItem(e.step, e.kind, e.metrics) for e in entries], setup.policy)
    for entry in entries:
        if entry.step in drops:
            spool.remove(entry)
    kept = [e for e in entries if e.step not in drops]
    log.warning("%s: committing %s left by an earlier process", setup.name, spool.describe(kept))
    for entry in kept:
        try:
            committer.commit_now(entry, dedupe=True)
        except MlflowDdspError as exc:
            raise CheckpointSaveError(
                f"could not commit step {entry.step} from the spool {spool.folder}: {exc}; fix that and "
                "start again (the spool is kept), or move that folder away to go on without it"
            ) from exc


def warn_foreign_location(setup: QueueSetup, experiment_id: str) -> None:
    """Say where new checkpoints go when that is outside this store's folder (a copied store)."""
    location = setup.store.foreign_experiment_location(experiment_id)
    if location is not None:
        log.warning(
            "%s: new checkpoints go to %s, outside this store's folder (a copied store keeps the "
            "original's paths); mlflow-ddsp never deletes files there", setup.name, location,
        )  # fmt: skip
