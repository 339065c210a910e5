"""Unit2Control of DDSP-SVC 6.1: units and the exciter itself -> synthesiser controls.

Source: upstream DDSP-SVC ``ddsp/unit2control.py`` and ``ddsp/model_conformer_naive.py``,
branch ``6.1``. It differs from 5.x/6.0's network (:mod:`mlflow_ddsp.models.unit2control`):

1. ``stack``: weight-normed Conv1d(n_unit -> 512, k3), PReLU(512), weight-normed
   Conv1d(512 -> D, k3) over the units;
2. ``stack2``: the same shape of stack over the *exciter*: each frame's
   ``block_size`` combtooth samples and ``block_size`` noise samples
   (``2 * block_size`` channels); its output is added to ``stack``'s;
3. plus Linear(1, D) of ``volume``, a speaker embedding when ``n_spk > 1`` and
   optionally a bias-free pitch-shift embedding of ``aug_shift / 5``. Upstream
   still builds ``f0_embed`` and ``phase_embed`` but never calls them (they are
   kept: they are part of the checkpoint);
4. ``decoder``: ``n_aux_layers`` layers of ``x + conv_module(x)``, each conv module
   ``[LayerNorm] -> 1x1 -> SwiGLU -> depthwise k31 -> PReLU -> 1x1``
   (:class:`~mlflow_ddsp.models.lynxnet.GatedConvModule`, LayerNorm with
   ``use_norm``), preceded with ``use_attention`` by ``x + attn(LayerNorm(x))``;
5. ``norm`` (LayerNorm) and ``dense_out`` (weight-normed Linear), split into controls.

Shapes: ``B`` batch, ``T`` frames, ``C`` unit channels, ``D`` hidden width
(``model.n_aux_chans``, 256).

Upstream's attention is ``torch.nn.TransformerEncoderLayer`` built sequence-first
but handed ``[B, T, D]``: it attends across the *batch* at each frame, not across
frames. This port keeps that behaviour (and the layer) so trained checkpoints
give the same output; with one clip per batch (inference) each frame attends
only to itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlflow_ddsp.models.lynxnet import GatedConvModule
from mlflow_ddsp.models.unit2control import Unit2Control, WeightNormLinear

__all__ = ["WeightNormConv1d", "GatedConformerLayer", "GatedConformerDecoder", "Unit2Control61"]

STACK_CHANNELS = 512  # width inside both input stacks, fixed upstream


class WeightNormConv1d(nn.Module):
    """Conv1d with weight normalisation per output channel: ``W = g * V / ||V||``.

    Stores ``weight_g [out, 1, 1]``, ``weight_v [out, in, k]`` and ``bias [out]``
    exactly as the legacy ``torch.nn.utils.weight_norm(nn.Conv1d(...))`` does
    (default ``dim=0``), so upstream checkpoints load as they are. 'Same' padding
    ``k // 2``: ``[B, in, T] -> [B, out, T]`` for odd ``k``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        init = nn.Conv1d(in_channels, out_channels, kernel_size)  # torch's default Conv1d initialisation
        self.padding = kernel_size // 2
        self.bias = nn.Parameter(init.bias.detach().clone())
        # g starts at ||V||, so the initial effective weight equals V (as weight_norm does)
        self.weight_g = nn.Parameter(init.weight.detach().norm(dim=(1, 2), keepdim=True))
        self.weight_v = nn.Parameter(init.weight.detach().clone())

    @property
    def weight(self) -> Tensor:
        """The effective ``[out, in, k]`` kernel."""
        # the fused op behind torch's weight_norm: bit-identical to upstream
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, in, T]`` -> ``[B, out, T]``."""
        return F.conv1d(x, self.weight, self.bias, padding=self.padding)


def _input_stack(in_channels: int, out_channels: int) -> nn.Sequential:
    """Weight-normed conv k3 -> PReLU(512) -> weight-normed conv k3 (keys ``0``, ``1``, ``2``)."""
    return nn.Sequential(
        WeightNormConv1d(in_channels, STACK_CHANNELS, 3),
        nn.PReLU(num_parameters=STACK_CHANNELS),
        WeightNormConv1d(STACK_CHANNELS, out_channels, 3),
    )


class GatedConformerLayer(nn.Module):
    """``x + attn(norm(x))`` (only with attention), then ``x + conformer(x)``; ``[B, T, D] -> [B, T, D]``.

    Keys: ``conformer.net.*``; with attention also ``attn.*`` (a
    ``TransformerEncoderLayer``: 8 heads, feed-forward ``4 D``, GELU, dropout 0.1)
    and ``norm``. Upstream ``CFNEncoderLayer``, ``ddsp/model_conformer_naive.py``, 6.1.
    """

    def __init__(self, dim: int, num_heads: int = 8, use_norm: bool = False, use_attention: bool = False) -> None:
        super().__init__()
        self.conformer = GatedConvModule(dim, expansion_factor=2, kernel_size=31, use_norm=use_norm)
        self.attn: nn.Module | None = None
        if use_attention:
            # sequence-first on purpose: upstream feeds [B, T, D] to it (see the module docstring)
            self.attn = nn.TransformerEncoderLayer(
                d_model=dim, nhead=num_heads, dim_feedforward=dim * 4, dropout=0.1, activation="gelu"
            )
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, T, D]`` -> ``[B, T, D]``."""
        if self.attn is not None:
            x = x + self.attn(self.norm(x))
        return x + self.conformer(x)


class GatedConformerDecoder(nn.Module):
    """A stack of :class:`GatedConformerLayer` (keys ``encoder_layers.<i>.*``)."""

    def __init__(self, num_layers: int, dim_model: int, use_norm: bool = False, use_attention: bool = False) -> None:
        super().__init__()
        self.encoder_layers = nn.ModuleList(
            GatedConformerLayer(dim_model, use_norm=use_norm, use_attention=use_attention) for _ in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, T, D]`` -> ``[B, T, D]``."""
        for layer in self.encoder_layers:
            x = layer(x)
        return x


class Unit2Control61(nn.Module):
    """Predict named control tracks from units, the exciter's frames and volume (6.1)."""

    # speaker handling is the same as 5.x/6.0's (ids 1-based, optional weighted mix)
    add_speaker = Unit2Control.add_speaker
    _check_speaker_range = Unit2Control._check_speaker_range

    def __init__(
        self,
        n_unit: int,
        block_size: int,
        n_spk: int,
        output_splits: Mapping[str, int],
        num_layers: int = 3,
        dim_model: int = 256,
        use_norm: bool = False,
        use_attention: bool = False,
        use_pitch_aug: bool = False,
    ) -> None:
        """
        Args:
            n_unit: unit channels ``C`` (``data.encoder_out_channels``).
            block_size: samples per frame; the exciter stack reads ``2 * block_size`` channels.
            n_spk: number of speakers; an embedding table exists only when > 1.
            output_splits: control name -> channels, in output order.
            num_layers: decoder layers (``model.n_aux_layers``).
            dim_model: hidden width ``D`` (``model.n_aux_chans``).
            use_norm: LayerNorm at the start of each decoder conv module (``model.use_norm``).
            use_attention: add a self-attention block to each decoder layer (``model.use_attention``).
            use_pitch_aug: add a bias-free embedding of the key shift (``model.use_pitch_aug``).
        """
        super().__init__()
        self.output_splits = dict(output_splits)
        self.n_spk = n_spk
        self.f0_embed = nn.Linear(1, dim_model)  # unused, see the module docstring
        self.phase_embed = nn.Linear(1, dim_model)  # unused, see the module docstring
        self.volume_embed = nn.Linear(1, dim_model)
        if n_spk > 1:
            self.spk_embed = nn.Embedding(n_spk, dim_model)
        self.aug_shift_embed = nn.Linear(1, dim_model, bias=False) if use_pitch_aug else None
        self.stack = _input_stack(n_unit, dim_model)
        self.stack2 = _input_stack(2 * block_size, dim_model)
        self.decoder = GatedConformerDecoder(num_layers, dim_model, use_norm=use_norm, use_attention=use_attention)
        self.norm = nn.LayerNorm(dim_model)
        self.dense_out = WeightNormLinear(dim_model, sum(self.output_splits.values()))

    def forward(
        self,
        units: Tensor,
        source_frames: Tensor,
        noise_frames: Tensor,
        volume: Tensor,
        spk_id: Tensor | int | None = None,
        spk_mix_dict: Mapping[int, float] | None = None,
        aug_shift: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Predict controls.

        Args:
            units: ``[B, T, C]``.
            source_frames: ``[B, T, block_size]`` the combtooth cut into frames.
            noise_frames: ``[B, T, block_size]`` the noise exciter cut into frames.
            volume: ``[B, T, 1]`` RMS.
            spk_id: 1-based speaker id (int, ``[B]`` or ``[B, 1]``); needed when n_spk > 1.
            spk_mix_dict: ``{1-based speaker id: weight}``; overrides ``spk_id``.
            aug_shift: ``[B, 1, 1]`` key shift in semitones (used with ``use_pitch_aug``).

        Returns:
            ``({name: [B, T, channels]}, hidden [B, T, D])``; hidden is after ``norm``.

        Raises:
            ValueError: a speaker id out of range or missing (see ``add_speaker``).
        """
        exciter = torch.cat((source_frames, noise_frames), dim=-1).transpose(1, 2)  # [B, 2 * block, T]
        x = self.stack(units.transpose(1, 2)) + self.stack2(exciter)
        x = x.transpose(1, 2) + self.volume_embed(volume)
        x = self.add_speaker(x, spk_id, spk_mix_dict)
        if self.aug_shift_embed is not None and aug_shift is not None:
            x = x + self.aug_shift_embed(aug_shift / 5)
        x = self.norm(self.decoder(x))
        controls = torch.split(self.dense_out(x), list(self.output_splits.values()), dim=-1)
        return dict(zip(self.output_splits, controls, strict=True)), x
