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
the DDSP stage. The vocoder is passed in on each call (a
:class:`~mlflow_ddsp.models.cascade.MelVocoder`); the forward pass is
:class:`~mlflow_ddsp.models.cascade.ReflowCascade`'s, shared with 6.1.

state_dict keys are upstream's: ``ddsp_model.*`` and ``reflow_model.velocity_fn.*``.
"""

from __future__ import annotations

from typing import ClassVar

from mlflow_ddsp.models.cascade import MelVocoder, ReflowCascade, check_decoder_size
from mlflow_ddsp.models.combsub_superfast import CombSubSuperFast
from mlflow_ddsp.models.naive_v2_diff import NaiveV2Diff
from mlflow_ddsp.models.rectified_flow import RectifiedFlow

__all__ = ["MelVocoder", "ReflowUnit2Wav"]


class ReflowUnit2Wav(ReflowCascade):
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
            n_chans: velocity network width (``model.n_chans``), even and >= 4.

        Raises:
            ConfigError: a value is out of range (the message names its config key).
        """
        super().__init__()
        check_decoder_size(n_layers, n_chans, out_dims, use_pitch_aug)
        # CombSubSuperFast checks sampling_rate, block_size, win_length, n_unit and n_spk
        stage = CombSubSuperFast(sampling_rate=sampling_rate, block_size=block_size, win_length=win_length,
                                 n_unit=n_unit, n_spk=n_spk, use_pitch_aug=use_pitch_aug)  # fmt: skip
        self._record(stage, sampling_rate=sampling_rate, block_size=block_size, win_length=win_length, n_unit=n_unit,
                     n_spk=n_spk, use_pitch_aug=use_pitch_aug, out_dims=out_dims, n_layers=n_layers,
                     n_chans=n_chans)  # fmt: skip
        velocity = NaiveV2Diff(mel_channels=out_dims, dim=n_chans, num_layers=n_layers, condition_dim=out_dims,
                               use_mlp=False)  # fmt: skip
        self.reflow_model = RectifiedFlow(velocity, out_dims=out_dims)
