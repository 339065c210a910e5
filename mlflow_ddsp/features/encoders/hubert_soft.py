"""bshall's HuBERT-Soft content encoder (upstream's ``hubertsoft``), in plain torch.

The module tree reproduces the released checkpoint's state_dict keys exactly
(``feature_extractor.conv0.weight``, ``positional_embedding.conv.weight_g``,
``encoder.layers.N.self_attn.in_proj_weight``, ``proj.weight``, ...), so
``hubert-soft-0d54a1f4.pt`` (a bare state dict, possibly with a ``module.`` prefix
from DistributedDataParallel) loads strictly.

Network (defaults = the released model): 7 bias-free convolutions (kernel/stride
10/5, 4 x 3/2, 2 x 2/2: hop 320 samples) with a GroupNorm after the first and
GELUs, LayerNorm + Linear 512 -> 768, a weight-normed grouped conv positional
embedding (k=128, 16 groups), LayerNorm, 12 post-norm transformer layers (12 heads,
FFN 3072, GELU), and ``proj`` 768 -> 256 giving the soft units.

Sizes are read from the weights' shapes, which lets tests build tiny models; only
the head count is not stored in the file: it is taken as ``d_model // 64`` (the
released model: 768 / 64 = 12 heads).

Shapes: ``units(wav [B, T]) -> [B, T // 320, 256]`` at 16 kHz.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.features.encoders.checkpoint import read_checkpoint
from mlflow_ddsp.features.encoders.layers import WeightNormConv1d, upgrade_weight_norm_keys
from mlflow_ddsp.state_dict import load_state_dict_checked

__all__ = ["HubertSoftDims", "HubertSoft", "load_hubert_soft"]

# (kernel, stride) of the seven feature-extractor convolutions; their strides
# multiply to the 320-sample hop and are part of the format, not a setting.
_CONV_SPEC = ((10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2))
HOP_SIZE = 320
_RECEPTIVE_FIELD = 400


@dataclass(frozen=True)
class HubertSoftDims:
    """Network sizes; the defaults are the released HuBERT-Soft."""

    conv_channels: int = 512
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    ffn_dim: int = 3072
    n_units: int = 256
    pos_kernel: int = 128
    pos_groups: int = 16
    n_labels: int = 100

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> HubertSoftDims:
        """Infer sizes from a HubertSoft state dict's tensor shapes."""
        layer_ids = {int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
        v = sd["positional_embedding.conv.weight_v"]
        d_model = int(sd["feature_projection.projection.weight"].shape[0])
        return cls(
            conv_channels=int(sd["feature_extractor.conv0.weight"].shape[0]),
            d_model=d_model,
            n_layers=len(layer_ids),
            n_heads=max(1, d_model // 64),
            ffn_dim=int(sd["encoder.layers.0.linear1.weight"].shape[0]) if layer_ids else 4 * d_model,
            n_units=int(sd["proj.weight"].shape[0]),
            pos_kernel=int(v.shape[2]),
            pos_groups=d_model // int(v.shape[1]),
            n_labels=int(sd["label_embedding.weight"].shape[0]) if "label_embedding.weight" in sd else 100,
        )


class _FeatureExtractor(nn.Module):
    """``wav [B, 1, T] -> [B, C, N]`` with N = (T - 400) // 320 + 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        in_ch = 1
        for i, (kernel, stride) in enumerate(_CONV_SPEC):
            setattr(self, f"conv{i}", nn.Conv1d(in_ch, channels, kernel, stride, bias=False))
            in_ch = channels
        self.norm0 = nn.GroupNorm(channels, channels)  # per-channel norm over time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm0(self.conv0(x)))
        for i in range(1, len(_CONV_SPEC)):
            x = F.gelu(getattr(self, f"conv{i}")(x))
        return x


class _FeatureProjection(nn.Module):
    """``[B, N, C] -> [B, N, d_model]``: LayerNorm then Linear."""

    def __init__(self, channels: int, d_model: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.projection = nn.Linear(channels, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.norm(x))


class _PositionalConvEmbedding(nn.Module):
    """``[B, N, D] -> [B, N, D]``: weight-normed grouped conv, trimmed to N frames, GELU."""

    def __init__(self, d_model: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.conv = WeightNormConv1d(d_model, d_model, kernel, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2))
        # padding k // 2 on an even kernel yields N + 1 frames; the last is extra.
        return F.gelu(y[:, :, : x.size(1)]).transpose(1, 2)


class _Encoder(nn.Module):
    """A stack of ``nn.TransformerEncoderLayer`` (post-norm, GELU, batch-first)."""

    def __init__(self, dims: HubertSoftDims) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dims.d_model,
                dims.n_heads,
                dims.ffn_dim,
                dropout=0.0,  # inference only; dropout has no parameters
                activation="gelu",
                batch_first=True,
            )
            for _ in range(dims.n_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class HubertSoft(nn.Module):
    """HuBERT-Soft: 16 kHz waveform -> 50 Hz soft speech units.

    ``masked_spec_embed`` and ``label_embedding`` are only used in training; they are
    kept so the state dict matches the released file key for key.
    """

    def __init__(self, dims: HubertSoftDims | None = None) -> None:
        super().__init__()
        dims = dims or HubertSoftDims()
        self.dims = dims
        self.feature_extractor = _FeatureExtractor(dims.conv_channels)
        self.feature_projection = _FeatureProjection(dims.conv_channels, dims.d_model)
        self.positional_embedding = _PositionalConvEmbedding(dims.d_model, dims.pos_kernel, dims.pos_groups)
        self.norm = nn.LayerNorm(dims.d_model)
        self.encoder = _Encoder(dims)
        self.proj = nn.Linear(dims.d_model, dims.n_units)
        self.masked_spec_embed = nn.Parameter(torch.rand(dims.d_model))
        self.label_embedding = nn.Embedding(dims.n_labels, dims.n_units)

    @property
    def out_channels(self) -> int:
        return self.dims.n_units

    @property
    def hop_size(self) -> int:
        return HOP_SIZE

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Transformer output before ``proj``: ``wav [B, T] -> [B, N, d_model]``."""
        x = self.feature_extractor(wav.unsqueeze(1))
        x = self.feature_projection(x.transpose(1, 2))
        x = x + self.positional_embedding(x)
        return self.encoder(self.norm(x))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Soft units ``wav [B, T] -> [B, T // 320, n_units]``.

        Pads 40 samples each side ((400 - 320) / 2), as bshall's ``units()`` does, so
        frame ``n`` covers samples ``[320 n - 40, 320 n + 360)``.
        """
        pad = (_RECEPTIVE_FIELD - HOP_SIZE) // 2
        return self.proj(self.encode(F.pad(wav, (pad, pad))))


def load_hubert_soft(path: Path, key: str = "data.encoder_ckpt") -> HubertSoft:
    """Build a ``HubertSoft`` sized from the file at ``path`` and load it strictly (eval mode)."""
    sd = read_checkpoint(path, key)
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict) and "proj.weight" not in sd:
        sd = sd["model"]  # tolerate {'model': state_dict} wrappers
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"{key}: {path} is not a HuBERT-Soft state dict (expected a dict of tensors)")
    sd = upgrade_weight_norm_keys({k.removeprefix("module."): v for k, v in sd.items()})
    try:
        model = HubertSoft(HubertSoftDims.from_state_dict(sd))
    except KeyError as exc:
        raise ConfigError(
            f"{key}: {path} is not a HuBERT-Soft checkpoint (no {exc.args[0]!r}); "
            "check data.encoder matches the file"
        ) from exc
    load_state_dict_checked(model, sd, source=f"{key}: {path}", hint="check data.encoder matches the file")
    return model.eval()
