"""DDSP-SVC 6.1: the 6.1 DDSP stage refined by a rectified flow with a LYNXNet velocity net.

Source: upstream DDSP-SVC ``reflow/vocoder.py`` ``Unit2Wav``, branch ``6.1``
(config ``model.type: RectifiedFlow`` with the keys ``n_aux_layers``,
``n_aux_chans``, ``use_norm`` and ``use_attention``). Two submodules, named as
upstream so the state_dict keys match:

- ``ddsp_model``: :class:`~mlflow_ddsp.models.combsub_superfast61.CombSubSuperFast61`;
- ``reflow_model``: :class:`~mlflow_ddsp.models.rectified_flow.RectifiedFlow`
  (the same as 6.0: upstream's ``reflow/reflow.py`` is byte-identical on both
  branches) around :class:`~mlflow_ddsp.models.lynxnet.LYNXNet`.

The flow's condition is the log-mel of the DDSP stage's audio, taken with the
vocoder's own extractor (``vocoder.extract``). Training returns
``(mse(ddsp_mel, gt_mel), flow loss)``; inference starts the flow at ``t_start``
from the DDSP mel blended with noise and returns the refined mel (or, with
``return_wav``, the vocoder's audio).

6.0 and 6.1 checkpoints share ``model.type`` but not their keys;
:func:`reflow_generation` tells them apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.models.base import check_int
from mlflow_ddsp.models.combsub_superfast61 import CombSubSuperFast61
from mlflow_ddsp.models.lynxnet import LYNXNet
from mlflow_ddsp.models.rectified_flow import RectifiedFlow

__all__ = ["GENERATION_MARKERS", "MelVocoder", "LynxReflowUnit2Wav", "reflow_generation"]

#: what distinguishes each upstream RectifiedFlow generation's state_dict (for messages)
GENERATION_MARKERS = {
    "6.0": "NaiveV2Diff velocity net (reflow_model.velocity_fn.residual_layers.*.conformer) "
    "and GroupNorm unit stack (ddsp_model.unit2ctrl.stack.0.weight)",
    "6.1": "LYNXNet velocity net (reflow_model.velocity_fn.residual_layers.*.convmodule) "
    "and weight-normed unit/exciter stacks (ddsp_model.unit2ctrl.stack2.0.weight_v)",
}

_LAYER_KEY = re.compile(r"^reflow_model\.velocity_fn\.residual_layers\.\d+\.(conformer|convmodule)\.")


def reflow_generation(state_dict: Mapping[str, Any]) -> str | None:
    """Which upstream DDSP-SVC generation made a ``model.type: RectifiedFlow`` state_dict.

    Decided from key names only (see :data:`GENERATION_MARKERS`): ``"6.0"`` when the
    velocity net is NaiveV2Diff (``reflow_model.velocity_fn.residual_layers.<i>.conformer.*``,
    upstream master ``reflow/naive_v2_diff.py``) and Unit2Control has its plain
    ``ddsp_model.unit2ctrl.stack.0.weight``; ``"6.1"`` when the velocity net is LYNXNet
    (``...residual_layers.<i>.convmodule.*``, upstream 6.1 ``reflow/lynxnet.py``) and
    Unit2Control has the exciter stack ``ddsp_model.unit2ctrl.stack2.0.weight_v``.

    Args:
        state_dict: ``{key: tensor}`` (upstream ``model_<N>.pt``'s ``'model'`` entry).

    Returns:
        ``"6.0"``, ``"6.1"``, or None when the keys fit neither (another model type,
        a mix of the two generations, or no velocity-net layers).
    """
    velocity = {match.group(1) for match in map(_LAYER_KEY.match, state_dict) if match}
    if velocity == {"conformer"} and "ddsp_model.unit2ctrl.stack.0.weight" in state_dict:
        if "ddsp_model.unit2ctrl.stack2.0.weight_v" not in state_dict:
            return "6.0"
    if velocity == {"convmodule"} and "ddsp_model.unit2ctrl.stack2.0.weight_v" in state_dict:
        if "ddsp_model.unit2ctrl.stack.0.weight" not in state_dict:
            return "6.1"
    return None


class MelVocoder(Protocol):
    """The vocoder interface this model calls (NSF-HiFiGAN or a stand-in)."""

    def extract(self, audio: Tensor, sample_rate: int = 0, keyshift: float = 0) -> Tensor:
        """``[B, N]`` audio -> ``[B, frames, M]`` log-mel."""
        ...

    def infer(self, mel: Tensor, f0: Tensor) -> Tensor:
        """``[B, frames, M]`` log-mel and ``[B, frames, 1]`` f0 (Hz) -> ``[B, samples]`` audio."""
        ...


class LynxReflowUnit2Wav(nn.Module):
    """Units, f0 and volume -> DDSP audio -> its mel refined by a LYNXNet rectified flow (6.1)."""

    model_type: ClassVar[str] = "RectifiedFlow"
    upstream_version: ClassVar[str] = "6.1"

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
        n_aux_layers: int = 3,
        n_aux_chans: int = 256,
        use_norm: bool = False,
        use_attention: bool = False,
    ) -> None:
        """
        Args:
            sampling_rate: audio rate in Hz (``data.sampling_rate``).
            block_size: samples per frame (``data.block_size``), the vocoder's hop.
            win_length: DDSP STFT size (``model.win_length``), > block_size.
            n_unit: unit channels (``data.encoder_out_channels``).
            n_spk: number of speakers (``model.n_spk``).
            use_pitch_aug: embed the key shift (``model.use_pitch_aug``).
            out_dims: mel bins ``M`` (the vocoder's ``num_mels``).
            n_layers: LYNXNet residual layers (``model.n_layers``).
            n_chans: LYNXNet width (``model.n_chans``), even and >= 4.
            n_aux_layers: DDSP control-network decoder layers (``model.n_aux_layers``).
            n_aux_chans: DDSP control-network width (``model.n_aux_chans``).
            use_norm: LayerNorm in the control network's conv modules (``model.use_norm``).
            use_attention: self-attention in the control network (``model.use_attention``).

        Raises:
            ConfigError: a value is out of range (the message names the config key).
        """
        super().__init__()
        check_int("out_dims", out_dims, 1)
        check_int("n_layers", n_layers, 1)
        check_int("n_chans", n_chans, 4)
        if n_chans % 2:
            raise ConfigError(f"Invalid value for model.n_chans={n_chans}: must be even (sinusoidal step embedding)")
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
            "n_aux_layers": n_aux_layers,
            "n_aux_chans": n_aux_chans,
            "use_norm": use_norm,
            "use_attention": use_attention,
        }
        # validates sampling_rate, block_size, win_length, n_unit, n_spk and the 6.1 keys
        self.ddsp_model = CombSubSuperFast61(
            sampling_rate=sampling_rate,
            block_size=block_size,
            win_length=win_length,
            n_unit=n_unit,
            n_spk=n_spk,
            n_aux_layers=n_aux_layers,
            n_aux_chans=n_aux_chans,
            use_norm=use_norm,
            use_attention=use_attention,
            use_pitch_aug=use_pitch_aug,
        )
        self.reflow_model = RectifiedFlow(
            LYNXNet(in_dims=out_dims, dim_cond=out_dims, n_layers=n_layers, n_chans=n_chans), out_dims=out_dims
        )
        self.sampling_rate_hz = sampling_rate
        self.block = block_size
        self.out_dims = out_dims

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
        """The DDSP synthesiser alone (one ``randn`` noise draw from the global RNG, as upstream).

        Args:
            units: ``[B, T, n_unit]``.
            f0: ``[B, T, 1]`` Hz.
            volume: ``[B, T, 1]`` RMS.
            spk_id: 1-based speaker id (int, ``[B]`` or ``[B, 1]``); needed when n_spk > 1.
            spk_mix_dict: ``{1-based speaker id: weight}``, overrides ``spk_id``.
            aug_shift: ``[B, 1, 1]`` key shift in semitones.
            infer: passed on (no effect on this synthesiser).

        Returns:
            ``(ddsp_wav [B, T * block_size], hidden [B, T, n_aux_chans])``.
        """
        out = self.ddsp_model.synthesize(units, f0, volume, spk_id, spk_mix_dict, aug_shift=aug_shift, infer=infer)
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
        """Training losses, or the refined mel / audio (upstream 6.1 ``Unit2Wav.forward``).

        Args:
            units, f0, volume, spk_id, spk_mix_dict, aug_shift: as :meth:`ddsp_stage`.
            vocoder: supplies ``extract`` (the DDSP mel) and, with ``return_wav``, ``infer``.
            gt_spec: ``[B, T', M]`` target log-mel (training); at inference without a
                vocoder it stands in for the DDSP mel.
            infer: False for training.
            return_wav: return ``vocoder.infer(mel, f0[:, -T':])`` instead of the mel.
            infer_step: flow steps (``infer.infer_step``).
            method: ``"euler"`` or ``"rk4"`` (``infer.method``).
            t_start: flow start time (``model.t_start``); at >= 1 the flow is skipped.
            silence_front: seconds of leading audio left out of the DDSP mel (whole frames).
            use_tqdm: accepted for upstream's call form; no progress bar is shown.

        Returns:
            Training: ``(ddsp_loss, reflow_loss)`` scalars; with ``t_start >= 1`` the
            reflow loss is a zero of ``ddsp_loss``'s dtype and device (upstream:
            ``torch.tensor(0)``, an int64 CPU tensor). Inference: mel ``[B, T', M]``,
            or audio ``[B, samples]`` with ``return_wav``.

        Raises:
            ValueError: training without ``vocoder`` or ``gt_spec``; inference with
                neither a vocoder nor ``gt_spec``; ``return_wav`` without a vocoder.
        """
        if not infer and (vocoder is None or gt_spec is None):
            raise ValueError("training (infer=False) needs a vocoder (for the DDSP mel) and gt_spec [B, T, M]")
        if infer and vocoder is None and (return_wav or gt_spec is None):
            raise ValueError("inference needs a vocoder (for the DDSP mel and for return_wav), or gt_spec as the mel")
        ddsp_wav, _ = self.ddsp_stage(units, f0, volume, spk_id, spk_mix_dict, aug_shift, infer=infer)
        start_frame = int(silence_front * self.sampling_rate_hz / self.block)
        ddsp_mel = vocoder.extract(ddsp_wav[:, start_frame * self.block :]) if vocoder is not None else gt_spec

        if not infer:
            ddsp_loss = F.mse_loss(ddsp_mel, gt_spec)
            if t_start < 1.0:
                reflow_loss = self.reflow_model(ddsp_mel, gt_spec=gt_spec, infer=False, t_start=t_start)
            else:
                reflow_loss = torch.zeros((), dtype=ddsp_loss.dtype, device=ddsp_loss.device)
            return ddsp_loss, reflow_loss

        if t_start < 1.0:
            mel = self.reflow_model(
                ddsp_mel, gt_spec=ddsp_mel, infer=True, infer_step=infer_step, method=method, t_start=t_start
            )
        else:
            mel = ddsp_mel
        if return_wav:
            return vocoder.infer(mel, f0[:, -mel.shape[1] :])
        return mel
