"""One training session: config -> data, model, run, checkpoint queue -> the loop.

This is the I/O shell around :mod:`mlflow_ddsp.training.loop`: it opens the
MLflow run (or joins the one ``mlflow run`` created), resumes from the
registry, installs the Ctrl-C / SIGTERM handlers, and closes everything in
order whatever happens: the loop saves its last step, the queue flushes, the
run ends FINISHED, KILLED or FAILED.

One training, one run (issue 23): a start that resumes a training continues
that training's run (same run id, status back to RUNNING) unless the run is
FINISHED; see :func:`_run_to_continue`. A run stopped by SIGINT/SIGTERM after
its save ends FINISHED with the tags ``mlflow_ddsp.stopped_by`` and
``mlflow_ddsp.stopped_at_step``; a second Ctrl-C (abort) leaves it KILLED, an
error FAILED, a killed process RUNNING: each of these is continued by the next start.
Where a start cannot continue it (`mlflow run` imposed its own run, ``--new-run``,
``--takeover``), the new run is tagged ``mlflow_ddsp.continues`` and the old one, once
its writer is gone, ``mlflow_ddsp.continued_by`` and, if RUNNING, ended KILLED.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .. import tags as T
from ..checkpoint.dependencies import DependencyRecord
from ..checkpoint.lease import WriterLease
from ..checkpoint.lease_holder import LeaseHolder
from ..checkpoint.options import registered_model_description, resolve_close_timeout
from ..checkpoint.queue import CheckpointQueue
from ..checkpoint.reader import CheckpointReader, load_into
from ..checkpoint.spool import Spool, SpooledSave, check_spool_root
from ..config import Config, load_config
from ..corpus import dataset_digest, list_audio
from ..errors import CheckpointNotFoundError
from ..device import resolve_device
from ..lineage import code_version, environment_versions
from ..loss import FixedScaleSpectralLoss, RandomScaleSpectralLoss
from ..models import architecture, build_model_from_config
from ..optimizer import build_optimizer
from ..store import RegistryStore, RunRecord
from ..store.location import resolve_tracking_uri
from ..serving.dependencies import check_same_dependencies, registered_dependencies
from ..serving.model_files import pyfunc_files
from ..subnormals import flushed_subnormals, subnormals_flushed
from ..vocoder import open_vocoder
from .checkpoint_fit import check_fit, check_resume_architecture
from .data import FeatureProvenance, check_recordings, make_loaders
from .distributed import DistributedContext, NullCheckpointer, NullTracker
from .loop import TrainLoop
from .objective import MelObjective, step_lr
from .pretrained import check_pretrained, is_model_uri, load_pretrained, pretrained_file
from .tracker import MlflowTracker
from .trainer_state import TrainerState, seed_everything

__all__ = ["TrainResult", "train", "training_cpu_settings", "training_threads", "intra_op_threads"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_id: str  # "" on ranks other than 0
    registered_model: str
    start_step: int
    final_step: int
    stopped_by: str | None  # "SIGINT" / "SIGTERM" when interrupted, else None
    is_main: bool = True
    left_in_spool: str = ""  # e.g. "2 checkpoints (steps 90, 100; 88.2 MB) in /path": not committed yet


class _StopOnSignals:
    """First Ctrl-C / SIGTERM: finish the step, save, exit. A second Ctrl-C: abort at once.

    Installed when the training loop starts and kept until the run has ended, so a
    second Ctrl-C also cuts short the wait for the last save's commit (the checkpoint
    queue's ``abort``: nothing more is saved; what is already in the local spool is
    committed by the next start). Handlers can only be installed from the main thread;
    elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self.signal: str | None = None  # "SIGINT" / "SIGTERM" once received
        self.aborted = False  # a second Ctrl-C
        self._stop: threading.Event | None = None
        self._previous: dict = {}

    def install(self, stop: threading.Event) -> None:
        self._stop = stop
        if threading.current_thread() is threading.main_thread() and not self._previous:
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self._stop.is_set() and signum == signal.SIGINT:
            self.aborted = True
            log.warning("second Ctrl-C: aborted without saving more (what is already in the local spool is "
                        "committed by the next start)")  # fmt: skip
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint of the current step, then stopping "
                    "(Ctrl-C again to abort without saving)", self.signal)  # fmt: skip
        self._stop.set()


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[_StopOnSignals]:
    """:class:`_StopOnSignals` for one block."""
    signals = _StopOnSignals()
    signals.install(stop)
    try:
        yield signals
    finally:
        signals.restore()


def train(
    config: str | os.PathLike | Config,
    overrides: Sequence[str] = (),
    *,
    tracking_uri: str | None = None,
    takeover: bool = False,
    init_from: str | None = None,
    progress: bool = True,
    new_run: bool = False,
) -> TrainResult:
    """Train (or resume) the model a config describes, tracked in MLflow.

    Under ``torchrun`` every process calls this; rank 0 owns the MLflow run and
    the checkpoint queue (see :mod:`mlflow_ddsp.training.distributed`).

    Args:
        config: a yaml path (with ``overrides`` like ``train.lr=1e-4``) or a Config.
        tracking_uri: default ``MLFLOW_TRACKING_URI``, else the embedded store.
        takeover: take the registered model's writer lease from a live process.
        init_from: start from this pinned version (``models:/NAME/7``), or an upstream
            checkpoint file (``model_0.pt``, loaded non-strictly as upstream does: see
            :mod:`mlflow_ddsp.training.pretrained`), instead of resuming from the rolling
            alias, e.g. to fine-tune. Used only while the registered model has no checkpoint.
        new_run: log to a new MLflow run even where the training resumed continues one
            (by default a resumed training that is not FINISHED continues its run:
            :func:`_run_to_continue`). ``takeover`` also starts a new run.
    """
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    close_timeout = resolve_close_timeout()  # the environment is refused before any work, as the config is
    check_spool_root(resolve_tracking_uri(tracking_uri))
    ctx = DistributedContext.from_environment()
    device = ctx.device(resolve_device(cfg.device))  # refuses a device this machine lacks
    with training_cpu_settings(cfg, device):
        return _train(cfg, ctx, device, tracking_uri, takeover, init_from, progress, close_timeout, new_run)


@contextmanager
def training_cpu_settings(cfg: Config, device: torch.device) -> Iterator[None]:
    """Run the block with the CPU settings training uses, then restore them; on other devices, none.

    ``train.num_threads`` (:func:`training_threads`) first, then subnormal floats
    flushed to zero (:mod:`mlflow_ddsp.subnormals`): the flush reaches the thread
    team torch has when it is entered. Warns when only the calling thread flushes.
    """
    with intra_op_threads(training_threads(cfg, device)), flushed_subnormals(device.type == "cpu") as flushing:
        if flushing and not subnormals_flushed():
            log.warning("subnormal floats are flushed on this thread only, not on torch's other compute threads "
                        "(no OpenMP runtime found in libtorch); on Intel CPUs training may slow as the model "
                        "trains: set train.num_threads: 1")  # fmt: skip
        yield


def training_threads(cfg: Config, device: torch.device) -> int | None:
    """Intra-op CPU threads to train with: ``train.num_threads`` on the CPU; None (torch's own) otherwise.

    Torch's default, one thread per core, is the fastest on idle cores: on this
    project's idle 2-core machine upstream's trainer at 2 threads ran 6.2 steps/s
    where ours at 1 thread ran 3.8 (``bench/train_throughput.py``). It collapses when
    the cores are busy with other work: each operator ends in a barrier that waits
    for the slowest thread, and a thread the OS has paused stalls the step (at load
    ~12, a demo step cost 1.6-3.2 s of CPU with 2 threads against 0.26 s with 1).
    ``train.num_threads: 1`` is the setting for shared machines.
    """
    if device.type != "cpu":
        return None
    return cfg.train.num_threads


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (None: unchanged), then restore."""
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def _train(cfg: Config, ctx: DistributedContext, device: torch.device, tracking_uri: str | None, takeover: bool,
           init_from: str | None, progress: bool, close_timeout: float, new_run: bool = False) -> TrainResult:  # fmt: skip
    # Before loading data or creating a run: a resume point of another
    # architecture (one config.yaml read) and a second writer are refused in a
    # second, leaving nothing behind.
    store = lease = continued = None
    provenance = check_recordings(cfg)  # the commonest first mistake, refused before a run or model exists
    if cfg.uses_mel:
        open_vocoder(cfg)  # a missing or unfit vocoder config.json is refused before a run exists
    if init_from is not None and not is_model_uri(init_from):
        init_from = str(pretrained_file(init_from))  # a model_<N>.pt file (checked before any work)
        check_pretrained(Path(init_from), cfg)
    if ctx.is_main:
        store = RegistryStore(tracking_uri)
        reader = CheckpointReader(cfg.registered_model, cfg.mlflow.alias, store=store)
        source = init_from if init_from and is_model_uri(init_from) else None
        check_resume_architecture(reader, architecture(cfg), source)
        _check_resume_dependencies(reader, source, provenance)
        description = registered_model_description(cfg.mlflow.alias, cfg.train.best_metric)
        lease = WriterLease(store, cfg.registered_model, takeover=takeover, description=description).acquire()
        try:  # read while this process holds the lease: no other writer changes the answer
            continued = _training_run(store, reader, cfg, init_from, lease, new_run=new_run or takeover)
        except BaseException:
            lease.release()
            raise
    ctx.start(device)
    try:
        seed_everything(cfg.train.seed + ctx.rank)  # a fresh run; a resume restores the RNGs it saved
        model = build_model_from_config(cfg).to(device)
        optimizer = build_optimizer(model.parameters(), cfg.train.lr, cfg.train.weight_decay, device)
        loaders = make_loaders(cfg, rank=ctx.rank, world_size=ctx.world_size)
        if ctx.is_main:
            result = _train_main(cfg, ctx, model, optimizer, loaders, device, store, lease, init_from, progress,
                                  close_timeout, continued, _dependencies(cfg, provenance))
        else:
            result = _train_other_rank(cfg, ctx, model, optimizer, loaders, device, tracking_uri)
    except BaseException:
        if lease is not None and lease.held:
            lease.release()  # the queue releases it once it has taken it over; releasing twice is harmless
        ctx.abort()
        raise
    if ctx.enabled:
        # DDP's reducer (hooked onto the parameters, in reference cycles) keeps the process
        # group alive; freed at interpreter exit instead, gloo's threads abort the process.
        del model, optimizer, loaders
        gc.collect()
    ctx.finish()
    return result


def _train_main(cfg, ctx, model, optimizer, loaders, device, store, lease, init_from, progress,
                close_timeout, continued: _TrainingRun | None = None, dependencies=None) -> TrainResult:
    """Rank 0 (or the only process): the run, the tracker, the checkpoint queue."""
    run_id, own_run = _open_run(store, cfg, continued)
    status = "FAILED"
    stopped: dict[str, str] = {}
    tracker = None
    signals = _StopOnSignals()
    try:
        tracker = MlflowTracker(store, run_id, cfg.data.sampling_rate)
        tracker.log_config(cfg)
        lineage = _lineage_tags(cfg, _log_datasets(tracker, cfg))
        tracker.log_tags(lineage)
        with CheckpointQueue(
            cfg.registered_model,
            cfg.train.interval_val,
            cfg.train.interval_force_save,
            cfg.mlflow.alias,
            cfg.train.save_opt,
            config=cfg.to_yaml(),
            run_id=run_id,
            store=store,
            lease=lease,
            lineage=lineage,
            extra_files=pyfunc_files(cfg.data.sampling_rate),  # every version is a servable pyfunc model
            keep_last=cfg.train.keep_last,
            best_metric=cfg.train.best_metric,
            best_mode=cfg.train.best_mode,
            close_timeout=close_timeout,
            dependencies=dependencies,  # the weight files every version converts with, stored once
            recover=False,  # recovered explicitly below, after the run's own start-up
        ).recover() as queue:  # commits what an earlier process left in the spool, reconciles
            start_step, origin, loaded = _restore(cfg, queue, model, optimizer, init_from, tracker)
            # The other ranks load exactly this version (the alias may move meanwhile), or file.
            ctx.broadcast(loaded)
            if origin is None or origin.run_id != run_id:  # a continued run keeps what it started from
                tracker.log_tags(queue.parent_tags())  # the run records what it resumed from
            if origin is not None and origin.name == cfg.registered_model:
                log.info("resuming %s from step %d (v%d)", cfg.registered_model, start_step, origin.version)
            elif origin is not None:
                log.info("starting %s from step %d of %s", cfg.registered_model, start_step, origin.label)
            loop = _make_loop(cfg, ctx, _prepare(cfg, ctx, model, optimizer, device), optimizer, loaders, device,
                              checkpointer=queue, tracker=tracker, progress=progress)  # fmt: skip
            # An exact resume continues this model's own training; a fine-tune from another
            # model's version starts its data and random numbers afresh.
            own = origin is not None and origin.name == cfg.registered_model
            resume = TrainerState.from_payload(queue.restored_trainer_state) if own else None
            signals.install(loop.stop)  # until the run has ended: a second Ctrl-C cuts every wait short
            final_step = loop.run(start_step, resume)
        status = "FINISHED"  # stopped by a signal after its save, too: then with the stopped tags
        if signals.signal:
            stopped = {T.STOPPED_BY: signals.signal, T.STOPPED_AT_STEP: str(final_step)}
        left = queue.spool.describe(queue.left_in_spool) if queue.left_in_spool else ""
        return TrainResult(run_id, cfg.registered_model, start_step, final_step, signals.signal, left_in_spool=left)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        try:
            wait = min(close_timeout, 1.0) if signals.aborted else close_timeout
            if tracker is not None:  # delivers what the loop logged (bounded wait in an outage), ends the run
                tracker.finish(status if own_run else None, wait, tags=stopped)
            elif own_run and not signals.aborted:
                store.end_run(run_id, status)
        finally:
            signals.restore()


def _dependencies(cfg: Config, provenance: FeatureProvenance) -> list[tuple[Path | None, DependencyRecord]]:
    """``(file, record)`` of each weight file this training's versions convert with (issue 21):
    the encoder and f0 network that made the features (their digests as preprocess recorded
    them) and, for a cascade model, the vocoder's weights with the ``config.json`` beside them
    (hashed here once: :meth:`DependencyRecord.of_file`).

    Raises:
        ConfigError: the vocoder's weights are there without their ``config.json`` (one line).
    """
    out = [(Path(d.path) if d.path and Path(d.path).is_file() else None,
            DependencyRecord.of_file(d.role, d.path or d.role, digest=(d.sha256, d.size)))
           for d in provenance.dependencies]  # fmt: skip
    vocoder = Path(cfg.vocoder.ckpt).expanduser().absolute() if cfg.uses_mel else None
    if vocoder is not None and vocoder.is_file():
        out.append((vocoder, DependencyRecord.of_file("vocoder", vocoder)))
    return out


def _check_resume_dependencies(reader: CheckpointReader, source: str | None, provenance: FeatureProvenance) -> None:
    """Refuse, before a run exists, to continue a version with other encoder or f0 weights than
    it was trained with (its recorded digests against the features'); versions that record
    none are not checked.

    Raises:
        ConfigError: one line naming the role and both digests.
    """
    version = reader.resume_point(source)
    if version is None:
        return
    try:
        recorded = registered_dependencies(reader.store, version)
    except CheckpointNotFoundError:
        return  # its files are gone: restore falls back to an intact version and says so
    check_same_dependencies(recorded, [(d.role, d.sha256) for d in provenance.dependencies], label=version.label)


def _restore(cfg, queue, model, optimizer, init_from, tracker):
    """Load the resume point; returns ``(start_step, registry origin or None, what was loaded)``.

    What was loaded is ``models:/NAME/VERSION``, a file path or None (nothing): the
    other ranks load the same. ``init_from`` a file: upstream's ``model_0.pt``
    (loaded only while the registered model has no checkpoint of its own; the run
    gets tags naming the file and its sha256).
    """
    if init_from is not None and not is_model_uri(init_from):
        own = queue.reader.candidates()
        if not own:
            step, digest = load_pretrained(Path(init_from), model, cfg)
            tracker.log_tags({T.PRETRAINED_FILE: init_from, T.PRETRAINED_SHA256: digest.sha256})
            log.info("starting %s from %s (step %d, sha256 %s...)", cfg.registered_model, init_from, step,
                     digest.sha256[:12])  # fmt: skip
            return step, None, init_from
        log.warning("%s already has checkpoints: resuming from %s, not from the starting point %s "
                    "(used only while it has none)", cfg.registered_model, own[0].label, init_from)  # fmt: skip
        init_from = None
    step = queue.restore(model, optimizer, source=init_from, check=check_fit)
    origin = queue.restored_from
    return step, origin, f"models:/{origin.name}/{origin.version}" if origin else None


def _train_other_rank(cfg, ctx, model, optimizer, loaders, device, tracking_uri) -> TrainResult:
    """Ranks > 0: load rank 0's resume point read-only, train, log and save nothing."""
    source = ctx.broadcast(None)
    start_step, resume = 0, None
    if source is not None and not is_model_uri(source):
        start_step, _ = load_pretrained(Path(source), model, cfg)
    elif source is not None:
        restored = CheckpointReader(cfg.registered_model, cfg.mlflow.alias, tracking_uri=tracking_uri).fetch(source)
        load_into(restored, model, optimizer, check=check_fit)
        start_step = restored.step
        state = TrainerState.from_payload(restored.trainer_state)
        if state is not None and restored.version.name == cfg.registered_model:
            resume = state.position_only()  # this rank's data position; its RNGs stay its own
    loop = _make_loop(cfg, ctx, _prepare(cfg, ctx, model, optimizer, device), optimizer, loaders, device,
                      checkpointer=NullCheckpointer(), tracker=NullTracker(), progress=False)  # fmt: skip
    with _stop_on_signals(loop.stop) as signals:
        final_step = loop.run(start_step, resume)
    return TrainResult("", cfg.registered_model, start_step, final_step, signals.signal, is_main=False)


def _prepare(cfg: Config, ctx: DistributedContext, model, optimizer, device) -> torch.nn.Module:
    """After restoring: the config's lr and weight decay (as upstream), state on the device, DDP."""
    for group in optimizer.param_groups:
        group["lr"], group["weight_decay"] = cfg.train.lr, cfg.train.weight_decay
    _move_optimizer_state(optimizer, device)
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # CombSubSuperFast has parameters its forward never uses (upstream's, kept for checkpoints).
    # CombSubSuperFast (also the DDSP stage of the cascade models) has parameters its forward
    # never uses (upstream's, kept for checkpoints).
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=cfg.model.type == "CombSubSuperFast" or cfg.uses_mel,
    )


def mel_objective(cfg: Config, device: torch.device) -> MelObjective:
    """The objective of a cascade model (RectifiedFlow, DiffusionFast): its vocoder's mel, upstream's terms.

    Only the vocoder's ``config.json`` is read here; its weights are loaded at the
    first validation that finds them (without them validation audio is the DDSP stage's).

    Raises:
        ConfigError: no config.json beside ``vocoder.ckpt``, or a vocoder whose sampling rate,
            hop or mel bins do not fit the data config (one line, both values named).
    """
    vocoder = open_vocoder(cfg, device=str(device))
    if cfg.model.type == "DiffusionFast":
        return MelObjective(vocoder, cfg.train.lambda_ddsp, "diff_loss", {"k_step": cfg.model.k_step_max},
                            {"infer_speedup": cfg.infer.speedup, "method": cfg.infer_method,
                             "k_step": cfg.model.k_step_max})  # fmt: skip
    return MelObjective(vocoder, cfg.train.lambda_ddsp, "reflow_loss", {"t_start": cfg.model.t_start},
                        {"infer_step": cfg.infer.infer_step, "method": cfg.infer_method,
                         "t_start": cfg.model.t_start})  # fmt: skip


def _make_loop(cfg, ctx, model, optimizer, loaders, device, *, checkpointer, tracker, progress) -> TrainLoop:
    train_loader, valid_loader = loaders
    cascade = cfg.uses_mel
    return TrainLoop(
        model=model,
        optimizer=optimizer,
        loss_fn=None if cascade else RandomScaleSpectralLoss(cfg.loss.fft_min, cfg.loss.fft_max, cfg.loss.n_scale).to(device),
        validation_loss_fn=None if cascade else _validation_loss(cfg).to(device),
        objective=mel_objective(cfg, device) if cascade else None,
        lr_at=step_lr(cfg.train.lr, cfg.train.gamma, cfg.train.decay_step),
        train_loader=train_loader,
        valid_loader=valid_loader,
        checkpointer=checkpointer,
        tracker=tracker,
        device=device,
        interval_log=cfg.train.interval_log,
        interval_val=cfg.train.interval_val,
        epochs=cfg.train.epochs,
        max_steps=cfg.train.max_steps,
        amp_dtype=cfg.train.amp_dtype,
        audio_clips=cfg.mlflow.audio_clips,
        progress=progress,
        is_main=ctx.is_main,
        agree=ctx.any,
    )


@dataclass(frozen=True)
class _TrainingRun:
    """The run of the training a start resumes (:func:`_run_to_continue`), and what the start may do with it."""

    record: RunRecord
    new_run: bool  # --new-run / --takeover: a new run continues the training, even where this one could be
    writer_gone: bool  # no live process writes it (the lease was free or taken from a dead holder)


def _training_run(store: RegistryStore, reader: CheckpointReader, cfg: Config, init_from: str | None,
                  lease: WriterLease, *, new_run: bool) -> _TrainingRun | None:  # fmt: skip
    """:func:`_run_to_continue`'s run, read while this process holds the writer lease, with
    whether its writer is gone (:func:`_writer_gone`); None where the start is a new training."""
    run = _run_to_continue(store, reader, cfg, init_from)
    if run is None:
        return None
    return _TrainingRun(run, new_run, _writer_gone(store, lease))


def _writer_gone(store: RegistryStore, lease: WriterLease) -> bool:
    """Whether no live process writes the registered model but this one (which holds ``lease``).

    Without ``takeover`` the lease is acquired only when it was free or its holder stale
    (dead: heartbeat older than its ttl, or a process of this machine that is gone), so
    every earlier writer is gone. With ``takeover`` the holder taken over may be alive:
    gone only when the lease it held (kept renamed as our lease's tombstone,
    ``mlflow_ddsp.lease.tombstone``) is stale; unknown (a lease moved away from, or none
    taken over) counts as alive (checkpoint/lease.py).
    """
    if not lease.takeover:
        return True
    try:
        tombstone = store.registered_model_tags(lease.lock_name).get(T.LEASE_TOMBSTONE)
        if not tombstone:
            return False
        return LeaseHolder.from_tags(store.registered_model_tags(tombstone)).is_stale(time.time())
    except CheckpointNotFoundError:
        return False


def _open_run(store: RegistryStore, cfg: Config, previous: _TrainingRun | None = None) -> tuple[str, bool]:
    """The training run, in the configured experiment; (run_id, we own it).

    Under `mlflow run` (MLFLOW_RUN_ID) the project's run is joined when it is in
    the configured experiment (`mlflow run --experiment-name ...`). MLflow puts it
    in "Default" otherwise, and a run cannot move: training then gets a run in the
    configured experiment (``previous``, continued, or a new one), and the project's
    run a tag and a note naming it. ``previous`` (:func:`_training_run`) is reopened
    unless a run is imposed or ``previous.new_run``: status RUNNING, the stopped tags
    removed, ``mlflow_ddsp.resumes`` counted up. Where the training goes on in another
    run, :func:`_hand_over` links the two and ends a crashed ``previous`` KILLED.
    """
    experiment_id = store.experiment_id(cfg.mlflow.experiment)
    outer = os.environ.get("MLFLOW_RUN_ID")
    if outer and store.experiment_of_run(outer) == experiment_id:
        run_id, own = outer, False
    elif previous is not None and not previous.new_run:
        continued = previous.record
        store.reopen_run(continued.run_id, drop_tags=(T.STOPPED_BY, T.STOPPED_AT_STEP))
        resumes = int(continued.tags.get(T.RUN_RESUMES, "0") or 0) + 1
        store.set_run_tags(continued.run_id, {T.RUN_RESUMES: str(resumes)})
        log.info("continuing run %s (%s before)", continued.run_id,
                 f"stopped by {continued.tags[T.STOPPED_BY]}" if T.STOPPED_BY in continued.tags
                 else continued.status)  # fmt: skip
        if outer:
            _name_project_run(store, cfg, outer, continued.run_id)
        return continued.run_id, True
    else:
        run_id, own = store.create_run(experiment_id, run_name=f"train-{cfg.registered_model}"), True
        if outer:
            _name_project_run(store, cfg, outer, run_id)
    if previous is not None and previous.record.run_id != run_id:
        _hand_over(store, cfg, previous, run_id)
    return run_id, own


def _name_project_run(store: RegistryStore, cfg: Config, outer: str, run_id: str) -> None:
    """Link the `mlflow run` run ``outer`` (in another experiment) and the training run ``run_id``."""
    project = store.run_tags(outer)  # what `mlflow run` recorded: entry point, source, git commit
    store.set_run_tags(run_id, {
        **{k: v for k, v in project.items() if k.startswith(T.PROJECT_TAG_PREFIXES)},
        T.PROJECT_RUN: outer,
    })  # fmt: skip
    store.set_run_tags(outer, {
        T.TRAINING_RUN: run_id,
        T.MLFLOW_NOTE: f"Training is logged in experiment '{cfg.mlflow.experiment}', run {run_id}.",
    })  # fmt: skip


def _hand_over(store: RegistryStore, cfg: Config, previous: _TrainingRun, run_id: str) -> None:
    """The training of ``previous`` goes on in run ``run_id`` (imposed by `mlflow run`, ``--new-run``,
    ``--takeover``): ``run_id`` gets ``mlflow_ddsp.continues``; ``previous``, when no live process
    writes it (:func:`_writer_gone`) and it trained this registered model, gets
    ``mlflow_ddsp.continued_by`` and a note, and is ended KILLED if RUNNING (what a crash leaves,
    issue 23: a run never stays RUNNING beside the run that continues it). A live writer's run
    is left as it is."""
    old = previous.record
    store.set_run_tags(run_id, {T.CONTINUES: old.run_id})
    if not previous.writer_gone or old.tags.get(T.REGISTERED_MODEL) != cfg.registered_model:
        log.info("run %s continues the training of run %s, left as it is (its writer may be alive, "
                 "or it trained another registered model)", run_id, old.run_id)  # fmt: skip
        return
    note = f"Training continued in run {run_id}."
    earlier = old.tags.get(T.MLFLOW_NOTE)
    store.set_run_tags(old.run_id, {
        T.CONTINUED_BY: run_id,
        T.MLFLOW_NOTE: f"{earlier}\n\n{note}" if earlier and note not in earlier else (earlier or note),
    })  # fmt: skip
    if old.status == "RUNNING":
        store.end_run(old.run_id, "KILLED")  # its process is gone: this start holds the writer lease
    log.info("run %s (%s) continues in run %s", old.run_id, "ended KILLED" if old.status == "RUNNING"
             else old.status, run_id)  # fmt: skip


def _run_to_continue(store: RegistryStore, reader: CheckpointReader, cfg: Config,
                     init_from: str | None) -> RunRecord | None:  # fmt: skip
    """The run of the training a start resumes (one training, one run: issue 23), or None for a new training.

    The training resumed is the one whose checkpoint is the resume point (the rolling
    alias's version, else the newest): its run is the training's, on any machine, when it
    is in the configured experiment, not deleted, and not FINISHED (a run stopped by
    a signal is FINISHED with the ``mlflow_ddsp.stopped_by`` tag: it counts).
    With no checkpoint yet, the newest run tagged with the registered model that
    never logged a checkpoint, started from nothing (no ``--init-from``, no parent)
    and trained the same architecture (its params) is the training's. None otherwise:
    a finished training, a fine-tune from another model (``--init-from``), a new
    registered model. Whether it is continued (not under an imposed `mlflow run` run,
    ``--new-run`` or ``--takeover``) is :func:`_open_run`'s decision.
    """
    experiment_id = store.experiment_id(cfg.mlflow.experiment)
    own = reader.candidates()
    spooled = _spooled_resume_point(store, cfg, own)
    if spooled is not None:
        run = store.run_record(spooled.run_id)
    elif own:
        run = store.run_record(own[0].run_id) if own[0].run_id else None
    elif init_from is None:
        found = store.find_runs(experiment_id, {T.REGISTERED_MODEL: cfg.registered_model}, max_results=1)
        run = found[0] if found else None
        if run is not None and (
            any(k in run.tags for k in (T.PARENT_VERSION, T.PRETRAINED_FILE))
            or store.run_model_outputs(run.run_id)
            or _architecture_changed(store.run_params(run.run_id), cfg)
        ):
            run = None
    else:
        return None
    if run is None or run.experiment_id != experiment_id or run.lifecycle_stage != "active":
        return None
    if run.status == "FINISHED" and T.STOPPED_BY not in run.tags:
        return None
    return run


def _spooled_resume_point(store: RegistryStore, cfg: Config, own: list) -> "SpooledSave | None":
    """The newest save this machine's spool holds for the registered model, where the start
    will commit it and resume from it (a crashed process's last saves are committed before
    the restore): it is newer than every version and of the lineage the registry holds."""
    _, entries = Spool.waiting(store.tracking_uri, cfg.registered_model)
    newest_version = max((v.version for v in own), default=0)
    newest_step = max((v.step for v in own), default=-1)
    fresh = [e for e in entries if e.run_id and e.step > newest_step
             and (e.base_version is None or e.base_version >= newest_version)]  # fmt: skip
    return max(fresh, key=lambda e: e.step) if fresh else None


def _architecture_changed(params: dict[str, str], cfg: Config) -> bool:
    """Whether a run's logged config (flattened params) trained another architecture than ``cfg``."""
    return any(key in params and params[key] != str(value) for key, value in architecture(cfg).settings.items())


def _log_datasets(tracker: MlflowTracker, cfg: Config) -> dict[str, str]:
    digests = {}
    for context, path in (("training", cfg.data.train_path), ("validation", cfg.data.valid_path)):
        rels = list_audio(path, cfg.data.extensions)
        digests[context] = dataset_digest(path, rels)
        name = os.path.basename(os.path.normpath(path)) or path
        tracker.log_dataset(name, path, digests[context], context, len(rels))
    return digests


def _lineage_tags(cfg: Config, digests: dict[str, str]) -> dict[str, str]:
    """Tags that trace a checkpoint back to its code, config, data and environment."""
    tags = {
        T.CONFIG_DIGEST: cfg.digest(),
        T.DATASET_DIGEST: digests["training"],
        T.REGISTERED_MODEL: cfg.registered_model,
        **T.environment_tags(environment_versions()),
    }
    git = code_version()
    if git:
        tags[T.GIT_COMMIT] = git["git_commit"]
        tags[T.GIT_DIRTY] = git["git_dirty"]
    return tags


def _validation_loss(cfg: Config) -> FixedScaleSpectralLoss:
    if cfg.loss.validation_fft_sizes:
        return FixedScaleSpectralLoss(cfg.loss.validation_fft_sizes)
    return FixedScaleSpectralLoss.from_range(cfg.loss.fft_min, cfg.loss.fft_max, cfg.loss.n_scale)


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and key != "step":
                state[key] = value.to(device)
