"""Unit2Control: content units + f0 + phase + volume (+ speaker) -> synthesiser controls.

The network shared by every DDSP-SVC model:

1. ``stack``: Conv1d(n_unit -> 256, k3), GroupNorm(4), LeakyReLU, Conv1d(256 -> 256, k3)
   over the units;
2. plus Linear(1, 256) embeddings of ``log(1 + f0/700)`` (a mel-like pitch
   scale), ``phase / pi`` and ``volume``, a speaker embedding when ``n_spk > 1``
   (or a weighted mix of speakers), and optionally a pitch-shift embedding;
3. ``decoder``: PCmer, or the conv-only Conformer for CombSubSuperFast;
4. ``norm`` (LayerNorm) and ``dense_out``, a weight-normalised Linear whose output
   is split into named controls.

Shapes: ``B`` batch, ``T`` frames, ``C`` unit channels; hidden width is 256.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mlflow_ddsp.models.conv_decoder import ConvConformerDecoder
from mlflow_ddsp.models.pcmer import PCmer

__all__ = ["HIDDEN_SIZE", "WeightNormLinear", "Unit2Control"]

HIDDEN_SIZE = 256  # fixed by upstream checkpoints


class WeightNormLinear(nn.Module):
    """Linear layer with weight normalisation ``W = g * V / ||V||`` (row-wise).

    Stores ``weight_g [out, 1]`` and ``weight_v [out, in]`` exactly as the legacy
    ``torch.nn.utils.weight_norm`` did, so upstream checkpoints load as they are
    (the newer parametrization API would rename them).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        init = nn.Linear(in_features, out_features)  # torch's default Linear initialisation
        self.bias = nn.Parameter(init.bias.detach().clone())
        # g starts at ||V||, so the initial effective weight equals V (as weight_norm does)
        self.weight_g = nn.Parameter(init.weight.detach().norm(dim=1, keepdim=True))
        self.weight_v = nn.Parameter(init.weight.detach().clone())

    @property
    def weight(self) -> Tensor:
        """The effective ``[out, in]`` weight."""
        # the fused op behind both torch weight_norm APIs: bit-identical to upstream
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[..., in]`` -> ``[..., out]``."""
        return nn.functional.linear(x, self.weight, self.bias)


class Unit2Control(nn.Module):
    """Predict named control tracks from units and frame-rate f0, phase and volume."""

    def __init__(
        self,
        n_unit: int,
        n_spk: int,
        output_splits: Mapping[str, int],
        decoder: str = "pcmer",
        use_pitch_aug: bool = False,
        pcmer_norm: bool = False,
    ) -> None:
        """
        Args:
            n_unit: unit channels ``C`` (``data.encoder_out_channels``).
            n_spk: number of speakers; an embedding table exists only when > 1.
            output_splits: control name -> channels, in output order.
            decoder: ``"pcmer"`` (Performer + conv) or ``"conv"`` (conv-only Conformer).
            use_pitch_aug: add a bias-free embedding of the key shift (``aug_shift``).
            pcmer_norm: L2-normalise attention queries/keys (PCmer only).
        """
        super().__init__()
        self.output_splits = dict(output_splits)
        self.n_spk = n_spk
        self.f0_embed = nn.Linear(1, HIDDEN_SIZE)
        self.phase_embed = nn.Linear(1, HIDDEN_SIZE)
        self.volume_embed = nn.Linear(1, HIDDEN_SIZE)
        if n_spk > 1:
            self.spk_embed = nn.Embedding(n_spk, HIDDEN_SIZE)
        self.aug_shift_embed = nn.Linear(1, HIDDEN_SIZE, bias=False) if use_pitch_aug else None
        self.stack = nn.Sequential(
            nn.Conv1d(n_unit, HIDDEN_SIZE, 3, 1, 1),
            nn.GroupNorm(4, HIDDEN_SIZE),
            nn.LeakyReLU(),
            nn.Conv1d(HIDDEN_SIZE, HIDDEN_SIZE, 3, 1, 1),
        )
        if decoder == "pcmer":
            self.decoder: nn.Module = PCmer(num_layers=3, num_heads=8, dim_model=HIDDEN_SIZE, qk_norm=pcmer_norm)
        elif decoder == "conv":
            self.decoder = ConvConformerDecoder(num_layers=3, dim_model=HIDDEN_SIZE)
        else:
            raise ValueError(f"decoder={decoder!r}: must be 'pcmer' or 'conv'")
        self.norm = nn.LayerNorm(HIDDEN_SIZE)
        self.dense_out = WeightNormLinear(HIDDEN_SIZE, sum(self.output_splits.values()))

    def add_speaker(
        self,
        x: Tensor,
        spk_id: Tensor | int | None,
        spk_mix_dict: Mapping[int, float] | None,
    ) -> Tensor:
        """Add the speaker embedding (or a weighted mix of them) to hidden features.

        Args:
            x: ``[B, T, 256]`` hidden features.
            spk_id: 1-based speaker id: an int, ``[B]`` or ``[B, 1]`` integer tensor.
            spk_mix_dict: ``{1-based speaker id: weight}``; overrides ``spk_id``.

        Returns:
            ``[B, T, 256]``; ``x`` unchanged when ``n_spk == 1`` (ids are then ignored).
        """
        if self.n_spk <= 1:
            return x
        if spk_mix_dict is not None:
            if not spk_mix_dict:
                raise ValueError("spk_mix_dict is empty: give at least one {speaker_id: weight}")
            for speaker, weight in spk_mix_dict.items():  # loops over speakers, not frames
                self._check_speaker_range(int(speaker), int(speaker))
                index = torch.tensor([[int(speaker) - 1]], dtype=torch.long, device=x.device)
                x = x + weight * self.spk_embed(index)
            return x
        if spk_id is None:
            raise ValueError(f"spk_id is required: this model has n_spk={self.n_spk} speakers (ids 1..{self.n_spk})")
        batch = x.shape[0]
        ids = torch.as_tensor(spk_id, dtype=torch.long, device=x.device)
        if ids.dim() == 0:
            ids = ids.reshape(1, 1)
        elif ids.dim() == 1:
            ids = ids.unsqueeze(-1)
        if ids.dim() != 2 or ids.shape[1] != 1 or ids.shape[0] not in (1, batch):
            raise ValueError(f"spk_id must be an int, [B] or [B, 1] with B={batch}; got shape {tuple(ids.shape)}")
        self._check_speaker_range(int(ids.min()), int(ids.max()))
        return x + self.spk_embed(ids - 1)  # upstream ids are 1-based; [B, 1, 256] broadcasts over T

    def _check_speaker_range(self, low: int, high: int) -> None:
        if low < 1 or high > self.n_spk:
            raise ValueError(f"speaker id out of range [{low}, {high}]: ids are 1..{self.n_spk} (n_spk={self.n_spk})")

    def forward(
        self,
        units: Tensor,
        f0: Tensor,
        phase: Tensor,
        volume: Tensor,
        spk_id: Tensor | int | None = None,
        spk_mix_dict: Mapping[int, float] | None = None,
        aug_shift: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Predict controls.

        Args:
            units: ``[B, T, C]``.
            f0: ``[B, T, 1]`` Hz.
            phase: ``[B, T, 1]`` source phase at each frame start, radians.
            volume: ``[B, T, 1]`` RMS.
            spk_id: see :meth:`add_speaker`.
            spk_mix_dict: see :meth:`add_speaker`.
            aug_shift: ``[B, 1, 1]`` key shift in semitones (used with ``use_pitch_aug``).

        Returns:
            ``({name: [B, T, channels]}, hidden [B, T, 256])``.
        """
        x = self.stack(units.transpose(1, 2)).transpose(1, 2)
        x = x + self.f0_embed(torch.log(1 + f0 / 700)) + self.phase_embed(phase / math.pi) + self.volume_embed(volume)
        x = self.add_speaker(x, spk_id, spk_mix_dict)
        if self.aug_shift_embed is not None and aug_shift is not None:
            x = x + self.aug_shift_embed(aug_shift / 5)
        x = self.norm(self.decoder(x))
        controls = torch.split(self.dense_out(x), list(self.output_splits.values()), dim=-1)
        return dict(zip(self.output_splits, controls, strict=True)), x
