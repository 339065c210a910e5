"""CheckpointQueue: the MLflow model registry as DDSP-SVC's checkpoint folder.

The queue keeps what upstream DDSP-SVC keeps (every force-save step, plus the
newest checkpoint) as registered model versions: force-saved versions are
immutable, the newest one carries the rolling alias, and a rolling version no
rule keeps any more is deleted (registry entry and bytes) once the alias has
moved on. ``keep_last`` and ``best_metric`` keep more; a version a person
protected (an alias of theirs, or the tag ``mlflow_ddsp.keep=true``) is never
deleted. What stays is decided in one place, ``retention.py``, and deleted by
one deleter, ``gc.py``.

Commit order of one save at step ``s``. Each arrow is a named crash point
(``faults.py``); the kill tests SIGKILL a training process at every one and
check that the next start (spool upload, then reconcile: ``retention.py``,
``gc.py``) restores the invariants with nothing durable lost:

    0. stage     model (+ optimizer) state -> CPU memory     [caller thread; all that blocks]
    1. write     model_<s>.pt, trainer_state.pt, config.yaml, manifest.json and
                 spool.json into a temporary folder of the local spool  -> after_write
       spool     rename it to the spool's entry step-<s>: DURABLE ON THIS MACHINE
                 (``spool.py``); retention drops spooled rolling saves that a newer
                 one supersedes (``retention.spool_drops``)        -> after_spool
       lineage   an entry whose writer was replaced (another writer registered a
                 version after the entry's base_version: ``spool.py``) is set aside,
                 never registered: a stale step never becomes the newest, nor deletes
                 anything (issue 20); this writer's own such entry means it lost the
                 lease: it sets its whole spool aside and stops (LeaseLostError)
    2. create    a LoggedModel (PENDING) tagged queue/step/kind/writer, the manifest's
                 sha256 (the integrity record), lineage and parent      -> after_create
    3. upload    checkpoint and config                                  -> mid_upload
                 then the manifest, last                                -> after_upload
    4. verify    the store lists every file at its manifest size
    5. finalize  LoggedModel READY                                      -> after_finalize
    6. fence     check the writer lease, then
       register  a model version, tags step/kind/sha256/size (+ the best metric),
                 set in the same call: THE COMMIT POINT                 -> after_register
       unspool   remove the spool entry                                 -> after_unspool
       link      the LoggedModel's mlflow.modelVersions (the UI's link; cosmetic)
    7. plan      from the registry's state (versions, aliases, tags), what
                 stays (``retention.py``); the previous version is never
                 taken from memory, so a half-applied plan is finished here
       alias     move the alias (and ``best``) as planned               -> after_alias
    8. retire    each rolling version no rule keeps: registry entry     -> after_delete_version
                 then its bytes                                         -> after_delete_bytes
                 then its LoggedModel record                            -> after_delete_record

A crash before ``after_spool`` loses only this save (training resumes from the
previous checkpoint and redoes the steps). From ``after_spool`` on the save is
kept: the next start of a queue for this registered model on this machine
commits the spool's entries in step order before training, and an entry whose
step and sha256 the registry already holds (a crash between register and
unspool) is removed, not committed twice. The alias never points at anything
that is not fully uploaded and verified, and no version is deleted while it
carries the alias (MLflow would silently drop the alias with it).

Threads: the training loop pays only for step 0. Step 1 runs in a writer
thread (local disk; the next save waits for it, never for the server); steps
2-8 run in the committer thread, one entry at a time in step order. When the
tracking server is unreachable or failing (HTTP 5xx) the committer backs off
(1 s doubling to 30 s, probing ``/health``) and retries, while saves keep
going to the spool; any other failure surfaces at the next ``save``, ``flush``
or ``close`` and the entry stays in the spool. ``close`` waits for the spool to
empty, but gives up after ``close_timeout`` seconds of outage and leaves the
entries for the next start, saying so in one line.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from .. import tags as T
from ..errors import (
    CheckpointIntegrityError,
    CheckpointNotFoundError,
    CheckpointSaveError,
    ConfigError,
    LeaseLostError,
    MlflowDdspError,
    TrackingServerUnavailable,
    one_line,
)
from ..optimizer import portable_state
from ..tracking import DEFAULT_EXPERIMENT, RETRY_BACKOFF, check_reachable, retry_delay
from .faults import crash_point
from .files import CONFIG_FILE, MANIFEST_FILE, TRAINER_STATE_FILE, FileDigest, Manifest, write_checkpoint
from .gc import apply_plan, collect, record_policy, take_snapshot
from .lease import DEFAULT_LEASE_TTL, WriterLease, pid_running
from .names import logged_model_name, validate_alias, validate_experiment_name, validate_model_name
from .policy import BEST_ALIAS, DEFAULT_ALIAS, RetentionPolicy
from .reader import CheckpointReader, load_into, unwrap_model
from .records import CheckpointVersion
from .registry import LoggedModelRef, RegistryStore
from .retention import SpoolItem, describe_version, plan_retention, spool_drops
from .spool import Spool, SpooledSave
from .staging import StagingBuffer

__all__ = ["CheckpointQueue", "resolve_close_timeout", "CLOSE_TIMEOUT_ENV"]

log = logging.getLogger(__name__)

WHEN_BUSY = ("wait", "skip")
CLOSE_TIMEOUT_ENV = "MLFLOW_DDSP_CLOSE_TIMEOUT"
DEFAULT_CLOSE_TIMEOUT = 60.0


def registered_model_description(alias: str = DEFAULT_ALIAS, best_metric: str | None = None) -> str:
    """The description a checkpoint queue gives the registered model it creates (the UI's first line)."""
    best = f", '{BEST_ALIAS}' the best by {best_metric}" if best_metric else ""
    return (
        f"DDSP-SVC checkpoints kept by mlflow-ddsp: alias '{alias}' is the newest checkpoint{best}. "
        "Force-saved versions are kept forever, and so is any version you give an alias of your own "
        "or the tag mlflow_ddsp.keep=true; each version's description says what keeps it."
    )


def resolve_close_timeout(value: float | None = None) -> float:
    """``close_timeout`` argument, else ``MLFLOW_DDSP_CLOSE_TIMEOUT``, else 60 s.

    Raises:
        ConfigError: not a finite number >= 0 (the message names the value as given).
    """
    if value is None:
        raw = os.environ.get(CLOSE_TIMEOUT_ENV)
        if raw is None or raw.strip() == "":
            return DEFAULT_CLOSE_TIMEOUT
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:  # named as the user wrote it
            raise ConfigError(f"{CLOSE_TIMEOUT_ENV}={raw!r} must be a number of seconds >= 0")
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"close_timeout={value!r} must be a number of seconds >= 0")
    return float(value)


def _scratch_root() -> Path:
    """This OS user's own staging folder (mode 0700): users of one machine never share it."""
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"mlflow-ddsp-staging-{user}"


def _scratch() -> Path:
    root = _scratch_root()
    root.mkdir(mode=0o700, exist_ok=True)
    if hasattr(os, "getuid") and root.stat().st_uid != os.getuid():
        raise CheckpointSaveError(
            f"the staging folder {root} belongs to another user; remove it or set TMPDIR to a folder of yours"
        )
    return root


def _config_bytes(config: Mapping[str, Any] | str | os.PathLike | bytes | None) -> bytes:
    if config is None:
        return b"# no config was given to CheckpointQueue\n{}\n"
    if isinstance(config, bytes):
        return config
    if isinstance(config, Mapping):
        return yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True).encode()
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"config={str(config)!r} is not a file; pass a mapping, yaml bytes or a yaml path")
    return path.read_bytes()


def _clean_scratch() -> None:
    """Remove staging folders left by processes that died mid-save (named <pid>-...)."""
    root = _scratch_root()
    if not root.is_dir():
        return
    for entry in root.iterdir():
        pid = entry.name.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_running(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _attachments(files: Mapping[str, bytes] | None, extra_files: Mapping[str, bytes]) -> dict[str, bytes]:
    """Validate per-save attachments: plain top-level names that clash with no file of the version."""
    taken = {MANIFEST_FILE, CONFIG_FILE, TRAINER_STATE_FILE, *extra_files}
    out = {}
    for name, data in (files or {}).items():
        if "/" in name or "\\" in name or name in taken or name.startswith("model_"):
            raise ValueError(f"attachment name {name!r} is not allowed: a plain file name not used by the checkpoint")
        out[name] = bytes(data)
    return out


def _lower_priority() -> None:
    """Run the save thread at a lower CPU priority than training (Linux: per-thread nice).

    Training saturates the cores; the save only needs them while training waits.
    """
    nice = int(os.environ.get("MLFLOW_DDSP_SAVE_NICE", "10"))
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):
        pass  # not Linux, or not permitted: run at normal priority


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

    Every start first commits what an earlier process left in the spool (in
    step order), then reconciles: the newest versions are checked byte for byte
    and the retention plan applied, so what a crash left is repaired.

    Raises:
        ConfigError: a bad option (before any network call).
        LeaseHeldError: another live process writes into ``registered_model``.
        ArtifactStoreUnavailable: the store holds none of the queue's files.

    Use as a context manager, or call :meth:`close` (it flushes pending saves).
    """

    def __init__(
        self,
        registered_model: str,
        interval_val: int,
        interval_force_save: int | None,
        alias: str = DEFAULT_ALIAS,
        save_optimizer: bool = False,
        *,
        config: Mapping[str, Any] | str | os.PathLike | bytes | None = None,
        run_id: str | None = None,
        experiment: str | None = None,
        tracking_uri: str | None = None,
        store: RegistryStore | None = None,
        takeover: bool = False,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        when_busy: str = "wait",
        lineage: Mapping[str, str] | None = None,
        extra_files: Mapping[str, bytes] | None = None,
        keep_last: int = 1,
        best_metric: str | None = None,
        best_mode: str = "min",
        lease: WriterLease | None = None,
        spool_dir: str | os.PathLike | None = None,
        close_timeout: float | None = None,
    ):
        # Validate everything before the first network call.
        self.name = validate_model_name(registered_model)
        self.policy = RetentionPolicy(interval_val, interval_force_save, keep_last, best_metric, best_mode)
        self.alias = validate_alias(alias)
        if self.alias == BEST_ALIAS:
            raise ConfigError(f"alias={BEST_ALIAS!r} is the queue's alias of the best checkpoint; use another, e.g. 'rolling'")
        if experiment is not None:
            validate_experiment_name(experiment)
        if lease is not None and lease.name != self.name:
            raise ValueError(f"lease of {lease.name!r} given for registered model {self.name!r}")
        if when_busy not in WHEN_BUSY:
            raise ConfigError(f"when_busy={when_busy!r} must be one of {', '.join(WHEN_BUSY)}")
        self.when_busy = when_busy
        self.close_timeout = resolve_close_timeout(close_timeout)
        self.save_optimizer = bool(save_optimizer)
        self._config_yaml = _config_bytes(config)
        self._lineage = {str(k): str(v) for k, v in (lineage or {}).items()}
        self._extra_files = dict(extra_files or {})

        self.store = store or RegistryStore(tracking_uri)
        self.reader = CheckpointReader(self.name, self.alias, store=self.store)
        self.run_id = run_id or self._active_run_id(tracking_uri if store is None else store.tracking_uri)
        if self.run_id:
            self.experiment_id = self.store.experiment_of_run(self.run_id)
        else:
            self.experiment_id = self.store.experiment_id(experiment or DEFAULT_EXPERIMENT)

        if lease is None:
            lease = WriterLease(self.store, self.name, ttl=lease_ttl, takeover=takeover,
                                description=self._model_description())
            lease.acquire()
        self._lease = lease
        self._writer_id = lease.owner  # recorded with each save: which lineage made it (spool.py)
        self._known_version = 0  # the newest version number this writer knows (its saves' base)
        self._closed = False
        self._staging = StagingBuffer()
        self._writer = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"mlflow-ddsp-spool-{self.name}", initializer=_lower_priority
        )
        self._writing: Future | None = None  # the write of the newest save into the spool
        self._writing_step: int | None = None
        self._paused = False  # register_file commits in the caller's thread
        self._attempted: set[int] = set()  # steps whose commit started in this process
        # Shared with the committer thread, under self._cond:
        self._cond = threading.Condition()
        self._spooled: dict[int, SpooledSave] = {}  # written, not committed
        self._futures: dict[int, Future] = {}  # step -> what save() returned
        self._in_flight: int | None = None  # the step being committed
        self._after_commit: list = []  # steps 6-8 of a committed save not done yet (server went away)
        # (run id, metrics, step) of saves dropped from the spool or skipped as busy: not logged yet
        self._superseded: list[tuple[str, dict[str, float], int]] = []
        self._failure: tuple[int | None, BaseException] | None = None  # surfaces at save/flush/close
        self._held = False  # a failure was raised: no retry until the next save, flush or close
        self._outage_since: float | None = None
        self._last_progress = time.monotonic()
        self._stopping = False
        self._restored_step: int | None = None  # already in the registry: not saved again
        self._committed_step: int | None = None  # registered by this queue; its plan may be unapplied
        self._settled = True  # the plan after the last commit was applied
        self._parent: CheckpointVersion | None = None
        self.restored_trainer_state: dict[str, Any] | None = None  # set by restore()
        self.skipped_saves = 0
        self.dropped_from_spool = 0
        self.left_in_spool: list[SpooledSave] = []  # set by close() when it gave up waiting
        self.last_version: CheckpointVersion | None = None
        try:
            self.store.ensure_registered_model(self.name, self._model_description())
            self.store.record_experiment(self.name, self.experiment_id)
            record_policy(self.store, self.name, self.alias, self.policy)
            self.spool = Spool(self.store.tracking_uri, self.name, spool_dir)
            self._commit_left_spool()
            self.last_reconcile = collect(self.store, self.name, self.alias, self.policy)
            self._known_version = max((v.version for v in self.store.list_versions(self.name)), default=0)
            for line in self.last_reconcile.describe():
                log.warning("%s: repaired at start: %s", self.name, line)
        except BaseException:
            self._lease.release()
            raise
        log.info("%s: %s", self.name, self.policy.describe())
        location = self.store.foreign_experiment_location(self.experiment_id)
        if location is not None:
            log.warning(
                "%s: new checkpoints go to %s, outside this store's folder (a copied store keeps the "
                "original's paths); mlflow-ddsp never deletes files there", self.name, location,
            )  # fmt: skip
        _clean_scratch()
        # A daemon: a process exiting during an outage must not hang in MLflow's request
        # retries; dying mid-commit is a crash the commit order is designed for.
        self._committer = threading.Thread(
            target=self._run_committer, name=f"mlflow-ddsp-commit-{self.name}", daemon=True
        )
        self._committer.start()

        ref = weakref.ref(self)
        atexit.register(lambda: (q := ref()) is not None and q._close_quietly())

    # -- public API ---------------------------------------------------------
    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        metrics: Mapping[str, float] | None = None,
        trainer_state: Mapping[str, Any] | None = None,
        attachments: Mapping[str, bytes] | None = None,
    ) -> Future | None:
        """Checkpoint ``model`` (and ``optimizer`` if ``save_optimizer``) at ``step``.

        Blocks only to copy the state to CPU memory (and, if the previous save is
        still being written to the local spool, for that disk write), never on the
        tracking server. ``metrics`` are logged at ``step`` on the run and linked
        to this checkpoint's model, so the MLflow UI compares checkpoints by them.
        ``trainer_state`` (tensors and plain values, e.g. RNG states) is stored as
        ``trainer_state.pt`` beside the checkpoint and given back by :meth:`restore`
        as :attr:`restored_trainer_state`. ``attachments`` (file name -> bytes,
        e.g. validation audio) are stored in the version beside the checkpoint,
        covered by its manifest.

        Returns:
            A future for the registered version (None as its result if the save
            was dropped from the spool for a newer one; its ``metrics`` are still
            logged on the run, linked to no checkpoint), or None if nothing was
            saved (this step is saved already, or a rolling save was skipped as
            busy). A step whose version was registered but whose retention plan
            failed is not saved again: the plan is re-applied.
        Raises:
            CheckpointSaveError: an earlier save failed in the background (it stays
                in the spool and is tried again).
            LeaseLostError: another process took over this registered model.
        """
        self._check_open()
        self._raise_failure()
        step = int(step)
        if step < 0:
            raise ValueError(f"step={step} must be >= 0")
        kind = self.policy.kind(step)
        if self.when_busy == "skip" and kind == T.KIND_ROLLING and self._busy():
            self.skipped_saves += 1
            log.info("checkpoint at step %d skipped: an earlier save is not committed yet", step)
            if self.run_id and metrics:  # the checkpoint is skipped, not the validation point
                with self._cond:
                    self._superseded.append((self.run_id, {k: float(v) for k, v in metrics.items()}, step))
                    self._cond.notify_all()
            return None
        self._wait_written()
        with self._cond:
            if step == self._committed_step:
                if self._settled:
                    return None
                future = self._futures.setdefault(step, Future())
                self._after_commit = self._after_commit or [lambda: self._settle(self._crash_hook(step))]
                self._held = False
                self._cond.notify_all()
                return future
            if step == self._restored_step:
                return None
            if step in self._spooled:  # saved already, waiting in the spool
                if step in self._futures:
                    return None
                self._held = False  # its commit failed: try again, and follow that
                self._cond.notify_all()
                return self._futures.setdefault(step, Future())
        started = time.perf_counter()
        state: dict[str, Any] = {"global_step": step, "model": unwrap_model(model).state_dict()}
        if self.save_optimizer and optimizer is not None:
            state["optimizer"] = portable_state(optimizer)  # upstream-loadable on any torch
        staged = self._staging.stage({"checkpoint": state, "trainer": dict(trainer_state or {}) or None})
        blocked = time.perf_counter() - started
        future: Future = Future()
        with self._cond:
            self._futures[step] = future
        self._writing_step = step
        self._writing = self._writer.submit(
            self._spool_save, step, kind, staged["checkpoint"], dict(metrics or {}), blocked,
            trainer_state=staged["trainer"], attachments=_attachments(attachments, self._extra_files),
        )  # fmt: skip
        return future

    def restore(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        source: str | int | None = None,
        strict: bool = True,
    ) -> int:
        """Load the newest intact checkpoint into ``model`` (and ``optimizer``).

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
        self._check_open()
        self._drain()
        if source is not None:
            own = self.reader.candidates()
            if own:
                log.warning(
                    "%s already has checkpoints: resuming from %s, not from the starting point %s "
                    "(used only while it has none)", self.name, own[0].label, source,
                )  # fmt: skip
                source = None
        restored = self.reader.fetch(source)
        if restored is None:
            return 0
        load_into(restored, model, optimizer, strict=strict)
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
        self._check_open()
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
        error: BaseException | None = None
        try:
            self._wait_written()
        except MlflowDdspError as exc:
            error = exc
        self._release_hold()
        gave_up = self._wait_committed(self.close_timeout)
        with self._cond:
            self._stopping = True
            failure, self._failure = self._failure, None
            left = sorted(self._spooled.values(), key=lambda e: e.step)
            self._cond.notify_all()
        self._committer.join(timeout=1.0 if gave_up else None)
        self._writer.shutdown(wait=True)
        if error is None and failure is not None:
            error = self._save_error(*failure)
        if left:
            self.left_in_spool = left
            why = (f"the tracking server {self.store.tracking_uri} has been unavailable for {self.close_timeout:g} s"
                   if gave_up else "a save failed")  # fmt: skip
            log.warning(
                "%s: %s: %s stay in the spool and are committed when a queue of %r starts on this machine "
                "(e.g. `mlflow-ddsp train` again)", self.name, why, self.spool.describe(left), self.name,
            )  # fmt: skip
        if not gave_up:
            try:  # releasing is a server call: one that hangs would hold close() for MLflow's retries
                check_reachable(self.store.tracking_uri)
            except TrackingServerUnavailable as exc:
                log.warning("%s: the writer lease is left to expire: %s", self.name, exc)
                gave_up = True
        if gave_up:
            self._lease.abandon()  # no server to release it on; it is stale for this machine at once
        else:
            try:
                self._lease.release()
            except MlflowDdspError as exc:
                log.warning("could not release the writer lease of %r: %s", self.name, exc)
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
        with self._cond:
            self._stopping = True
            left = sorted(self._spooled.values(), key=lambda e: e.step)
            self._cond.notify_all()
        self._closed = True
        self._writer.shutdown(wait=False, cancel_futures=True)
        self._lease.abandon()
        self.left_in_spool = left
        return left

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

    def register_file(
        self,
        step: int,
        path: str | os.PathLike,
        *,
        kind: str | None = None,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> CheckpointVersion:
        """Register an existing upstream checkpoint file as a version, its bytes unchanged.

        Runs steps 2-8 of the commit order synchronously, from a private temporary
        folder (no spool: the file itself is the durable copy). Imports of upstream
        experiment folders use it. ``kind`` overrides the policy's choice, e.g. to
        keep an imported older checkpoint forever.
        """
        self._check_open()
        self._drain()
        step = int(step)
        kind = kind or self.policy.kind(step)
        if kind not in T.KINDS:
            raise ConfigError(f"kind={kind!r} must be one of {', '.join(T.KINDS)}")
        with self._cond:
            self._paused = True
        try:
            return self._register_file(step, Path(path), kind, description, tags)
        finally:
            with self._cond:
                self._paused = False
                self._cond.notify_all()

    def _register_file(self, step, path, kind, description, tags) -> CheckpointVersion:
        with tempfile.TemporaryDirectory(prefix=f"{os.getpid()}-step{step}-", dir=_scratch()) as tmp:
            manifest, digest = write_checkpoint(Path(tmp), step, path, self._config_yaml, self._extra_files, None)
            entry = SpooledSave(
                step=step, kind=kind, folder=Path(tmp), manifest=manifest, manifest_digest=digest,
                run_id=self.run_id, experiment_id=self.experiment_id,
                files_tags=self._files_tags(step, kind, manifest, digest),
            )  # fmt: skip
            version = self._commit(entry, self._crash_hook(step), description=description, tags=tags, spooled=False)
        self._finish_commit()
        return version

    # -- step 1: the writer thread ------------------------------------------
    def _spool_save(self, step, kind, payload, metrics, blocked, *, trainer_state, attachments) -> None:
        reached = self._crash_hook(step)
        try:
            entry = self.spool.write(
                step, kind, payload, self._config_yaml, {**self._extra_files, **attachments}, trainer_state,
                metrics=metrics, blocked_seconds=blocked, run_id=self.run_id, experiment_id=self.experiment_id,
                files_tags={**self._lineage, **self.parent_tags()}, writer=self._writer_id,
                base_version=self._known_version, after_write=lambda: reached("after_write"),
            )  # fmt: skip
        except BaseException as exc:
            with self._cond:
                future = self._futures.pop(step, None)
            if future is not None and not future.done():
                future.set_exception(exc)
            raise
        reached("after_spool")
        with self._cond:
            self._spooled[step] = entry
            items = [SpoolItem(e.step, e.kind, e.metrics) for e in self._spooled.values()]
            dropped = [self._spooled.pop(s) for s in sorted(spool_drops(items, self.policy, in_flight=self._in_flight))]
            futures = [self._futures.pop(e.step, None) for e in dropped]
            self._supersede(dropped)
            self._held = False  # after a failure, the committer tries again with the newest spool
            self._cond.notify_all()
        for entry, future in zip(dropped, futures):
            self.spool.remove(entry)
            self.dropped_from_spool += 1
            log.info("%s: step %d dropped from the spool: step %d supersedes it", self.name, entry.step, step)
            if future is not None and not future.done():
                future.set_result(None)

    # -- steps 2-8: the committer thread -------------------------------------
    def _run_committer(self) -> None:
        _lower_priority()
        attempt = 0
        while True:
            with self._cond:
                while not self._stopping and (
                    self._failure is not None or self._held or self._paused or not self._has_work()
                ):
                    self._cond.wait()
                if self._stopping:
                    return
                entry = None
                if not self._after_commit and self._spooled:
                    entry = min(self._spooled.values(), key=lambda e: e.step)
                    self._in_flight = entry.step
                step = entry.step if entry is not None else self._committed_step
            try:
                if attempt:
                    check_reachable(self.store.tracking_uri)  # a cheap probe before MLflow's long retries
                self._log_superseded()
                if entry is not None:
                    version = self._commit(entry, self._crash_hook(entry.step))
                else:
                    version = None
                self._finish_commit()
            except TrackingServerUnavailable as exc:
                attempt += 1
                delay = retry_delay(attempt)
                with self._cond:
                    self._in_flight = None
                    first = self._outage_since is None
                    if first:
                        self._outage_since = time.monotonic()
                    waiting = sorted(self._spooled.values(), key=lambda e: e.step)
                    self._cond.notify_all()
                if first or attempt % 10 == 0:
                    log.warning(
                        "%s: %s; %s wait%s; training goes on, retrying (every %g s at most)",
                        self.name, exc, self.spool.describe(waiting) if waiting else "the last save's plan",
                        "" if len(waiting) == 1 else "s", RETRY_BACKOFF[-1],
                    )  # fmt: skip
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, timeout=delay)
                continue
            except BaseException as exc:  # noqa: BLE001 - handed to the caller at save/flush/close
                if isinstance(exc, LeaseLostError):
                    self._set_aside_own(exc)
                with self._cond:
                    self._in_flight = None
                    self._failure = (step, exc)
                    future = self._futures.pop(step, None) if step is not None else None
                    self._cond.notify_all()
                if future is not None and not future.done():
                    future.set_exception(exc)
                continue
            with self._cond:
                self._in_flight = None
                if self._outage_since is not None:
                    log.warning("%s: the tracking server answers again after %.0f s; committing the spool",
                                self.name, time.monotonic() - self._outage_since)  # fmt: skip
                self._outage_since = None
                self._last_progress = time.monotonic()
                future = self._futures.pop(step, None) if step is not None else None
                self._cond.notify_all()
            attempt = 0
            if future is not None and not future.done():
                future.set_result(version if version is not None else self.last_version)

    def _supersede(self, dropped: list[SpooledSave]) -> None:
        """Hold the metrics of saves dropped from the spool for :meth:`_log_superseded` (under ``_cond``)."""
        self._superseded += [(e.run_id, e.metrics, e.step) for e in dropped if e.run_id and e.metrics]

    def _log_superseded(self) -> None:
        """Log the metrics of saves dropped from the spool or skipped as busy on their run,
        linked to no checkpoint: the run's curves keep every validation point. Each is logged
        once, before the next commit (so before the superseding save's own); a crash or a
        ``close`` that gives up on an outage loses only these metric points, never a checkpoint."""
        while True:
            with self._cond:
                if not self._superseded:
                    return
                run_id, metrics, step = self._superseded[0]
            self.store.log_metrics(run_id, metrics, step)
            with self._cond:
                self._superseded.pop(0)

    def _has_work(self) -> bool:
        return bool(self._spooled or self._after_commit or self._superseded)

    def _commit(
        self,
        entry: SpooledSave,
        reached,
        *,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
        spooled: bool = True,
        dedupe: bool = False,
    ) -> CheckpointVersion | None:
        """Steps 2-6 for one entry; queues steps 6 (link) to 8 in ``_after_commit``.

        Returns None for an entry of a replaced lineage, set aside instead (:meth:`_stale`).
        """
        started = time.perf_counter()
        store, step, kind = self.store, entry.step, entry.kind
        # A step tried before (in this process, or by the process that spooled it) may
        # have reached the commit point already: never register it twice.
        dedupe = dedupe or step in self._attempted or entry.written_by != os.getpid()
        self._attempted.add(step)
        versions = self.store.list_versions(self.name) if dedupe or spooled else []
        if dedupe:
            done = self._registered(entry, versions)
            if done is not None:
                log.warning("%s: step %d of the spool is registered already (v%s): not committed twice",
                            self.name, step, done.version)  # fmt: skip
                self._committed(entry, done, spooled)
                return done
        if spooled:
            replaced = self._replaced_by(entry, versions)
            if replaced is not None:
                return self._stale(entry, replaced)
        files = store.create_files(
            entry.experiment_id,
            name=logged_model_name(self.name, step),
            run_id=entry.run_id,
            tags={**entry.files_tags, **self._identity_tags(step, kind, entry.manifest, entry.manifest_digest, entry.writer)},
        )
        reached("after_create")
        manifest = entry.manifest
        store.upload(files, entry.folder / manifest.checkpoint_file)
        for name in manifest.files:
            if name != manifest.checkpoint_file:
                store.upload(files, entry.folder / name)
        reached("mid_upload")
        store.upload(files, entry.folder / MANIFEST_FILE)
        reached("after_upload")
        self._verify_upload(files, manifest, entry.manifest_digest, step)
        store.finalize(files)
        reached("after_finalize")

        # Fencing, at the commit point: a process whose lease was taken over
        # registers nothing and moves no alias (its upload is an orphan that the
        # next reconcile removes).
        self._lease.check()
        version_tags = self._version_tags(step, kind, manifest, entry.metrics)
        version = store.create_version(
            self.name,
            files,
            entry.run_id,
            tags={**version_tags, **(tags or {})},
            description=description or describe_version(
                CheckpointVersion(self.name, 0, "", None, 0, version_tags),
                (T.KIND_FORCE_SAVED, "newest") if kind == T.KIND_FORCE_SAVED else ("newest",),
                self.policy.best_metric,
            ),
        )
        log.info("%s: step %d committed as v%s (%s)", self.name, step, version.version, kind)
        reached("after_register")
        self._committed(entry, version, spooled)
        reached("after_unspool")

        def link_and_log() -> None:
            store.link_version(files.model_id, self.name, version.version)  # the UI's LoggedModel -> version link
            # The experiment's Models tab shows a LoggedModel's metrics, then its params, as columns:
            # the checkpoint's own metrics (validation) are linked to it, its step and kind are params;
            # the commit's timings go to the run only (not columns of every checkpoint).
            store.log_model_params(files.model_id, {"step": step, "kind": kind})
            if entry.run_id:  # the UI's run -> LoggedModel link: the run page's "Logged models"
                store.log_model_output(entry.run_id, files.model_id, step)
                if entry.metrics:
                    store.log_metrics(entry.run_id, entry.metrics, step, model_id=files.model_id)
                timings = {
                    "checkpoint/blocking_seconds": entry.blocked_seconds,
                    "checkpoint/commit_seconds": time.perf_counter() - started,
                }
                store.log_metrics(entry.run_id, timings, step)

        with self._cond:
            self._after_commit = [link_and_log, lambda: self._settle(reached)]
        return version

    def _committed(self, entry: SpooledSave, version: CheckpointVersion, spooled: bool) -> None:
        """After the commit point: remember the version, take the entry out of the spool."""
        with self._cond:
            self.last_version = version
            self._known_version = max(self._known_version, version.version)
            self._committed_step, self._settled = entry.step, False
            self._after_commit = [lambda: self._settle(self._crash_hook(entry.step))]
            if spooled:
                self._spooled.pop(entry.step, None)
        if spooled:
            self.spool.remove(entry)

    def _finish_commit(self) -> None:
        """Steps 6 (link) to 8 still to do, in order; each is dropped once done."""
        while True:
            with self._cond:
                if not self._after_commit:
                    return
                task = self._after_commit[0]
            task()
            with self._cond:
                if self._after_commit and self._after_commit[0] is task:
                    self._after_commit.pop(0)

    def _replaced_by(self, entry: SpooledSave, versions: list[CheckpointVersion]) -> CheckpointVersion | None:
        """The newest version another writer registered after ``entry``'s writer last knew
        the registry (``entry.base_version``), if any: then ``entry`` is of a replaced lineage.

        "Newest" means the newest of the committed lineage (issue 20): a version number
        alone would make a stale step the newest. Entries written before the record
        existed (no base) are committed as before.
        """
        if entry.base_version is None or not entry.writer:
            return None
        later = sorted((v for v in versions if v.is_queue_version and v.version > entry.base_version),
                       key=CheckpointVersion.newness, reverse=True)  # fmt: skip
        for v in later:
            try:
                writer = self.store.get_files(v.model_id).tags.get(T.WRITER)
            except CheckpointNotFoundError:  # its files' record is gone: not known to be this lineage's
                writer = None
            if writer != entry.writer:
                return v
        return None

    def _stale(self, entry: SpooledSave, replaced: CheckpointVersion) -> None:  # -> _commit's None
        """An entry of a replaced lineage: never registered (it would become the newest and
        retire what the other writer committed). This writer's own: it lost the lease."""
        if entry.writer == self._writer_id:
            self._lease.check()  # says who took over, if the lease says so
            raise LeaseLostError(
                f"{replaced.label} was registered by another writer after this one's last commit "
                f"(v{entry.base_version}); this process stopped writing checkpoints"
            )
        with self._cond:
            self._spooled.pop(entry.step, None)
        aside = self.spool.set_aside(entry)
        log.warning(
            "%s: step %d in the spool was written by a training that another one replaced (it has "
            "committed %s since), so it is not committed and deletes nothing: set aside in %s (to keep it, "
            "import it into another registered model: `mlflow-ddsp import %s --name %s-step-%d`; or delete it)",
            self.name, entry.step, replaced.label, aside, aside, self.name, entry.step,
        )  # fmt: skip
        return None

    def _set_aside_own(self, why: BaseException) -> None:
        """A fenced writer's uncommitted saves leave the spool: no later start commits them."""
        with self._cond:
            entries = sorted(self._spooled.values(), key=lambda e: e.step)
            self._spooled.clear()
        if not entries:
            return
        places = []
        for entry in entries:
            try:
                places.append(str(self.spool.set_aside(entry)))
            except OSError:  # already set aside (or committed) by the process that replaced this one
                continue
        if places:
            log.error(
                "%s: %s; its uncommitted step%s %s %s set aside in %s, not committed (to keep one, import it "
                "into another registered model: `mlflow-ddsp import FOLDER --name OTHER`; or delete them)", self.name, one_line(why),
                "s" if len(entries) > 1 else "", ", ".join(str(e.step) for e in entries),
                "were" if len(entries) > 1 else "was", ", ".join(places),
            )  # fmt: skip

    def _registered(self, entry: SpooledSave, versions: list[CheckpointVersion]) -> CheckpointVersion | None:
        """The version of this queue holding exactly ``entry``'s checkpoint, if any."""
        for v in versions:
            if v.is_queue_version and v.step == entry.step and v.sha256 == entry.checkpoint.sha256:
                return v
        return None

    def _commit_left_spool(self) -> None:
        """At start: commit what an earlier process left in the spool, in step order."""
        entries = self.spool.entries(verify=True)
        if not entries:
            return
        drops = spool_drops([SpoolItem(e.step, e.kind, e.metrics) for e in entries], self.policy)
        with self._cond:  # logged by the first commit below
            self._supersede([e for e in entries if e.step in drops])
        for entry in entries:
            if entry.step in drops:
                self.spool.remove(entry)
        kept = [e for e in entries if e.step not in drops]
        log.warning("%s: committing %s left by an earlier process", self.name, self.spool.describe(kept))
        for entry in kept:
            try:
                self._log_superseded()
                self._commit(entry, self._crash_hook(entry.step), dedupe=True)
                self._finish_commit()
            except MlflowDdspError as exc:
                raise CheckpointSaveError(
                    f"could not commit step {entry.step} from the spool {self.spool.folder}: {exc}; fix that and "
                    "start again (the spool is kept), or move that folder away to go on without it"
                ) from exc

    def _verify_upload(self, files: LoggedModelRef, manifest: Manifest, manifest_digest: FileDigest, step: int) -> None:
        listed = self.store.list_sizes(files)
        expected = {**{n: d.size for n, d in manifest.files.items()}, MANIFEST_FILE: manifest_digest.size}
        wrong = {n: (listed.get(n), size) for n, size in expected.items() if listed.get(n) != size}
        if wrong:
            detail = ", ".join(f"{n}: {got} bytes, expected {want}" for n, (got, want) in sorted(wrong.items()))
            raise CheckpointIntegrityError(f"upload of step {step} to {files.artifact_location} is incomplete ({detail})")

    def _settle(self, reached=lambda point: None) -> None:
        """Steps 7-8: plan from the registry's state and apply (aliases, then deletions)."""
        snapshot = take_snapshot(self.store, self.name, with_files=False)
        # Right after a commit nothing is checked: only evidence counts as damage.
        plan = plan_retention(snapshot, self.policy, self.alias)
        if plan.alias_taken:
            raise ConfigError(f"alias={self.alias!r} of {self.name!r} was set by someone else; nothing was moved")
        apply_plan(self.store, self.name, plan, reached)
        self._settled = True

    # -- helpers ------------------------------------------------------------
    def _version_tags(self, step: int, kind: str, manifest: Manifest, metrics: Mapping[str, float]) -> dict[str, str]:
        """What identifies a checkpoint, and nothing more (the UI's version list shows these)."""
        ckpt = manifest.files[manifest.checkpoint_file]
        tags = {T.STEP: str(step), T.KIND: kind, T.SHA256: ckpt.sha256, T.SIZE: str(ckpt.size)}
        best = self.policy.best_metric
        if best is not None and best in metrics and math.isfinite(float(metrics[best])):
            tags[T.metric_tag(best)] = repr(float(metrics[best]))
        return tags

    def _identity_tags(
        self, step: int, kind: str, manifest: Manifest, manifest_digest: FileDigest, writer: str | None = None
    ) -> dict[str, str]:
        """The LoggedModel's tags saying who wrote it and its integrity record."""
        return {
            T.QUEUE: self.name,
            T.WRITER: writer or self._writer_id,
            T.STEP: str(step),
            T.KIND: kind,
            T.CHECKPOINT_FILE: manifest.checkpoint_file,
            T.MANIFEST_SHA256: manifest_digest.sha256,
        }

    def _files_tags(self, step: int, kind: str, manifest: Manifest, manifest_digest: FileDigest) -> dict[str, str]:
        """The LoggedModel's tags: who wrote it, the integrity record, lineage and parent."""
        return {**self._lineage, **self._identity_tags(step, kind, manifest, manifest_digest), **self.parent_tags()}

    @property
    def restored_from(self) -> CheckpointVersion | None:
        """The version :meth:`restore` loaded (the parent of every later save), if any."""
        return self._parent

    def parent_tags(self) -> dict[str, str]:
        """Tags naming the version this queue's training resumed or fine-tuned from (if any)."""
        parent = self._parent
        if parent is None:
            return {}
        tags = {T.PARENT_MODEL: parent.name, T.PARENT_VERSION: str(parent.version), T.PARENT_STEP: str(parent.step)}
        if parent.run_id:
            tags[T.PARENT_RUN] = parent.run_id
        return tags

    def _model_description(self) -> str:
        return registered_model_description(self.alias, self.policy.best_metric)

    @staticmethod
    def _active_run_id(tracking_uri: str | None) -> str | None:
        if tracking_uri is not None:
            return None  # the fluent active run belongs to the global tracking URI
        import mlflow

        run = mlflow.active_run()
        return run.info.run_id if run else None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"CheckpointQueue({self.name!r}) is closed")

    def _crash_hook(self, step: int):
        return lambda point: crash_point(point, step)

    def _busy(self) -> bool:
        with self._cond:
            return bool(self._spooled) or self._in_flight is not None or (
                self._writing is not None and not self._writing.done()
            )

    def _save_error(self, step: int | None, exc: BaseException) -> BaseException:
        if isinstance(exc, LeaseLostError):
            return exc
        what = f"the checkpoint of step {step}" if step is not None else "a checkpoint"
        error = CheckpointSaveError(f"saving {what} failed: {exc}")
        error.__cause__ = exc
        return error

    def _raise_failure(self) -> None:
        """Raise a background failure once; the committer tries again at the next save, flush or close."""
        with self._cond:
            failure, self._failure = self._failure, None
            if failure is not None:
                self._held = True
        if failure is not None:
            raise self._save_error(*failure)

    def _release_hold(self) -> None:
        with self._cond:
            if self._held:
                self._held = False
                self._cond.notify_all()

    def _wait_written(self) -> None:
        pending, step = self._writing, self._writing_step
        if pending is None:
            return
        self._writing = self._writing_step = None
        try:
            pending.result()
        except Exception as exc:  # noqa: BLE001 - re-raised with context, nothing swallowed
            try:  # torch reports a full disk in its own words ("unexpected pos"): say what is free
                free = f" (the disk holding it has {shutil.disk_usage(self.spool.folder).free / 1e6:,.0f} MB free)"
            except OSError:
                free = ""
            raise CheckpointSaveError(
                f"writing the checkpoint of step {step} to the spool {self.spool.folder} failed{free}: "
                f"{one_line(exc)}; set MLFLOW_DDSP_SPOOL_DIR to a folder on a disk with room"
            ) from exc

    def _drain(self) -> None:
        """Wait until everything saved is committed (or a save failed, raised here)."""
        self._wait_written()
        self._release_hold()
        with self._cond:
            self._cond.wait_for(lambda: not self._has_work() or self._failure is not None)
        self._raise_failure()

    def _wait_committed(self, bound: float) -> bool:
        """Wait for the spool to empty; True if the server stayed unavailable for ``bound`` s first."""
        started = time.monotonic()
        while True:
            with self._cond:
                if not self._has_work() or self._failure is not None:
                    return False
                now = time.monotonic()
                if self._outage_since is not None and now - max(self._outage_since, started) >= bound:
                    return True
                stalled = now - max(self._last_progress, started) >= bound
                if not stalled:
                    self._cond.wait(timeout=0.5)
                    continue
            try:  # no commit for `bound` s: the committer may be inside MLflow's retries of a dead server
                check_reachable(self.store.tracking_uri)
            except TrackingServerUnavailable:
                return True
            with self._cond:
                self._cond.wait(timeout=0.5)

    def _close_quietly(self) -> None:
        try:
            self.close()
        except Exception as exc:  # noqa: BLE001 - interpreter exit or an exception already propagating
            log.error("closing the checkpoint queue of %r: %s", self.name, exc)
