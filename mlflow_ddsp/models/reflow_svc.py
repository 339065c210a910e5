"""DDSP-SVC 6.0: a CombSubSuperFast DDSP stage refined by a rectified flow over mels.

Source: upstream DDSP-SVC ``reflow/vocoder.py`` ``Unit2Wav`` (branch ``master``,
``model.type: RectifiedFlow``). Two stages:

1. ``ddsp_model`` (:class:`~mlflow_ddsp.models.combsub_superfast.CombSubSuperFast`)
   renders audio ``[B, T * block_size]`` from units, f0 and volume;
2. the vocoder's mel extractor turns that audio into the DDSP mel ``[B, T', M]``,
   which conditions ``reflow_model`` (:class:`~mlflow_ddsp.models.rectified_flow.RectifiedFlow`
   around :class:`~mlflow_ddsp.models.naive_v2_diff.NaiveV2Diff`); at inference it
   is also the flow's starting point at ``t_start``. The vocoder then renders the
   refined mel (``return_wav``).

The condition is the DDSP mel itself, not detached: the flow's loss also trains
the DDSP stage. The vocoder is passed in on each call (any object with
``extract(audio [B, N]) -> mel [B, frames, M]`` and ``infer(mel, f0 [B, frames, 1])
-> audio [B, samples]``); this module does not import one.

state_dict keys are upstream's: ``ddsp_model.*`` and ``reflow_model.velocity_fn.*``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import torch.nn.functional as F
from torch import Tensor, nn

from mlflow_ddsp.models.base import check_bool, check_int
from mlflow_ddsp.models.combsub_superfast import CombSubSuperFast
from mlflow_ddsp.models.naive_v2_diff import NaiveV2Diff
from mlflow_ddsp.models.rectified_flow import RectifiedFlow

__all__ = ["MelVocoder", "ReflowUnit2Wav"]


class MelVocoder(Protocol):
    """What the model needs from a vocoder (upstream ``reflow/vocoder.py`` ``Vocoder``)."""

    def extract(self, audio: Tensor, sample_rate: int = 0, keyshift: float = 0) -> Tensor:
        """``[B, N]`` audio -> ``[B, frames, M]`` log-mel."""
        ...

    def infer(self, mel: Tensor, f0: Tensor) -> Tensor:
        """``[B, frames, M]`` log-mel and ``[B, frames, 1]`` f0 (Hz) -> ``[B, samples]`` audio."""
        ...


class ReflowUnit2Wav(nn.Module):
    """DDSP-SVC 6.0 model (``model.type: RectifiedFlow``, 16.94 M parameters at the defaults)."""

    model_type: ClassVar[str] = "RectifiedFlow"
    upstream_version: ClassVar[str] = "6.0"

    def __init__(
        self,
        *,
        sampling_rate: int,
        block_size: int,
        win_length: int = 2048,
        n_unit: int = 768,
        n_spk: int = 1,
        use_pitch_aug: bool = False,
        out_dims: int = 128,
        n_layers: int = 6,
        n_chans: int = 512,
    ) -> None:
        """
        Args:
            sampling_rate: audio rate in Hz (``data.sampling_rate``).
            block_size: samples per frame (``data.block_size``).
            win_length: DDSP stage STFT size (``model.win_length``).
            n_unit: unit channels (``data.encoder_out_channels``).
            n_spk: number of speakers (``model.n_spk``).
            use_pitch_aug: embed a key shift (``model.use_pitch_aug``; adds ``aug_shift_embed``).
            out_dims: mel bins ``M``, the vocoder's ``num_mels``.
            n_layers: velocity network layers (``model.n_layers``).
            n_chans: velocity network width (``model.n_chans``).

        Raises:
            ConfigError: a value is out of range (the message names its config key).
        """
        super().__init__()
        check_int("n_layers", n_layers, 1)
        check_int("n_chans", n_chans, 2)
        check_int("vocoder num_mels (out_dims)", out_dims, 1)
        check_bool("use_pitch_aug", use_pitch_aug)
        self.ddsp_model = CombSubSuperFast(
            sampling_rate=sampling_rate,
            block_size=block_size,
            win_length=win_length,
            n_unit=n_unit,
            n_spk=n_spk,
            use_pitch_aug=use_pitch_aug,
        )
        velocity = NaiveV2Diff(
            mel_channels=out_dims, dim=n_chans, num_layers=n_layers, condition_dim=out_dims, use_mlp=False
        )
        self.reflow_model = RectifiedFlow(velocity, out_dims=out_dims)
        self.sampling_rate_hz = sampling_rate
        self.block = block_size
        self.out_dims = out_dims
        self._hparams: dict[str, Any] = {
            "sampling_rate": sampling_rate,
            "block_size": block_size,
            "win_length": win_length,
            "n_unit": n_unit,
            "n_spk": n_spk,
            "use_pitch_aug": use_pitch_aug,
            "out_dims": out_dims,
            "n_layers": n_layers,
            "n_chans": n_chans,
        }

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
        """Run the DDSP stage (draws its Gaussian noise from the global RNG, as upstream).

        Args:
            units: ``[B, T, n_unit]``.
            f0: ``[B, T, 1]`` Hz.
            volume: ``[B, T, 1]``.
            spk_id: 1-based speaker id (int, ``[B]`` or ``[B, 1]``).
            spk_mix_dict: ``{1-based id: weight}``; overrides ``spk_id``.
            aug_shift: ``[B, 1, 1]`` key shift in semitones (``use_pitch_aug`` models).
            infer: passed on (CombSubSuperFast computes the same either way).

        Returns:
            ``(ddsp_wav [B, T * block_size], hidden [B, T, 256])``.
        """
        out = self.ddsp_model.synthesize(
            units, f0, volume, spk_id, spk_mix_dict, aug_shift=aug_shift, infer=infer
        )
        return out.audio, out.hidden

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
        """Training losses or converted mel / audio (upstream ``Unit2Wav.forward``).

        Args:
            units, f0, volume, spk_id, spk_mix_dict, aug_shift: as :meth:`ddsp_stage`.
            vocoder: mel extractor and renderer (see :class:`MelVocoder`); required for
                training and for ``return_wav``.
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
            ValueError: training without ``vocoder`` or ``gt_spec``; inference with neither
                ``vocoder`` nor ``gt_spec``; ``return_wav`` without ``vocoder``.
        """
        if not infer and (vocoder is None or gt_spec is None):
            raise ValueError("training (infer=False) needs both vocoder and gt_spec")
        if infer and return_wav and vocoder is None:
            raise ValueError("return_wav=True needs a vocoder")
        ddsp_wav, _ = self.ddsp_stage(
            units, f0, volume, spk_id=spk_id, spk_mix_dict=spk_mix_dict, aug_shift=aug_shift, infer=infer
        )
        start_frame = int(silence_front * self.sampling_rate_hz / self.block)
        ddsp_mel = vocoder.extract(ddsp_wav[:, start_frame * self.block :]) if vocoder is not None else None

        if not infer:
            ddsp_loss = F.mse_loss(ddsp_mel, gt_spec)
            reflow_loss = self.reflow_model(ddsp_mel, gt_spec=gt_spec, infer=False, t_start=t_start)
            return ddsp_loss, reflow_loss

        if ddsp_mel is None:
            if gt_spec is None:
                raise ValueError("inference needs a vocoder (to take the DDSP mel) or gt_spec")
            ddsp_mel = gt_spec
        if t_start < 1.0:
            mel = self.reflow_model(
                ddsp_mel, gt_spec=ddsp_mel, infer=True, infer_step=infer_step, method=method, t_start=t_start
            )
        else:
            mel = ddsp_mel
        if return_wav:
            return vocoder.infer(mel, f0[:, -mel.shape[1] :])
        return mel
