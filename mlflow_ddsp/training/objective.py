"""What a training step minimises and what a validation measures, per model family.

Two families, one interface (:class:`Objective`) the loop calls:

* :class:`SpectralObjective`: the pure-DDSP models (CombSub*, Sins; upstream 3.0):
  audio out, multi-scale spectral loss against the recording (upstream ``ddsp/loss.py``).
* :class:`MelObjective`: the cascade models of upstream 5.0 (``DiffusionFast``) and
  6.x (``RectifiedFlow``): the DDSP stage's audio is turned into the vocoder's mel and
  the model returns two terms, ``ddsp_loss`` (mel MSE of the DDSP stage) and the
  decoder's ``reflow_loss`` / ``diff_loss``; the step minimises
  ``lambda_ddsp * ddsp_loss + flow term`` (upstream ``reflow/solver.py`` and
  ``diffusion/solver_new.py``, ``train()``).

Validation of the cascade models is made comparable between checkpoints: both
loss terms and the sampled mel use noise from a fixed seed (upstream draws fresh
noise, so its validation loss of one checkpoint differs run to run). The global RNG
is forked for it, so validating never changes what training draws next.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch
from torch import Tensor

__all__ = ["Objective", "ValidationItem", "SpectralObjective", "MelObjective", "mel_scores", "step_lr"]

log = logging.getLogger(__name__)


@dataclass
class ValidationItem:
    """One validation recording's result.

    Attributes:
        loss: the checkpoint-comparable validation loss of this recording.
        terms: further metrics (``ddsp_loss``, ``reflow_loss``, ``mel_mse`` ...) named without prefix.
        target: ``[N]`` the recording (float32).
        prediction: ``[N']`` what the model made of it.
        seconds: time the model took to render ``prediction``.
        mels: ``[(label, mel [T, M])]`` panels to draw instead of audio spectrograms (cascade models).
    """

    loss: float
    terms: dict[str, float]
    target: np.ndarray
    prediction: np.ndarray
    seconds: float
    mels: list[tuple[str, np.ndarray]] | None = None


class Objective(Protocol):
    def training_loss(self, model: torch.nn.Module, batch: Mapping[str, Any], device: torch.device
                      ) -> tuple[Tensor, dict[str, Tensor]]: ...  # fmt: skip

    def validate_item(self, model: torch.nn.Module, batch: Mapping[str, Any], device: torch.device
                      ) -> ValidationItem: ...  # fmt: skip


def _inputs(batch: Mapping[str, Any], device: torch.device, *keys: str) -> list[Tensor]:
    return [batch[k].to(device, non_blocking=True) for k in keys]


@dataclass
class SpectralObjective:
    """Pure-DDSP models: audio ``[B, N]`` against the recording, multi-scale spectral loss.

    Args:
        loss_fn: training loss (random FFT scales, as upstream).
        validation_loss_fn: fixed FFT scales, comparable between checkpoints.
    """

    loss_fn: Callable[[Tensor, Tensor], Tensor]
    validation_loss_fn: Callable[[Tensor, Tensor], Tensor]

    def training_loss(self, model, batch, device):
        units, f0, volume, spk_id, audio = _inputs(batch, device, "units", "f0", "volume", "spk_id", "audio")
        prediction = model(units.float(), f0, volume, spk_id, infer=False)
        return self.loss_fn(prediction.float(), audio), {}

    def validate_item(self, model, batch, device):
        units, f0, volume, spk_id, audio = _inputs(batch, device, "units", "f0", "volume", "spk_id", "audio")
        started = time.perf_counter()
        prediction = model(units.float(), f0, volume, spk_id)
        seconds = time.perf_counter() - started
        n = min(prediction.shape[-1], audio.shape[-1])
        prediction, audio = prediction[..., :n], audio[..., :n]
        loss = float(self.validation_loss_fn(prediction.float(), audio))
        return ValidationItem(loss, {}, audio[0].float().cpu().numpy(), prediction[0].float().cpu().numpy(), seconds)


@dataclass
class MelObjective:
    """Cascade models (RectifiedFlow 6.0/6.1, DiffusionFast 5.0) trained on the vocoder's mel.

    Args:
        vocoder: a :class:`mlflow_ddsp.vocoder.Vocoder`; its mel extractor needs only
            ``config.json``. Without its weights file, validation audio is the DDSP
            stage's (said once in the log).
        lambda_ddsp: weight of the DDSP stage's mel loss (``train.lambda_ddsp``).
        flow_term: ``"reflow_loss"`` or ``"diff_loss"``: the name of the decoder's term.
        train_kwargs: the model's training keywords (``t_start=`` or ``k_step=``).
        infer_kwargs: its sampling keywords for validation (``infer_step=, method=, t_start=``
            or ``infer_speedup=, method=, k_step=``).
        validation_seed: seed of the validation noise (fixed: checkpoints compare).
    """

    vocoder: Any
    lambda_ddsp: float
    flow_term: str
    train_kwargs: dict[str, Any]
    infer_kwargs: dict[str, Any]
    validation_seed: int = 0
    _said_no_weights: bool = field(default=False, repr=False)

    def training_loss(self, model, batch, device):
        units, f0, volume, spk_id, aug_shift, mel = _inputs(batch, device, "units", "f0", "volume", "spk_id",
                                                            "aug_shift", "mel")  # fmt: skip
        ddsp_loss, flow_loss = model(units.float(), f0, volume, spk_id, aug_shift=aug_shift, vocoder=self.vocoder,
                                     gt_spec=mel.float(), infer=False, **self.train_kwargs)  # fmt: skip
        total = self.lambda_ddsp * ddsp_loss + flow_loss
        return total, {"ddsp_loss": ddsp_loss.detach(), self.flow_term: flow_loss.detach()}

    def validate_item(self, model, batch, device):
        units, f0, volume, spk_id, mel = _inputs(batch, device, "units", "f0", "volume", "spk_id", "mel")
        audio = batch["audio"]
        units, mel = units.float(), mel.float()
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.validation_seed)
            started = time.perf_counter()
            ddsp_wav, _ = model.ddsp_stage(units, f0, volume, spk_id, infer=True)
            ddsp_mel = self.vocoder.extract(ddsp_wav)
            output = model(units, f0, volume, spk_id, vocoder=self.vocoder, infer=True, return_wav=False,
                           **self.infer_kwargs)  # fmt: skip
            if self.vocoder.has_weights:
                prediction = self.vocoder.infer(output, f0)
            else:
                if not self._said_no_weights:
                    log.warning("no vocoder weights at %s: validation audio is the DDSP stage's; the mel images "
                                "show the full model (put openvpi's NSF-HiFiGAN 'model' file beside its "
                                "config.json to hear it)", self.vocoder.path)  # fmt: skip
                    self._said_no_weights = True
                prediction = ddsp_wav
            seconds = time.perf_counter() - started
            torch.manual_seed(self.validation_seed)
            ddsp_loss, flow_loss = model(units, f0, volume, spk_id, vocoder=self.vocoder, gt_spec=mel, infer=False,
                                         **self.train_kwargs)  # fmt: skip
        frames = min(output.shape[1], mel.shape[1])
        terms = {"ddsp_loss": float(ddsp_loss), self.flow_term: float(flow_loss),
                 **mel_scores(mel[:, :frames], output[:, :frames])}  # fmt: skip
        panels = [(name, m[0, :frames].float().cpu().numpy()) for name, m in
                  (("target", mel), ("DDSP stage", ddsp_mel), ("output", output))]  # fmt: skip
        return ValidationItem(
            loss=self.lambda_ddsp * terms["ddsp_loss"] + terms[self.flow_term],
            terms=terms,
            target=audio[0].float().cpu().numpy(),
            prediction=prediction[0].float().cpu().numpy(),
            seconds=seconds,
            mels=panels,
        )


def mel_scores(target: Tensor, prediction: Tensor) -> dict[str, float]:
    """How close a sampled mel is to the recording's: upstream 6.0's validation scores.

    Upstream ``reflow/solver.py`` (``calculate_mel_snr``, ``calculate_mel_psnr``,
    ``calculate_mel_si_snr``), on natural-log mels ``[B, T, M]``:

    * ``mel_mse``: mean of ``(prediction - target)^2``;
    * ``mel_snr``: ``10 log10(mean(target^2) / var(target - prediction))`` dB;
    * ``mel_psnr``: ``10 log10(max(target)^2 / mse)`` dB;
    * ``mel_si_snr``: the SNR of ``s * prediction`` with ``s = <target, prediction> / <target, target>``.
    """
    target, prediction = target.double(), prediction.double()
    error = target - prediction
    mse = torch.mean(error**2)
    power = torch.mean(target**2)
    scaled = torch.sum(target * prediction) / torch.sum(target**2) * prediction
    return {
        "mel_mse": float(mse),
        "mel_snr": float(10 * torch.log10(power / torch.var(error))),
        "mel_psnr": float(10 * torch.log10(torch.max(target) ** 2 / mse)),
        "mel_si_snr": float(10 * torch.log10(power / torch.var(target - scaled))),
    }


def step_lr(lr: float, gamma: float, decay_step: int | None) -> Callable[[int], float] | None:
    """The learning rate of training step ``step`` (1-based) under upstream's StepLR.

    Upstream steps ``StepLR(step_size=decay_step, gamma)`` once per iteration; an
    uninterrupted run trains step ``g`` with ``lr * gamma ** max((g - 2) // decay_step, 0)``
    (``reflow/solver.py``: the same expression sets the lr on resume). As a function of the
    step it needs no scheduler state, so a resume continues it exactly.

    Returns:
        ``step -> lr``, or None for a constant learning rate (``decay_step`` null).
    """
    if decay_step is None:
        return None
    return lambda step: lr * gamma ** max((step - 2) // decay_step, 0)
