"""What upstream's 5.0 and 6.x models share: a DDSP stage whose audio's mel a decoder refines.

Upstream DDSP-SVC ``diffusion/vocoder.py`` ``Unit2WavFast`` (5.0) and ``reflow/vocoder.py``
``Unit2Wav`` (6.0 on ``master``, 6.1 on branch ``6.1``) all run::

    ddsp_wav [B, T * block], hidden = ddsp_model(units, f0, volume, ...)
    ddsp_mel [B, T', M]             = vocoder.extract(ddsp_wav)      # the vocoder's own log-mel
    training:  (mse(ddsp_mel, gt_spec), decoder loss conditioned on ddsp_mel)
    inference: mel = decoder(ddsp_mel) -> vocoder.infer(mel, f0) with return_wav

``B`` batch, ``T`` frames, ``M`` mel bins (128). The decoder's condition is the DDSP
stage's *mel*, not detached: the decoder's loss trains the DDSP stage too. The vocoder
is passed in on every call (any :class:`MelVocoder`); models import none.

:class:`CascadeModel` holds the part every one of them shares (the DDSP stage, the
architecture record, the checks of a call, taking the DDSP mel);
:class:`ReflowCascade` the rectified-flow ``forward`` of 6.0 and 6.1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.models.base import DDSPModel, check_bool, check_int

__all__ = ["MelVocoder", "CascadeModel", "ReflowCascade", "check_decoder_size"]


class MelVocoder(Protocol):
    """What a cascade model needs of a vocoder (upstream ``reflow/vocoder.py`` ``Vocoder``)."""

    def extract(self, audio: Tensor, sample_rate: int = 0, keyshift: float = 0) -> Tensor:
        """``[B, N]`` audio -> ``[B, frames, M]`` natural-log mel."""
        ...

    def infer(self, mel: Tensor, f0: Tensor) -> Tensor:
        """``[B, frames, M]`` log-mel and ``[B, frames, 1]`` f0 (Hz) -> ``[B, samples]`` audio."""
        ...


def check_decoder_size(n_layers: int, n_chans: int, out_dims: int, use_pitch_aug: bool) -> None:
    """Refuse decoder sizes no network can be built with (one line naming the config key).

    ``n_chans`` must be even and >= 4: the sinusoidal step embedding is half sines, half
    cosines, with ``log(10000) / (half - 1)`` as its frequency step.

    Raises:
        ConfigError: ``model.n_layers`` < 1, ``model.n_chans`` odd or < 4, ``out_dims`` < 1,
            ``model.use_pitch_aug`` not a bool.
    """
    check_int("n_layers", n_layers, 1)
    check_int("n_chans", n_chans, 4)
    if n_chans % 2:
        raise ConfigError(f"Invalid value for model.n_chans={n_chans}: must be even (sinusoidal step embedding)")
    check_int("vocoder num_mels (out_dims)", out_dims, 1)
    check_bool("use_pitch_aug", use_pitch_aug)


class CascadeModel(nn.Module):
    """A DDSP stage (``ddsp_model``) plus a mel decoder; subclasses build both and ``forward``.

    Attributes:
        model_type: upstream's ``model.type``.
        upstream_version: ``"5.0"``, ``"6.0"`` or ``"6.1"``.
        sampling_rate_hz: audio rate, Hz.
        block: samples per frame (the vocoder's hop).
        out_dims: mel bins ``M``.
    """

    model_type: ClassVar[str]
    upstream_version: ClassVar[str]
    ddsp_model: DDSPModel

    def _record(self, ddsp_model: DDSPModel, **hparams: Any) -> None:
        """Keep the DDSP stage and the constructor's keywords (``type(self)(**self.hparams)`` rebuilds it)."""
        self.ddsp_model = ddsp_model
        self._hparams = dict(hparams)
        self.sampling_rate_hz = int(hparams["sampling_rate"])
        self.block = int(hparams["block_size"])
        self.out_dims = int(hparams["out_dims"])

    @property
    def hparams(self) -> dict[str, Any]:
        """The constructor keyword arguments that rebuild this architecture."""
        return dict(self._hparams)

    def ddsp_stage(
        self,
        units: Tensor,
        f0: Tensor,
        volume: Tensor,
        spk_id: Tensor | int | None = None,
        spk_mix_dict: Mapping[int, float] | None = None,
        aug_shift: Tensor | None = None,
        infer: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """The DDSP synthesiser alone; draws its noise from the global RNG exactly as upstream's call.

        Args:
            units: ``[B, T, n_unit]``.
            f0: ``[B, T, 1]`` Hz.
            volume: ``[B, T, 1]`` frame RMS.
            spk_id: 1-based speaker id (int, ``[B]`` or ``[B, 1]``); needed when n_spk > 1.
            spk_mix_dict: ``{1-based speaker id: weight}``, overrides ``spk_id``.
            aug_shift: ``[B, 1, 1]`` key shift in semitones (``use_pitch_aug`` models).
            infer: passed on (the CombSubSuperFast stages compute the same either way).

        Returns:
            ``(ddsp_wav [B, T * block_size], hidden [B, T, H])``.
        """
        out = self.ddsp_model.synthesize(units, f0, volume, spk_id, spk_mix_dict, aug_shift=aug_shift, infer=infer)
        return out.audio, out.hidden

    def _ddsp_mel(
        self,
        units: Tensor,
        f0: Tensor,
        volume: Tensor,
        spk_id: Tensor | int | None,
        spk_mix_dict: Mapping[int, float] | None,
        aug_shift: Tensor | None,
        vocoder: MelVocoder | None,
        gt_spec: Tensor | None,
        infer: bool,
        return_wav: bool,
        start_frame: int = 0,
    ) -> Tensor:
        """Check the call, run the DDSP stage and take its mel ``[B, T', M]``.

        From ``start_frame`` on (upstream's ``silence_front``). At inference without a
        vocoder, ``gt_spec`` stands in for the DDSP mel (upstream's behaviour); the
        DDSP stage still runs, so the random draws stay upstream's.

        Raises:
            ValueError: training without ``vocoder`` or ``gt_spec``; inference with
                neither; ``return_wav`` without ``vocoder``.
        """
        if not infer and (vocoder is None or gt_spec is None):
            raise ValueError("training (infer=False) needs a vocoder (to take the DDSP mel) and gt_spec [B, T, M]")
        if infer and vocoder is None and (return_wav or gt_spec is None):
            raise ValueError("inference needs a vocoder (for the DDSP mel and for return_wav), or gt_spec as the mel")
        ddsp_wav, _ = self.ddsp_stage(units, f0, volume, spk_id, spk_mix_dict, aug_shift, infer=infer)
        if vocoder is None:
            return gt_spec
        return vocoder.extract(ddsp_wav[:, start_frame * self.block :])


class ReflowCascade(CascadeModel):
    """Upstream's rectified-flow ``Unit2Wav.forward`` (6.0 and 6.1); ``reflow_model`` is a
    :class:`~mlflow_ddsp.models.rectified_flow.RectifiedFlow`.

    ``zero_loss_from_t1``: 6.1 returns a zero flow loss when ``t_start >= 1`` in training
    (upstream 6.1 ``reflow/vocoder.py``); 6.0 computes it anyway.
    """

    zero_loss_from_t1: ClassVar[bool] = False
    reflow_model: nn.Module

    def forward(
        self,
        units: Tensor,
        f0: Tensor,
        volume: Tensor,
        spk_id: Tensor | int | None = None,
        spk_mix_dict: Mapping[int, float] | None = None,
        aug_shift: Tensor | None = None,
        vocoder: MelVocoder | None = None,
        gt_spec: Tensor | None = None,
        infer: bool = True,
        return_wav: bool = False,
        infer_step: int = 10,
        method: str = "euler",
        t_start: float = 0.0,
        silence_front: float = 0,
        use_tqdm: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Training losses, or the refined mel / audio (upstream ``Unit2Wav.forward``).

        Args:
            units, f0, volume, spk_id, spk_mix_dict, aug_shift: as :meth:`ddsp_stage`.
            vocoder: mel extractor and renderer; required for training and ``return_wav``.
            gt_spec: ``[B, T', M]`` target log-mel (training); at inference without a
                vocoder it stands in for the DDSP mel.
            infer: False returns the two training losses.
            return_wav: render the mel with ``vocoder.infer`` (inference only).
            infer_step: flow ODE steps (``infer.infer_step``).
            method: ``"euler"`` or ``"rk4"`` (``infer.method``).
            t_start: flow start time; training draws t in [t_start, 1) (``model.t_start``);
                at inference ``t_start >= 1`` returns the DDSP mel unrefined.
            silence_front: seconds of leading audio dropped before the mel is taken
                (``int(silence_front * sampling_rate / block_size)`` frames).
            use_tqdm: accepted for upstream's call form; no progress bar.

        Returns:
            Training: ``(ddsp_loss, reflow_loss)`` scalars, ``ddsp_loss = mse(ddsp_mel, gt_spec)``.
            Inference: mel ``[B, T', M]``, or audio ``[B, samples]`` with ``return_wav``
            (the vocoder gets ``f0[:, -T':]``).

        Raises:
            ValueError: see :meth:`CascadeModel._ddsp_mel`; an unknown ``method``.
        """
        start_frame = int(silence_front * self.sampling_rate_hz / self.block)
        ddsp_mel = self._ddsp_mel(units, f0, volume, spk_id, spk_mix_dict, aug_shift, vocoder, gt_spec, infer,
                                  return_wav, start_frame)  # fmt: skip
        if not infer:
            ddsp_loss = F.mse_loss(ddsp_mel, gt_spec)
            if self.zero_loss_from_t1 and t_start >= 1.0:
                return ddsp_loss, torch.zeros((), dtype=ddsp_loss.dtype, device=ddsp_loss.device)
            return ddsp_loss, self.reflow_model(ddsp_mel, gt_spec=gt_spec, infer=False, t_start=t_start)
        mel = ddsp_mel
        if t_start < 1.0:
            mel = self.reflow_model(ddsp_mel, gt_spec=ddsp_mel, infer=True, infer_step=infer_step, method=method,
                                    t_start=t_start)  # fmt: skip
        if return_wav:
            return vocoder.infer(mel, f0[:, -mel.shape[1] :])
        return mel
