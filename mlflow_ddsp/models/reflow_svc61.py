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
from typing import Any, ClassVar

from mlflow_ddsp.models.cascade import MelVocoder, ReflowCascade, check_decoder_size
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


class LynxReflowUnit2Wav(ReflowCascade):
    """Units, f0 and volume -> DDSP audio -> its mel refined by a LYNXNet rectified flow (6.1)."""

    model_type: ClassVar[str] = "RectifiedFlow"
    upstream_version: ClassVar[str] = "6.1"
    zero_loss_from_t1: ClassVar[bool] = True  # upstream 6.1 returns a zero flow loss for t_start >= 1

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
        check_decoder_size(n_layers, n_chans, out_dims, use_pitch_aug)
        # validates sampling_rate, block_size, win_length, n_unit, n_spk and the 6.1 keys
        stage = CombSubSuperFast61(
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
        self._record(stage, sampling_rate=sampling_rate, block_size=block_size, win_length=win_length, n_unit=n_unit,
                     n_spk=n_spk, use_pitch_aug=use_pitch_aug, out_dims=out_dims, n_layers=n_layers, n_chans=n_chans,
                     n_aux_layers=n_aux_layers, n_aux_chans=n_aux_chans, use_norm=use_norm,
                     use_attention=use_attention)  # fmt: skip
        self.reflow_model = RectifiedFlow(
            LYNXNet(in_dims=out_dims, dim_cond=out_dims, n_layers=n_layers, n_chans=n_chans), out_dims=out_dims
        )

