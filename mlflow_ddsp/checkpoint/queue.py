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
check that the next start's reconcile (``retention.py``, ``gc.py``) restores the
invariants with nothing durable lost:

    0. stage     model (+ optimizer) state -> CPU memory     [caller thread; all that blocks]
    1. write     model_<s>.pt, trainer_state.pt, config.yaml, manifest.json into a
                 private temp folder of this OS user
                                                                        -> after_write
    2. create    a LoggedModel (PENDING) tagged queue/step/kind, the manifest's
                 sha256 (the integrity record), lineage and parent      -> after_create
    3. upload    checkpoint and config                                  -> mid_upload
                 then the manifest, last                                -> after_upload
    4. verify    the store lists every file at its manifest size
    5. finalize  LoggedModel READY                                      -> after_finalize
    6. fence     check the writer lease, then
       register  a model version, tags step/kind/sha256/size (+ the best metric),
                 set in the same call: THE COMMIT POINT                 -> after_register
       link      the LoggedModel's mlflow.modelVersions (the UI's link; cosmetic)
    7. plan      from the registry's state (versions, aliases, tags), what
                 stays (``retention.py``); the previous version is never
                 taken from memory, so a half-applied plan is finished here
       alias     move the alias (and ``best``) as planned               -> after_alias
    8. retire    each rolling version no rule keeps: registry entry     -> after_delete_version
                 then its bytes                                         -> after_delete_bytes
                 then its LoggedModel record                            -> after_delete_record

Before 6 a crash loses only this save (training resumes from the previous
checkpoint and redoes the steps); from 6 on, the new checkpoint is durable and
reconcile points the alias at it. The alias never points at anything that is
not fully uploaded and verified, and no version is deleted while it carries
the alias (MLflow would silently drop the alias with it).

Steps 1-8 run in one background thread, in order, one save at a time; the
training loop pays only for step 0. A failure surfaces at the next ``save``
or at ``close``.
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
from ..errors import CheckpointIntegrityError, CheckpointSaveError, ConfigError, LeaseLostError, MlflowDdspError
from ..tracking import DEFAULT_EXPERIMENT
from .faults import crash_point
from .files import CONFIG_FILE, MANIFEST_FILE, TRAINER_STATE_FILE, FileDigest, Manifest, write_checkpoint
from .gc import apply_plan, collect, record_policy, take_snapshot
from .lease import DEFAULT_LEASE_TTL, WriterLease
from .names import logged_model_name, validate_alias, validate_experiment_name, validate_model_name
from .policy import BEST_ALIAS, DEFAULT_ALIAS, RetentionPolicy
from .reader import CheckpointReader, load_into, unwrap_model
from .records import CheckpointVersion
from .registry import LoggedModelRef, RegistryStore
from .retention import describe_version, plan_retention
from .staging import StagingBuffer

__all__ = ["CheckpointQueue"]

log = logging.getLogger(__name__)

WHEN_BUSY = ("wait", "skip")


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
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            pass


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
        when_busy: a rolling save arriving while the previous save is still being
            written ``"wait"``s for it (default) or is ``"skip"``ped; force-saves
            always wait.
        lineage: extra tags for every version (code version, config and data
            digests...), written with the version in the same call.
        extra_files: files added to every version beside the checkpoint and
            covered by its manifest (e.g. the pyfunc ``MLmodel``).
        lease: a :class:`WriterLease` of ``registered_model`` the caller acquired
            already (e.g. before loading data); the queue releases it at close.

    Every start reconciles: the newest versions are checked byte for byte and
    the retention plan applied, so what a crash left is repaired.

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
            lease = WriterLease(self.store, self.name, ttl=lease_ttl, takeover=takeover)
            lease.acquire()
        self._lease = lease
        self._closed = False
        try:
            self.store.ensure_registered_model(self.name, self._model_description())
            self.store.record_experiment(self.name, self.experiment_id)
            record_policy(self.store, self.name, self.alias, self.policy)
            self.last_reconcile = collect(self.store, self.name, self.alias, self.policy)
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

        self._staging = StagingBuffer()
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"mlflow-ddsp-save-{self.name}", initializer=_lower_priority
        )
        self._pending: Future | None = None
        self._pending_step: int | None = None
        self._restored_step: int | None = None  # already in the registry: not saved again
        self._committed_step: int | None = None  # registered by this queue; its plan may be unapplied
        self._settled = True  # the plan after the last commit was applied
        self._parent: CheckpointVersion | None = None
        self.restored_trainer_state: dict[str, Any] | None = None  # set by restore()
        self.skipped_saves = 0
        self.last_version: CheckpointVersion | None = None
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
        still being written, to wait for it). ``metrics`` are logged at ``step`` on
        the run and linked to this checkpoint's model, so the MLflow UI compares
        checkpoints by them. ``trainer_state`` (tensors and plain values, e.g.
        RNG states) is stored as ``trainer_state.pt`` beside the checkpoint and
        given back by :meth:`restore` as :attr:`restored_trainer_state`.
        ``attachments`` (file name -> bytes, e.g. validation audio) are stored in
        the version beside the checkpoint, covered by its manifest.

        Returns:
            A future for the registered version, or None if nothing was saved
            (this step is already saved, or a rolling save was skipped as busy).
            A step whose version was registered but whose retention plan failed
            (e.g. the server went away) is not saved again: the plan is re-applied.
        Raises:
            CheckpointSaveError: the previous save failed in the background.
            LeaseLostError: another process took over this registered model.
        """
        self._check_open()
        step = int(step)
        if step < 0:
            raise ValueError(f"step={step} must be >= 0")
        kind = self.policy.kind(step)
        if self._pending is not None and not self._pending.done():
            if self.when_busy == "skip" and kind == T.KIND_ROLLING:
                self.skipped_saves += 1
                log.info("checkpoint at step %d skipped: the save of step %s is still running", step, self._pending_step)
                return None
        self._wait_pending()
        if step == self._committed_step:
            if self._settled:
                return None
            self._pending_step = step
            self._pending = self._executor.submit(self._settle_after_retry, step)
            return self._pending
        if step == self._restored_step:
            return None
        started = time.perf_counter()
        state: dict[str, Any] = {"global_step": step, "model": unwrap_model(model).state_dict()}
        if self.save_optimizer and optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
        staged = self._staging.stage({"checkpoint": state, "trainer": dict(trainer_state or {}) or None})
        blocked = time.perf_counter() - started
        self._pending_step = step
        self._pending = self._executor.submit(
            self._commit, step, kind, staged["checkpoint"], dict(metrics or {}), blocked,
            trainer_state=staged["trainer"], attachments=_attachments(attachments, self._extra_files),
        )  # fmt: skip
        return self._pending

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
        self._wait_pending()
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
        """Wait for the pending save; return the newest registered version."""
        self._check_open()
        self._wait_pending()
        return self.last_version

    def close(self) -> None:
        """Flush pending saves, stop, and release the writer lease. Idempotent."""
        if self._closed:
            return
        self._closed = True
        error: BaseException | None = None
        try:
            self._wait_pending()
        except MlflowDdspError as exc:
            error = exc
        finally:
            self._executor.shutdown(wait=True)
            try:
                self._lease.release()
            except MlflowDdspError as exc:
                log.warning("could not release the writer lease of %r: %s", self.name, exc)
        if error is not None:
            raise error

    def __enter__(self) -> "CheckpointQueue":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
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

        Runs the same protocol as :meth:`save`, synchronously (imports of
        upstream experiment folders use it). ``kind`` overrides the policy's
        choice, e.g. to keep an imported older checkpoint forever.
        """
        self._check_open()
        self._wait_pending()
        step = int(step)
        kind = kind or self.policy.kind(step)
        if kind not in T.KINDS:
            raise ConfigError(f"kind={kind!r} must be one of {', '.join(T.KINDS)}")
        return self._commit(step, kind, Path(path), {}, 0.0, description=description, tags=tags)

    # -- the protocol (background thread for save, caller for register_file) ----
    def _commit(
        self,
        step: int,
        kind: str,
        payload: dict | Path,
        metrics: dict[str, float],
        blocked: float,
        *,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
        trainer_state: Mapping[str, Any] | None = None,
        attachments: Mapping[str, bytes] | None = None,
    ) -> CheckpointVersion:
        started = time.perf_counter()
        store = self.store

        def reached(point: str) -> None:
            crash_point(point, step)

        with tempfile.TemporaryDirectory(prefix=f"{os.getpid()}-step{step}-", dir=_scratch()) as tmp:
            folder = Path(tmp)
            manifest, manifest_digest = write_checkpoint(
                folder, step, payload, self._config_yaml, {**self._extra_files, **(attachments or {})}, trainer_state
            )
            reached("after_write")
            files = store.create_files(
                self.experiment_id,
                name=logged_model_name(self.name, step),
                run_id=self.run_id,
                tags=self._files_tags(step, kind, manifest, manifest_digest),
            )
            reached("after_create")
            store.upload(files, folder / manifest.checkpoint_file)
            for name in manifest.files:
                if name != manifest.checkpoint_file:
                    store.upload(files, folder / name)
            reached("mid_upload")
            store.upload(files, folder / MANIFEST_FILE)
            reached("after_upload")
            self._verify_upload(files, manifest, manifest_digest, step)
            store.finalize(files)
            reached("after_finalize")

        # Fencing, at the commit point: a process whose lease was taken over
        # registers nothing and moves no alias (its upload is an orphan that the
        # next reconcile removes).
        self._lease.check()
        version = store.create_version(
            self.name,
            files,
            self.run_id,
            tags={**self._version_tags(step, kind, manifest, metrics), **(tags or {})},
            description=description or describe_version(
                CheckpointVersion(self.name, 0, "", None, 0, self._version_tags(step, kind, manifest, metrics)),
                (T.KIND_FORCE_SAVED, "newest") if kind == T.KIND_FORCE_SAVED else ("newest",),
                self.policy.best_metric,
            ),
        )
        self.last_version = version
        self._committed_step, self._settled = step, False
        log.info("%s: step %d committed as v%s (%s)", self.name, step, version.version, kind)
        reached("after_register")
        store.link_version(files.model_id, self.name, version.version)  # the UI's LoggedModel -> version link
        self._settle(reached)
        if self.run_id:
            timings = {
                "checkpoint/blocking_seconds": blocked,
                "checkpoint/commit_seconds": time.perf_counter() - started,
            }
            store.log_metrics(self.run_id, {**metrics, **timings}, step, model_id=files.model_id)
        return version

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

    def _settle_after_retry(self, step: int) -> CheckpointVersion | None:
        self._settle(lambda point: crash_point(point, step))
        return self.last_version

    # -- helpers ------------------------------------------------------------
    def _version_tags(self, step: int, kind: str, manifest: Manifest, metrics: Mapping[str, float]) -> dict[str, str]:
        """What identifies a checkpoint, and nothing more (the UI's version list shows these)."""
        ckpt = manifest.files[manifest.checkpoint_file]
        tags = {T.STEP: str(step), T.KIND: kind, T.SHA256: ckpt.sha256, T.SIZE: str(ckpt.size)}
        best = self.policy.best_metric
        if best is not None and best in metrics and math.isfinite(float(metrics[best])):
            tags[T.metric_tag(best)] = repr(float(metrics[best]))
        return tags

    def _files_tags(self, step: int, kind: str, manifest: Manifest, manifest_digest: FileDigest) -> dict[str, str]:
        """The LoggedModel's tags: who wrote it, the integrity record, lineage and parent."""
        return {
            **self._lineage,
            T.QUEUE: self.name,
            T.STEP: str(step),
            T.KIND: kind,
            T.CHECKPOINT_FILE: manifest.checkpoint_file,
            T.MANIFEST_SHA256: manifest_digest.sha256,
            **self.parent_tags(),
        }

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
        best = f", '{BEST_ALIAS}' the best by {self.policy.best_metric}" if self.policy.best_metric else ""
        return (
            f"DDSP-SVC checkpoints kept by mlflow-ddsp: alias '{self.alias}' is the newest checkpoint{best}. "
            "Force-saved versions are kept forever, and so is any version you give an alias of your own "
            "or the tag mlflow_ddsp.keep=true; each version's description says what keeps it."
        )

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

    def _wait_pending(self) -> None:
        pending, step = self._pending, self._pending_step
        if pending is None:
            return
        self._pending = self._pending_step = None
        try:
            pending.result()
        except LeaseLostError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised with context, nothing swallowed
            raise CheckpointSaveError(f"saving the checkpoint of step {step} failed: {exc}") from exc

    def _close_quietly(self) -> None:
        try:
            self.close()
        except Exception as exc:  # noqa: BLE001 - interpreter exit or an exception already propagating
            log.error("closing the checkpoint queue of %r: %s", self.name, exc)
