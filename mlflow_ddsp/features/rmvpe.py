"""RMVPE (Wei et al., 2023, "RMVPE: A Robust Model for Vocal Pitch Estimation in
Polyphonic Music"), the network upstream DDSP-SVC calls ``rmvpe``, in plain torch.

The module tree reproduces the state-dict keys of upstream's ``E2E0(4, 1, (2, 2))``
(``encoder/rmvpe/model.py``), so the ``pretrain/rmvpe/model.pt`` upstream users
download (``{'model': state_dict}``; a bare state dict also loads) fits it:
``unet.encoder.bn``, ``unet.encoder.layers.{i}.conv.{j}.conv.{0,1,3,4}`` and
``.shortcut``, ``unet.intermediate.layers.*``, ``unet.tf.layers.*`` (trained but
unused by E2E0's forward; kept so that keys match), ``unet.decoder.layers.{i}.conv1``
/ ``.conv2.{j}``, ``cnn``, ``fc.0.gru`` and ``fc.1``.

Network (defaults = the released model):

- input: log-mel ``[B, 128, N]`` of 16 kHz audio (1024-point Hann STFT magnitude,
  centred with reflect padding, hop 160 = 10 ms, 128 HTK-scale Slaney-normalised
  bands 30-8000 Hz, natural log floored at 1e-5), N padded with zeros to a multiple
  of 32 for the five 2x poolings;
- a U-Net on ``[B, 1, N, 128]``: BatchNorm, 5 encoder stages (16, 32, 64, 128, 256
  channels; each ``n_blocks`` residual blocks of two 3x3 conv-BN-ReLU, 1x1 shortcut
  when channels change, then 2x2 average pooling), 4 intermediate stages at 512
  channels, 5 decoder stages (3x3 transposed conv stride 2 + BN + ReLU, concatenated
  with the matching encoder output, ``n_blocks`` residual blocks);
- a 3x3 conv to 3 channels, flattened to ``3 * 128`` features per frame, a
  bidirectional GRU (256 per direction), Linear 512 -> 360 and a sigmoid: salience
  over 360 pitch bins 20 cents apart (bin ``i`` = ``20 i + 1997.38`` cents above 10 Hz).

Decoding (upstream ``to_local_average_f0``): the salience-weighted mean of the
cents of the 9 bins around the argmax (``argmax - 4 .. argmax + 4``, clipped at the
edges), ``f0 = 10 * 2 ** (cents / 1200)``; a frame whose peak salience is below
``threshold`` (upstream 0.03) is unvoiced (0 Hz).

Sizes (channels, blocks, stages) are read from the weights' shapes, so tests can
build small models. Shapes: ``salience(mel [B, 128, N]) -> [B, N, 360]``;
``f0(wav16k [T]) -> [T // 160 + 1]`` Hz.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.features.encoders.checkpoint import read_checkpoint
from mlflow_ddsp.features.encoders.logmel import mel_filterbank

__all__ = [
    "RMVPE_SAMPLE_RATE",
    "RMVPE_HOP",
    "DEFAULT_RMVPE_CKPT",
    "RmvpeDims",
    "Rmvpe",
    "rmvpe_mel_filters",
    "load_rmvpe",
]

RMVPE_SAMPLE_RATE = 16000
RMVPE_HOP = 160  # 10 ms, as upstream's F0_Extractor builds it
DEFAULT_RMVPE_CKPT = "pretrain/rmvpe/model.pt"  # upstream's fixed path
_N_MELS, _N_FFT, _F_MIN, _F_MAX = 128, 1024, 30.0, 8000.0
_N_BINS = 360
_CENTS_OFFSET = 1997.3794084376191  # cents of bin 0 above 10 Hz
_BN_MOMENTUM = 0.01


def rmvpe_mel_filters() -> np.ndarray:
    """RMVPE's mel filters -> float32 ``[128, 513]``.

    librosa's ``filters.mel(sr=16000, n_fft=1024, n_mels=128, fmin=30, fmax=8000,
    htk=True)``: triangles on the HTK mel scale, each scaled by ``2 / (f_hi - f_lo)``
    (Slaney's equal-area normalisation).
    """
    fb = mel_filterbank(RMVPE_SAMPLE_RATE, _N_FFT, _N_MELS, _F_MIN, _F_MAX).astype(np.float64)
    mel = np.linspace(2595.0 * np.log10(1 + _F_MIN / 700), 2595.0 * np.log10(1 + _F_MAX / 700), _N_MELS + 2)
    hz = 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    return (fb * (2.0 / (hz[2:] - hz[:-2]))[:, None]).astype(np.float32)


@dataclass(frozen=True)
class RmvpeDims:
    """Network sizes; the defaults are upstream's ``E2E0(4, 1, (2, 2))``."""

    n_blocks: int = 4
    n_stages: int = 5
    n_inters: int = 4
    base_channels: int = 16
    gru_hidden: int = 256

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> RmvpeDims:
        """Infer sizes from an RMVPE state dict's key names and tensor shapes."""

        def count(pattern: str) -> int:
            return len({m.group(1) for k in sd if (m := re.match(pattern, k))})

        return cls(
            n_blocks=count(r"unet\.encoder\.layers\.0\.conv\.(\d+)\."),
            n_stages=count(r"unet\.encoder\.layers\.(\d+)\."),
            n_inters=count(r"unet\.intermediate\.layers\.(\d+)\."),
            base_channels=int(sd["unet.encoder.layers.0.conv.0.conv.0.weight"].shape[0]),
            gru_hidden=int(sd["fc.0.gru.weight_hh_l0"].shape[1]),
        )


class _ResBlock(nn.Module):
    """Two 3x3 conv-BN-ReLU plus a residual (1x1 conv when the channels change)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out, momentum=_BN_MOMENTUM),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out, momentum=_BN_MOMENTUM),
            nn.ReLU(),
        )
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + (x if self.shortcut is None else self.shortcut(x))


class _Stage(nn.Module):
    """``n`` residual blocks (key prefix ``conv.{j}``); the first changes the channels."""

    def __init__(self, c_in: int, c_out: int, n: int) -> None:
        super().__init__()
        self.conv = nn.ModuleList([_ResBlock(c_in if j == 0 else c_out, c_out) for j in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv:
            x = block(x)
        return x


class _UpStage(nn.Module):
    """Transposed conv (stride 2) + BN + ReLU, concatenation with the skip, residual blocks."""

    def __init__(self, c_in: int, c_out: int, n: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(c_out, momentum=_BN_MOMENTUM),
            nn.ReLU(),
        )
        self.conv2 = nn.ModuleList([_ResBlock(2 * c_out if j == 0 else c_out, c_out) for j in range(n)])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self.conv1(x), skip), dim=1)
        for block in self.conv2:
            x = block(x)
        return x


class _Encoder(nn.Module):
    def __init__(self, dims: RmvpeDims) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1, momentum=_BN_MOMENTUM)
        widths = [dims.base_channels * 2**i for i in range(dims.n_stages)]
        self.layers = nn.ModuleList(
            [_Stage(1 if i == 0 else widths[i - 1], w, dims.n_blocks) for i, w in enumerate(widths)]
        )


class _Layers(nn.Module):
    """A ``layers`` ModuleList holder (keys ``<name>.layers.{i}...``)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class _UNet(nn.Module):
    def __init__(self, dims: RmvpeDims) -> None:
        super().__init__()
        self.encoder = _Encoder(dims)
        top = dims.base_channels * 2**dims.n_stages
        self.intermediate = _Layers(
            [_Stage(top // 2 if i == 0 else top, top, dims.n_blocks) for i in range(dims.n_inters)]
        )
        # Upstream's E2E0 builds this "timbre filter" and trains it but never calls it.
        self.tf = _Layers([_ResBlock(dims.base_channels * 2**i, dims.base_channels * 2**i) for i in range(dims.n_stages)])
        self.decoder = _Layers([_UpStage(top // 2**i, top // 2 ** (i + 1), dims.n_blocks) for i in range(dims.n_stages)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder.bn(x)
        skips = []
        for stage in self.encoder.layers:
            skip = stage(x)
            skips.append(skip)
            x = F.avg_pool2d(skip, 2)
        for stage in self.intermediate.layers:
            x = stage(x)
        for stage, skip in zip(self.decoder.layers, reversed(skips)):
            x = stage(x, skip)
        return x


class _BiGRU(nn.Module):
    def __init__(self, n_in: int, hidden: int) -> None:
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, num_layers=1, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


class Rmvpe(nn.Module):
    """RMVPE salience network plus its mel front end and decoder (see the module doc)."""

    def __init__(self, dims: RmvpeDims = RmvpeDims()) -> None:
        super().__init__()
        self.dims = dims
        self.unet = _UNet(dims)
        self.cnn = nn.Conv2d(dims.base_channels, 3, 3, padding=1)
        self.fc = nn.Sequential(
            _BiGRU(3 * _N_MELS, dims.gru_hidden),
            nn.Linear(2 * dims.gru_hidden, _N_BINS),
            nn.Dropout(0.25),
            nn.Sigmoid(),
        )
        self.register_buffer("mel_filters", torch.from_numpy(rmvpe_mel_filters()), persistent=False)
        self.register_buffer("window", torch.hann_window(_N_FFT), persistent=False)
        cents = 20.0 * torch.arange(_N_BINS, dtype=torch.float64) + _CENTS_OFFSET
        self.register_buffer("bin_cents", cents.float(), persistent=False)

    def mel(self, wav: torch.Tensor) -> torch.Tensor:
        """16 kHz ``wav [B, T]`` -> log-mel ``[B, 128, T // 160 + 1]``."""
        spec = torch.stft(wav, _N_FFT, RMVPE_HOP, window=self.window, center=True, return_complex=True)
        mel = torch.matmul(self.mel_filters, spec.abs())
        return torch.log(torch.clamp(mel, min=1e-5))

    def salience(self, mel: torch.Tensor) -> torch.Tensor:
        """``mel [B, 128, N] -> [B, N, 360]`` in [0, 1]."""
        n = mel.shape[-1]
        stride = 2**self.dims.n_stages
        mel = F.pad(mel, (0, (-n) % stride))
        x = self.unet(mel.transpose(-1, -2).unsqueeze(1))  # [B, C, N', 128]
        x = self.cnn(x).transpose(1, 2).flatten(-2)  # [B, N', 3 * 128]
        return self.fc(x)[:, :n]

    def decode(self, salience: torch.Tensor, threshold: float = 0.03) -> torch.Tensor:
        """Local weighted mean around the argmax -> f0 ``[B, N]`` Hz, 0 below ``threshold``."""
        centre = salience.argmax(dim=-1, keepdim=True)
        idx = torch.arange(_N_BINS, device=salience.device)
        near = (idx >= centre - 4) & (idx <= centre + 4)
        weights = salience * near
        total = weights.sum(-1)
        cents = (weights * self.bin_cents).sum(-1) / torch.where(total == 0, 1.0, total)
        f0 = 10.0 * 2.0 ** (cents / 1200.0)
        return torch.where(salience.amax(-1) < threshold, 0.0, f0)

    @torch.no_grad()
    def f0(self, wav16k: np.ndarray, threshold: float = 0.03) -> np.ndarray:
        """f0 of 16 kHz audio ``[T]`` -> float32 ``[T // 160 + 1]`` Hz (0 = unvoiced), 10 ms frames."""
        device = self.window.device
        wav = torch.as_tensor(np.asarray(wav16k, dtype=np.float32), device=device)[None]
        return self.decode(self.salience(self.mel(wav)), threshold)[0].cpu().numpy().astype(np.float32)


def _state_dict_of(obj: object) -> Mapping[str, torch.Tensor] | None:
    """Upstream's ``{'model': state_dict}`` or a bare state dict (``module.`` prefixes dropped)."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        return None
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_rmvpe(ckpt: str | Path | None, key: str = "data.f0_ckpt", device: str | torch.device = "cpu") -> Rmvpe:
    """Build RMVPE from a local weights file (upstream's ``pretrain/rmvpe/model.pt`` format).

    Raises:
        ConfigError: the file is missing, not a torch checkpoint, or its weights do
            not fit the network (missing keys or wrong shapes), named with ``key``.
    """
    path = Path(DEFAULT_RMVPE_CKPT if ckpt is None or str(ckpt).strip() == "" else ckpt).expanduser()
    hint = f"set {key} to upstream's RMVPE model.pt (default {DEFAULT_RMVPE_CKPT}) or use another data.f0_extractor"
    if not path.is_file():
        raise ConfigError(f"{key}: {str(path)!r} does not exist; f0 extractor 'rmvpe' needs its weights: {hint}")
    sd = _state_dict_of(read_checkpoint(path, key))
    if sd is None or "unet.encoder.layers.0.conv.0.conv.0.weight" not in sd or "fc.0.gru.weight_hh_l0" not in sd:
        raise ConfigError(f"{key}: {path} is not an RMVPE checkpoint (no unet/fc weights); {hint}")
    try:
        model = Rmvpe(RmvpeDims.from_state_dict(sd))
        missing, _unexpected = model.load_state_dict(sd, strict=False)
    except (RuntimeError, KeyError, ValueError) as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
        raise ConfigError(f"{key}: the weights in {path} do not fit RMVPE ({detail[:300]})") from exc
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing:
        raise ConfigError(
            f"{key}: the weights in {path} do not fit RMVPE ({len(missing)} missing, e.g. {missing[0]!r})"
        )
    return model.eval().to(device)
