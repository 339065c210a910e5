"""DDSP-SVC 5.0 (``model.type: DiffusionFast``): CombSubSuperFast, then shallow Gaussian diffusion on its mel.

Source: upstream DDSP-SVC ``diffusion/vocoder.py`` ``Unit2WavFast`` (branch ``master``).

Data flow (``B`` batch, ``T`` frames, ``M`` mel bins)::

    ddsp_wav [B, T*block], hidden = ddsp_model(units, f0, volume, ...)
    ddsp_mel [B, T', M]           = vocoder.extract(ddsp_wav)
    training:  (mse(ddsp_mel, gt_spec), diff_model(cond=ddsp_mel, gt_spec, k_step))
    inference: mel = diff_model(cond=ddsp_mel, start=ddsp_mel noised to step k_step - 1)

The diffusion's condition is the DDSP stage's *mel*, not the hidden features, and
it is not detached in training (upstream). State dict: ``ddsp_model.*`` (the
CombSubSuperFast keys) and ``diff_model.*`` (:class:`GaussianDiffusion` buffers and
``diff_model.denoise_fn.*``, a :class:`NaiveV2Diff`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from mlflow_ddsp.models.cascade import CascadeModel, MelVocoder, check_decoder_size
from mlflow_ddsp.models.combsub_superfast import CombSubSuperFast
from mlflow_ddsp.models.gaussian_diffusion import GaussianDiffusion
from mlflow_ddsp.models.naive_v2_diff import NaiveV2Diff

__all__ = ["MelVocoder", "DiffusionUnit2WavFast"]


class DiffusionUnit2WavFast(CascadeModel):
    """DDSP-SVC 5.0 cascade: CombSubSuperFast + Gaussian diffusion refining its mel."""

    model_type: ClassVar[str] = "DiffusionFast"
    upstream_version: ClassVar[str] = "5.0"

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
            win_length: DDSP STFT window (``model.win_length``).
            n_unit: unit channels (``data.encoder_out_channels``).
            n_spk: speakers (``model.n_spk``).
            use_pitch_aug: key-shift embedding (``model.use_pitch_aug``).
            out_dims: mel bins ``M`` (the vocoder's ``num_mels``).
            n_layers: denoiser layers (``model.n_layers``).
            n_chans: denoiser width (``model.n_chans``), even and >= 4.

        Raises:
            ConfigError: a value is out of range (the message names the config key).
        """
        super().__init__()
        check_decoder_size(n_layers, n_chans, out_dims, use_pitch_aug)
        # CombSubSuperFast checks sampling_rate, block_size, win_length, n_unit and n_spk
        stage = CombSubSuperFast(sampling_rate=sampling_rate, block_size=block_size, win_length=win_length,
                                 n_unit=n_unit, n_spk=n_spk, use_pitch_aug=use_pitch_aug)  # fmt: skip
        self._record(stage, sampling_rate=sampling_rate, block_size=block_size, win_length=win_length, n_unit=n_unit,
                     n_spk=n_spk, use_pitch_aug=use_pitch_aug, out_dims=out_dims, n_layers=n_layers,
                     n_chans=n_chans)  # fmt: skip
        denoiser = NaiveV2Diff(mel_channels=out_dims, dim=n_chans, num_layers=n_layers, condition_dim=out_dims,
                               use_mlp=False)  # fmt: skip
        self.diff_model = GaussianDiffusion(denoiser, out_dims=out_dims)

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
        infer_speedup: int = 10,
        method: str = "dpm-solver",
        k_step: int | None = None,
        use_tqdm: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Training losses or converted mel/audio (upstream ``Unit2WavFast.forward``).

        Args:
            units: ``[B, T, n_unit]`` content units.
            f0: ``[B, T, 1]`` Hz.
            volume: ``[B, T, 1]`` frame RMS.
            spk_id: 1-based speaker id (``[B, 1]`` or int); needed when n_spk > 1.
            spk_mix_dict: ``{1-based id: weight}``, overrides ``spk_id``.
            aug_shift: ``[B, 1, 1]`` key/formant shift in semitones (``use_pitch_aug``).
            vocoder: mel extractor/renderer (:class:`MelVocoder`); required in training,
                at inference unless ``gt_spec`` stands in for the DDSP mel.
            gt_spec: ``[B, T', M]`` target log-mel (training); at inference it replaces the
                DDSP mel only when no vocoder is given.
            infer: inference (True) or training losses (False).
            return_wav: render the refined mel with ``vocoder.infer(mel, f0)``.
            infer_speedup: solver stride (``infer.speedup``).
            method: sampler (``infer.method``): 'dpm-solver', 'unipc', 'ddim' or 'pndm'.
            k_step: diffusion depth. Training: steps are drawn in ``[0, k_step)``;
                upstream's trainer passes ``model.k_step_max`` (100), and None draws in
                ``[0, 1000)`` as upstream. Inference: the shallow-diffusion depth,
                ``<= model.k_step_max`` (the caller clamps, as upstream's ``main_diff.py``);
                ``k_step <= 0`` returns the DDSP mel unchanged; None is refused (upstream
                fails on it).
            use_tqdm: accepted for upstream's call form; ignored.

        Returns:
            Training: ``(ddsp_loss, diff_loss)`` scalars. Inference: mel ``[B, T', M]``,
            or audio ``[B, samples]`` with ``return_wav``.

        Raises:
            ValueError: a needed vocoder or ``gt_spec`` is missing (see
                :meth:`~mlflow_ddsp.models.cascade.CascadeModel._ddsp_mel`), ``k_step`` is None at
                inference, or a sampler argument is invalid (see :class:`GaussianDiffusion`).
        """
        if infer and k_step is None:
            raise ValueError(
                "k_step is required for inference: the shallow-diffusion depth, at most model.k_step_max "
                "(upstream main_diff.py passes model.k_step_max when none is asked for)"
            )
        ddsp_mel = self._ddsp_mel(units, f0, volume, spk_id, spk_mix_dict, aug_shift, vocoder, gt_spec, infer,
                                  return_wav)  # fmt: skip

        if not infer:
            ddsp_loss = F.mse_loss(ddsp_mel, gt_spec)
            diff_loss = self.diff_model(ddsp_mel, gt_spec=gt_spec, k_step=k_step, infer=False)
            return ddsp_loss, diff_loss

        if k_step > 0:
            mel = self.diff_model(
                ddsp_mel,
                gt_spec=ddsp_mel,
                infer=True,
                infer_speedup=infer_speedup,
                method=method,
                k_step=k_step,
            )
        else:
            mel = ddsp_mel
        if return_wav:
            return vocoder.infer(mel, f0)
        return mel
