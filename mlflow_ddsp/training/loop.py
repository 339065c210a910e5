"""The training loop: plain PyTorch, no MLflow.

It talks to the outside world through two small interfaces the caller
provides: a :class:`Checkpointer` (the checkpoint queue) and a
:class:`Tracker` (metrics, spectrograms, audio). Validation runs before the
checkpoint of a validation step is saved, so the checkpoint carries its
validation loss (upstream saves first; the weights are the same either way).

Metrics take one road: every validation point is stamped once and logged
through the tracker, always; the same point (step and timestamp) goes with the
checkpoint's save, which links it to the checkpoint when it commits (MLflow
stores the run's point once). A checkpoint skipped or dropped by the queue
leaves no gap in the run's curve.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import MlflowDdspError
from ..progress import Progress
from ..wrappers import unwrap_model
from . import trainer_state as trainer
from .data import EpochSampler
from .media import validation_media
from .objective import Objective, SpectralObjective

__all__ = ["Checkpointer", "Tracker", "ValidationClip", "ValidationResult", "TrainingError", "TrainLoop"]

log = logging.getLogger(__name__)


class TrainingError(MlflowDdspError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN)."""


class Checkpointer(Protocol):
    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
             metrics: Mapping[str, float] | None = None, metrics_timestamp: int | None = None,
             trainer_state: Mapping[str, Any] | None = None,
             attachments: Mapping[str, bytes] | None = None) -> Any: ...  # fmt: skip


class Tracker(Protocol):
    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None: ...

    def log_validation(self, result: "ValidationResult", step: int, media: Mapping[str, bytes] | None = None) -> None: ...


@dataclass
class ValidationClip:
    name: str
    target: np.ndarray  # [N] float32
    prediction: np.ndarray  # [N] float32
    speaker: int = 1  # spk_id, 1-based
    mels: list[tuple[str, np.ndarray]] | None = None  # cascade models: (label, mel [T, M]) panels to draw


@dataclass
class ValidationResult:
    loss: float
    real_time_factor: float  # synthesis seconds per audio second
    sampling_rate: int = 44100  # Hz, of the clips
    clips: list[ValidationClip] = field(default_factory=list)  # every speaker's first clip, then more
    terms: dict[str, float] = field(default_factory=dict)  # more validation metrics (ddsp_loss ...), means

    @property
    def metrics(self) -> dict[str, float]:
        """``validation/loss`` and every term as ``validation/<term>``."""
        return {"validation/loss": self.loss, **{f"validation/{k}": v for k, v in self.terms.items()}}


@dataclass
class TrainLoop:
    """Upstream's training loop with a checkpointer, a tracker and a stop signal.

    Attributes:
        stop: set (e.g. by a SIGTERM handler) to end after the current step; the
            loop then saves a checkpoint of that step before returning.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None  # training (random scales)
    validation_loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None  # fixed scales
    train_loader: DataLoader
    valid_loader: DataLoader
    checkpointer: Checkpointer
    tracker: Tracker
    device: torch.device
    interval_log: int
    interval_val: int
    epochs: int
    max_steps: int | None = None
    amp_dtype: str = "fp32"
    audio_clips: int = 2  # clips kept for listening: every speaker's first, more up to this many (0: none)
    stop: threading.Event = field(default_factory=threading.Event)
    progress: bool = True
    # Data parallel: only the main process validates and saves; all processes
    # must agree on stopping (``agree`` maps this process's wish to the common one).
    is_main: bool = True
    agree: Callable[[bool], bool] = field(default=lambda wish: wish)
    # What a step minimises and a validation measures; default: the spectral loss of
    # loss_fn / validation_loss_fn (pure-DDSP models). Cascade models pass a MelObjective.
    objective: Objective | None = None
    # step (1-based) -> learning rate, set before each step (upstream's StepLR); None: constant
    lr_at: Callable[[int], float] | None = None

    def __post_init__(self) -> None:
        if self.objective is None:
            if self.loss_fn is None or self.validation_loss_fn is None:
                raise ValueError("TrainLoop needs an objective, or loss_fn and validation_loss_fn")
            self.objective = SpectralObjective(self.loss_fn, self.validation_loss_fn)

    def run(self, start_step: int, resume: "trainer.TrainerState | None" = None) -> int:
        """Train from ``start_step``; return the last step trained (and saved).

        Args:
            resume: the trainer state saved with the checkpoint of ``start_step``:
                the data continues mid-epoch where it stood and every random number
                generator is restored, so training ends bit-identical to a run that
                was never interrupted. Without it (an upstream checkpoint) the
                position is estimated from the step.
        """
        step = start_step
        saved_step = start_step  # the resume point is already in the registry
        steps_per_epoch = max(1, len(self.train_loader))
        epoch, batches = (resume.epoch, resume.batches) if resume else divmod(start_step, steps_per_epoch)
        autocast, scaler = self._mixed_precision()
        if resume is not None:
            if scaler is not None and resume.scaler:
                scaler.load_state_dict(resume.scaler)
            trainer.restore_rngs(resume)
        bar = self._progress_bar(start_step) if self.is_main else None
        last_log_time, last_log_step = time.perf_counter(), step
        self.model.train()

        def state() -> dict:
            return trainer.capture(epoch, batches, scaler)

        try:
            while epoch < self.epochs and not self._done(step):
                sampler = getattr(self.train_loader, "sampler", None)
                if isinstance(sampler, EpochSampler):
                    # A shuffle per epoch, the same on every process; a resume skips what was trained.
                    sampler.set_epoch(epoch, skip=batches * (self.train_loader.batch_size or 1))
                elif hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)
                for batch in self.train_loader:
                    if self._done(step):
                        break
                    step += 1
                    batches += 1
                    loss, terms = self._train_step(batch, autocast, scaler, step)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.3f}", epoch=epoch, refresh=False)
                        bar.update(1)
                    if step % self.interval_log == 0:
                        now = time.perf_counter()
                        rate = (step - last_log_step) / max(now - last_log_time, 1e-9)
                        last_log_time, last_log_step = now, step
                        metrics = {"train/loss": loss, **{f"train/{k}": v for k, v in terms.items()},
                                   "train/steps_per_second": rate}  # fmt: skip
                        if self.lr_at is not None:
                            metrics["train/lr"] = self.optimizer.param_groups[0]["lr"]
                        self.tracker.log_metrics(metrics, step)
                    if step % self.interval_val == 0 and self.is_main:
                        result = self.validate()
                        media = validation_media(result.clips, result.sampling_rate, step)  # rendered once
                        stamp = int(time.time() * 1000)  # one point: the run's, and the checkpoint's link to it
                        self.tracker.log_metrics(result.metrics, step, timestamp_ms=stamp)
                        self.checkpointer.save(step, self.model, self.optimizer, metrics=result.metrics,
                                               metrics_timestamp=stamp, trainer_state=state(),
                                               attachments=media)  # fmt: skip
                        saved_step = step
                        self.tracker.log_validation(result, step, media)
                        log.info("step %d: validation loss %.4f, checkpoint queued", step, result.loss)
                        self.model.train()
                else:
                    epoch, batches = epoch + 1, 0
        finally:
            if bar is not None:
                bar.close()
        if step != saved_step and self.is_main:
            # End of training, or stopped (Ctrl-C, SIGTERM): keep what was trained.
            self.checkpointer.save(step, self.model, self.optimizer, trainer_state=state())
            log.info("step %d: checkpoint queued (%s)", step, "stopped" if self.stop.is_set() else "end of training")
        return step

    def _done(self, step: int) -> bool:
        stop = self.agree(self.stop.is_set())  # a collective under DDP: every process calls it alike
        return stop or (self.max_steps is not None and step >= self.max_steps)

    def _train_step(self, batch: dict, autocast, scaler, step: int) -> tuple[float, dict[str, float]]:
        """One optimiser step; returns the loss and its named terms (cascade models)."""
        if self.lr_at is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(step)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss, terms = self.objective.training_loss(self.model, batch, self.device)
        loss = loss.float()
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss.item()} at step {step}; the last checkpoint is intact. "
                "Lower train.lr, or check the data for silent or clipped files"
            )
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(self.optimizer)
            scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return float(loss.detach()), {k: float(v) for k, v in terms.items()}

    @torch.no_grad()
    def validate(self) -> ValidationResult:
        """Whole validation files, batch 1, with the fixed-scale loss (comparable across checkpoints)."""
        # The bare module: a DDP forward on the main process alone would wait for the others.
        model = unwrap_model(self.model)
        model.eval()
        total, synth_seconds, audio_seconds, count = 0.0, 0.0, 0.0, 0
        term_totals: dict[str, float] = {}
        # Every speaker's first clip (a multi-singer model is heard whole); more only
        # while there are fewer speakers than audio_clips.
        firsts: dict[int, list[ValidationClip]] = {}
        extras: list[ValidationClip] = []
        sampling_rate = getattr(model, "sampling_rate_hz", None) or 44100
        for batch in self.valid_loader:
            item = self.objective.validate_item(model, batch, self.device)
            total += item.loss
            for key, value in item.terms.items():
                term_totals[key] = term_totals.get(key, 0.0) + value
            synth_seconds += item.seconds
            audio_seconds += item.target.shape[-1] / sampling_rate
            count += 1
            speaker = int(batch["spk_id"].reshape(-1)[0])
            if self.audio_clips and (speaker not in firsts or len(extras) < self.audio_clips):
                clip = ValidationClip(str(batch["name"][0]), item.target, item.prediction, speaker, item.mels)
                (extras if speaker in firsts else firsts.setdefault(speaker, [])).append(clip)
        clips = [c for group in firsts.values() for c in group]
        clips += extras[: max(0, self.audio_clips - len(clips))]
        loss = total / max(count, 1)
        if not math.isfinite(loss):
            raise TrainingError(f"validation loss is {loss}; the last checkpoint is intact")
        terms = {key: value / max(count, 1) for key, value in term_totals.items()}
        return ValidationResult(loss=loss, real_time_factor=synth_seconds / max(audio_seconds, 1e-9), clips=clips,
                                sampling_rate=sampling_rate, terms=terms)  # fmt: skip

    def _mixed_precision(self):
        if self.device.type != "cuda" or self.amp_dtype == "fp32":
            return contextlib.nullcontext, None
        dtype = torch.float16 if self.amp_dtype == "fp16" else torch.bfloat16
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        return (lambda: torch.autocast("cuda", dtype=dtype)), scaler

    def _progress_bar(self, start_step: int):
        """A tqdm bar on a terminal; otherwise a log line every MLFLOW_DDSP_PROGRESS_SECONDS (30 s)."""
        if not self.progress:
            return None
        return Progress("training", self.max_steps, initial=start_step, unit="step")
