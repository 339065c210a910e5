"""CheckpointQueue: the MLflow model registry as DDSP-SVC's checkpoint folder; a thin facade.

It keeps what upstream keeps (every force-save step, plus the newest) as registered model
versions, and what ``keep_last``, ``best_metric`` and a person's protection add; the rules
are ``rules.py``, the one deleter ``deleter.py``, the commit order with its crash points
``commit.py``'s docstring. Parts: the caller stages a save (step 0), ``spool_writer.py``
writes it to disk (step 1), ``committer.py`` runs steps 2-8 (state in ``pending.py``;
``backoff.py`` while the server is away), ``recovery.py`` is the explicit start-up step
:meth:`CheckpointQueue.recover` (constructing touches no server), ``shutdown.py`` stops.
"""
from __future__ import annotations

import atexit
import logging
import os
import time
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .. import tags as T
from ..names import DEFAULT_ALIAS
from ..optimizer import portable_state
from ..store import CheckpointVersion, RegistryStore
from ..store.location import check_reachable
from ..wrappers import unwrap_model
from . import shutdown, upstream_file
from .commit import QueueSetup, crash_hook, parent_tags
from .committer import Committer
from .dependencies import DependencyRecord
from .lease import DEFAULT_LEASE_TTL, WriterLease
from .options import (CLOSE_TIMEOUT_ENV, check_options, config_bytes, registered_model_description,
                      resolve_close_timeout)  # fmt: skip
from .pending import NEW, Pending
from .policy import RetentionPolicy
from .reader import CheckpointReader, FitCheck, load_into
from .recovery import connect, recover, warn_foreign_location
from .spool import Spool, SpooledSave
from .spool_writer import SpoolWriter, clean_scratch

__all__ = ["CheckpointQueue", "resolve_close_timeout", "registered_model_description", "CLOSE_TIMEOUT_ENV"]

log = logging.getLogger(__name__)

class CheckpointQueue:
    """Keeps a training run's checkpoints in the MLflow model registry, crash-safely.

    Args:
        registered_model: registry name; the lease model ``<name>.writer-lease``
            exists while a process trains into it.
        interval_val: steps between validation saves (upstream ``train.interval_val``).
        interval_force_save: steps between checkpoints kept forever, a multiple of
            ``interval_val``; None never force-saves.
        alias: the alias of the newest checkpoint (not ``latest``: MLflow reserves it;
            not ``best``: the queue's alias of the best checkpoint).
        keep_last: the newest N checkpoints stay (1: upstream's rule).
        best_metric: a metric passed to :meth:`save`; the checkpoint with its best
            value so far stays, under the alias ``best``. None: no best.
        best_mode: ``"min"`` (lower is better) or ``"max"``.
        save_optimizer: also store the optimizer state (upstream ``train.save_opt``).
        config: the training config (mapping, yaml bytes or a yaml path), stored as
            ``config.yaml`` with every checkpoint.
        run_id: the run checkpoints belong to; default: the active run, if any.
        experiment: experiment for LoggedModels when there is no run (default ``mlflow-ddsp``).
        tracking_uri: default ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``.
        store: an open :class:`RegistryStore` to share (instead of ``tracking_uri``).
        takeover: take the writer lease even from a live process.
        lease_ttl: seconds without heartbeat after which another machine may take over.
        when_busy: a rolling save arriving while an earlier save is not committed
            yet waits in the spool (``"wait"``, default) or is ``"skip"``ped;
            force-saves are never skipped.
        lineage: extra tags for every version (code version, config and data
            digests...), written with the version in the same call.
        extra_files: files added to every version beside the checkpoint and
            covered by its manifest (e.g. the pyfunc ``MLmodel``).
        lease: a :class:`WriterLease` of ``registered_model`` the caller acquired
            already (e.g. before loading data); the queue releases it at close.
        spool_dir: the local spool's root folder (default: ``MLFLOW_DDSP_SPOOL_DIR``,
            else beside an embedded store, else ``~/.local/state/mlflow-ddsp/spool``).
        close_timeout: seconds :meth:`close` waits while the server is unavailable
            before leaving the spool to the next start (default
            ``MLFLOW_DDSP_CLOSE_TIMEOUT``, else 60).
        recover: run :meth:`recover` now (default). ``False``: constructing only
            validates the options, touching no server and no disk; call
            :meth:`recover` before the first save (the training session does).
        dependencies: ``(file, record)`` of each weight file every checkpoint converts
            with (encoder, f0 network, vocoder): recorded in each manifest, stored once
            per tracking store (``dependencies.py``). None: not recorded.

    Raises:
        ConfigError: a bad option (before any network call).
        LeaseHeldError: another live process writes into ``registered_model`` (at recovery).
        ArtifactStoreUnavailable: the store holds none of the queue's files (at recovery).

    Use as a context manager, or call :meth:`close` (it flushes pending saves).
    """

    def __init__(
        self, registered_model: str, interval_val: int, interval_force_save: int | None, alias: str = DEFAULT_ALIAS,
        save_optimizer: bool = False, *, config: Mapping[str, Any] | str | os.PathLike | bytes | None = None,
        run_id: str | None = None, experiment: str | None = None, tracking_uri: str | None = None,
        store: RegistryStore | None = None, takeover: bool = False, lease_ttl: float = DEFAULT_LEASE_TTL,
        when_busy: str = "wait", lineage: Mapping[str, str] | None = None, extra_files: Mapping[str, bytes] | None = None,
        keep_last: int = 1, best_metric: str | None = None, best_mode: str = "min", lease: WriterLease | None = None,
        spool_dir: str | os.PathLike | None = None, close_timeout: float | None = None, recover: bool = True,
        dependencies: Sequence[tuple[str | os.PathLike, DependencyRecord]] | None = None,
    ):  # fmt: skip
        self.name, self.alias = check_options(registered_model, alias, experiment, when_busy, lease)
        self.policy = RetentionPolicy(interval_val, interval_force_save, keep_last, best_metric, best_mode)
        self.when_busy = when_busy
        self.close_timeout = resolve_close_timeout(close_timeout)
        self.save_optimizer = bool(save_optimizer)
        self._config_yaml = config_bytes(config)
        self._lineage = {str(k): str(v) for k, v in (lineage or {}).items()}
        self._extra_files = dict(extra_files or {})
        self._connect_with = dict(tracking_uri=tracking_uri, store=store, run_id=run_id, experiment=experiment,
                                  takeover=takeover, lease_ttl=lease_ttl)  # fmt: skip
        self._spool_dir = spool_dir
        self._dependencies = None if dependencies is None else tuple((Path(f), r) for f, r in dependencies)
        self._lease = lease
        self._recovered = self._closed = False
        self._restored_step: int | None = None  # already in the registry: not saved again
        self._parent: CheckpointVersion | None = None
        self.restored_trainer_state: dict[str, Any] | None = None  # set by restore()
        self.skipped_saves = 0
        self.left_in_spool: list[SpooledSave] = []  # set by close() when it gave up waiting
        self.last_reconcile = None  # what recover() repaired
        if recover:
            self.recover()

    # -- start-up --------------------------------------------------------------
    def recover(self) -> "CheckpointQueue":
        """Connect, take the writer lease, repair what an earlier process left (``recovery.py``:
        commit its spool in step order, then reconcile: the newest versions are checked byte
        for byte and the retention plan applied), then start the committer. Runs once.

        Raises:
            LeaseHeldError: another live process writes into this registered model.
            CheckpointSaveError: the spool of an earlier process could not be committed.
        """
        if self._recovered:
            return self
        self._check_open()
        self._connect()
        try:
            spool = Spool(self.store.tracking_uri, self.name, self._spool_dir)
            self._build(spool)
            self.last_reconcile = recover(self._setup, self._committer, self._pending, experiment_id=self.experiment_id,
                                          description=registered_model_description(self.alias, self.policy.best_metric))
        except BaseException:
            self._lease.release()
            raise
        log.info("%s: %s", self.name, self.policy.describe())
        warn_foreign_location(self._setup, self.experiment_id)
        clean_scratch()
        self._committer.start()
        self._recovered = True
        ref = weakref.ref(self)
        atexit.register(lambda: (q := ref()) is not None and q._close_quietly())
        return self

    def _connect(self) -> None:
        """The store, the run and experiment, the writer lease (server calls: ``recovery.connect``)."""
        self.store, self.run_id, self.experiment_id, self._lease = connect(
            self.name, registered_model_description(self.alias, self.policy.best_metric), self._lease, **self._connect_with)
        self.reader = CheckpointReader(self.name, self.alias, store=self.store)

    def _build(self, spool: Spool) -> None:
        """The parts: the setup every commit shares, the shared state, the committer, the spool writer."""
        self.spool = spool
        self._setup = QueueSetup(self.name, self.alias, self.policy, self.store, spool, self._lease, self._lease.owner,
                                 dependencies=self._dependencies)
        self._pending = Pending(probe=lambda: check_reachable(self.store.tracking_uri))
        self._committer = Committer(self._setup, self._pending, crash_hook)
        self._writer = SpoolWriter(self._setup, self._pending, crash_hook, config_yaml=self._config_yaml,
                                   extra_files=self._extra_files, run_id=self.run_id, experiment_id=self.experiment_id,
                                   files_tags=lambda: {**self._lineage, **self.parent_tags()})  # fmt: skip

    # -- public API ---------------------------------------------------------
    def save(
        self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
        metrics: Mapping[str, float] | None = None, metrics_timestamp: int | None = None,
        trainer_state: Mapping[str, Any] | None = None, attachments: Mapping[str, bytes] | None = None,
    ) -> Future | None:  # fmt: skip
        """Checkpoint ``model`` (and ``optimizer`` if ``save_optimizer``) at ``step``.

        Blocks only to copy the state to CPU memory (and, if the previous save is
        still being written to the local spool, for that disk write), never on the
        tracking server. ``metrics`` (e.g. ``{"validation/loss": 0.3}``) are linked
        to this checkpoint's model when it commits, at ``step`` and
        ``metrics_timestamp`` (ms since the epoch; default: the time of this call),
        so the MLflow UI compares checkpoints by them. The queue logs no curve of
        its own: the caller logs every validation point on the run (the training
        loop does, through its tracker, at the same timestamp, which MLflow then
        stores once); a save skipped as busy or dropped from the spool links nothing.
        ``trainer_state`` (tensors and plain values, e.g. RNG states) is stored as
        ``trainer_state.pt`` beside the checkpoint and given back by :meth:`restore`
        as :attr:`restored_trainer_state`. ``attachments`` (file name -> bytes,
        e.g. validation audio) are stored in the version beside the checkpoint,
        covered by its manifest.

        Returns:
            A future for the registered version (None as its result if the save
            was dropped from the spool for a newer one), or None if nothing was
            saved (this step is saved already, or a rolling save was skipped as
            busy). A step whose version was registered but whose retention plan
            failed is not saved again: the plan is re-applied.
        Raises:
            CheckpointSaveError: an earlier save failed in the background (it stays
                in the spool and is tried again).
            LeaseLostError: another process took over this registered model.
        """
        self._check_recovered()
        self._pending.raise_failure()
        step = int(step)
        if step < 0:
            raise ValueError(f"step={step} must be >= 0")
        kind = self.policy.kind(step)
        if self.when_busy == "skip" and kind == T.KIND_ROLLING and self._pending.busy(self._writer.writing):
            return self._skip(step)
        self._writer.wait_written()
        known = self._pending.saved_already(step, self._restored_step)
        if known is not NEW:
            return known
        started = time.perf_counter()
        state: dict[str, Any] = {"global_step": step, "model": unwrap_model(model).state_dict()}
        if self.save_optimizer and optimizer is not None:
            state["optimizer"] = portable_state(optimizer)  # upstream-loadable on any torch
        staged = self._writer.stage(state, trainer_state)
        future: Future = Future()
        with self._pending.cond:
            self._pending.futures[step] = future
        stamp = int(time.time() * 1000) if metrics_timestamp is None else int(metrics_timestamp)
        self._writer.submit(step, kind, staged, metrics or {}, time.perf_counter() - started, attachments, stamp)
        return future

    def _skip(self, step: int) -> None:
        self.skipped_saves += 1
        log.info("checkpoint at step %d skipped: an earlier save is not committed yet", step)
        return None

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                source: str | int | None = None, strict: bool = True, check: FitCheck | None = None) -> int:  # fmt: skip
        """Load the newest intact checkpoint into ``model`` (and ``optimizer``), after ``check`` (:func:`load_into`).

        Without ``source``: the alias's version; if its files are missing or fail
        their sha256, the newest intact version instead (logged as a warning; the
        alias is pointed at it, nothing is deleted). ``source`` (``models:/NAME/7``,
        ``models:/NAME@alias`` or a version number) is a starting point, e.g. to
        fine-tune from a pinned checkpoint, used only while this registered model
        has no checkpoint of its own: a restarted fine-tune resumes from its own
        newest checkpoint (as upstream uses ``model_0.pt`` only when nothing newer
        exists), saying so in one line. Later versions record what was loaded as parent.

        Returns:
            The checkpoint's global step; 0 when there is nothing to resume.
        """
        self._check_recovered()
        self._drain()
        restored = self.reader.fetch_resume_point(source)
        if restored is None:
            return 0
        load_into(restored, model, optimizer, strict=strict, check=check)
        if restored.skipped and restored.version.name == self.name:
            # Restore never deletes: the next save's plan (or `gc`) deals with the broken ones.
            self.store.set_alias(self.name, self.alias, restored.version.version)
        self._parent = restored.version
        self._restored_step = restored.step
        self.restored_trainer_state = restored.trainer_state
        return restored.step

    def flush(self) -> CheckpointVersion | None:
        """Wait until every save is committed (however long the server is away);
        return the newest registered version.

        Raises:
            CheckpointSaveError: a save failed (it stays in the spool).
        """
        self._check_recovered()
        self._drain()
        return self.last_version

    def close(self) -> None:
        """Commit pending saves, stop, and release the writer lease. Idempotent.

        While the tracking server is unavailable, waits at most ``close_timeout``
        seconds, then leaves the spool's entries for the next start (listed in
        :attr:`left_in_spool`, and in one logged line) and leaves the lease to
        expire (the next start on this machine takes it over at once).

        Raises:
            CheckpointSaveError: a save failed (it stays in the spool).
        """
        if self._closed:
            return
        self._closed = True
        if not self._recovered:  # nothing started; a lease handed to the queue is still the queue's
            if self._lease is not None and self._lease.held:
                self._lease.release()
            return
        left, error = shutdown.close(self._setup, self._pending, self._committer, self._writer, self.close_timeout)
        self.left_in_spool = left
        if error is not None:
            raise error

    def abort(self) -> list[SpooledSave]:
        """Stop at once, waiting for nothing (a second Ctrl-C); returns what stays in the spool.

        Nothing more is written or committed by this process: a save being written to the
        spool is left unfinished (its temporary folder is removed by the next start), one
        being committed stops where the process exits (a crash the commit order is designed
        for), and complete entries in the spool are committed by the next start. The lease
        is left to expire (stale at once for the next start on this machine). No server call.
        """
        self._closed = True
        if not self._recovered:
            return []
        self.left_in_spool = shutdown.abort(self._setup, self._pending, self._writer)
        return self.left_in_spool

    def __enter__(self) -> "CheckpointQueue":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.abort()  # the person wants out now: nothing is waited for
        elif exc_type is None:
            try:
                self.close()
            except KeyboardInterrupt:
                self.abort()
                raise
        else:
            self._close_quietly()  # do not mask the exception already propagating

    def register_file(self, step: int, path: str | os.PathLike, *, kind: str | None = None, description: str | None = None,
                      tags: Mapping[str, str] | None = None) -> CheckpointVersion:  # fmt: skip
        """Register an existing upstream checkpoint file as a version, its bytes unchanged.

        Runs steps 2-8 of the commit order synchronously, from a private temporary
        folder (no spool: the file itself is the durable copy). Imports of upstream
        experiment folders use it. ``kind`` overrides the policy's choice, e.g. to
        keep an imported older checkpoint forever.
        """
        self._check_recovered()
        self._drain()
        step = int(step)
        return upstream_file.register_file(
            self._setup, self._pending, self._committer, step, path, kind=kind or self.policy.kind(step),
            config_yaml=self._config_yaml, extra_files=self._extra_files, files_tags={**self._lineage, **self.parent_tags()},
            run_id=self.run_id, experiment_id=self.experiment_id, description=description, tags=tags,
        )  # fmt: skip

    # -- what the queue knows ------------------------------------------------
    @property
    def last_version(self) -> CheckpointVersion | None:
        """The newest version this queue registered (None before its first commit)."""
        return self._pending.last_version if self._recovered else None

    @property
    def dropped_from_spool(self) -> int:
        """Saves dropped from the spool because a newer one superseded them."""
        return self._writer.dropped if self._recovered else 0

    @property
    def restored_from(self) -> CheckpointVersion | None:
        """The version :meth:`restore` loaded (the parent of every later save), if any."""
        return self._parent

    def parent_tags(self) -> dict[str, str]:
        """Tags naming the version this queue's training resumed or fine-tuned from (if any)."""
        return parent_tags(self._parent)

    # -- helpers ------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"CheckpointQueue({self.name!r}) is closed")

    def _check_recovered(self) -> None:
        self._check_open()
        if not self._recovered:
            raise RuntimeError(f"CheckpointQueue({self.name!r}) was made with recover=False: call recover() first")

    def _wait_written(self) -> None:
        self._writer.wait_written()

    def _drain(self) -> None:
        """Wait until everything saved is committed (or a save failed, raised here)."""
        self._writer.wait_written()
        self._pending.wait_drained()

    def _close_quietly(self) -> None:
        try:
            self.close()
        except Exception as exc:  # noqa: BLE001 - interpreter exit or an exception already propagating
            log.error("closing the checkpoint queue of %r: %s", self.name, exc)
