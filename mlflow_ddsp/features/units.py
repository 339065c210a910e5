"""Content units: a pluggable registry of encoders keyed by upstream's ``data.encoder``.

``load_units_encoder(name, ckpt)`` returns a ``UnitsEncoder`` whose ``encode`` does what
upstream's ``Units_Encoder.encode`` does: resample the model-rate audio to
``encoder_sample_rate`` (16 kHz), pad it to at least 400 samples, run the network
(hop ``encoder_hop_size`` = 320, 50 frames/s), and pick, for each model frame ``n``,
encoder frame ``round(n * (hop / sr) / (encoder_hop / encoder_sr))`` (clamped to the
last one): nearest-index alignment onto the ``T // hop + 1`` model frames.

Encoders (checkpoints are local files named by ``data.encoder_ckpt``); each line
gives the network and file format, what is read out, and the channels ``C``:

- ``hubertsoft``: bshall HuBERT-Soft (bare state dict), all 12 layers + ``proj``, 256
- ``contentvec768l12`` / ``hubertbase768l12``: fairseq HuBERT, layer 12 output, 768
- ``contentvec768`` / ``hubertbase768``: fairseq HuBERT, layer 9 output, 768
- ``contentvec`` / ``hubertbase``: fairseq HuBERT, layer 9 + ``final_proj``, 256
- ``hubertlarge1024l24``: fairseq HuBERT large, layer 24 output, 1024
- ``logmel``: built in, no weights; 128-band log-mel at the encoder frame rate, 128

(The contentvec* and hubertbase* entries differ only in which file upstream expects;
both load any fairseq HuBERT-architecture checkpoint.) ``logmel`` is for demos and
tests: it resynthesises the input voice and cannot convert between voices.
``register_encoder`` adds more; a backbone maps ``wav [B, T]`` at the encoder rate
to ``[B, N, C]`` and exposes ``out_channels`` and ``hop_size``.

Precision (``load_units_encoder(..., precision=)``, see
:mod:`mlflow_ddsp.features.encoders.precision`): ``fp32`` (the default here, and
what preprocessing uses), ``int8`` (CPU dynamic int8 of the fairseq HuBERT family;
units within a mean per-frame cosine of 0.99 of fp32) or ``auto`` (``int8`` on the
CPU where an encoder has that form, ``fp32`` otherwise and on every GPU).

Shapes: ``encode(audio [T] or [1, T], sample_rate, hop_size) -> [1, T // hop + 1, C]``
float32 on the encoder's device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlflow_ddsp.audio import resample
from mlflow_ddsp.device import resolve_device
from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.features.encoders.checkpoint import require_checkpoint_path
from mlflow_ddsp.features.encoders.fairseq_hubert import FairseqHubert, load_fairseq_hubert
from mlflow_ddsp.features.encoders.hubert_soft import load_hubert_soft
from mlflow_ddsp.features.encoders.logmel import LOGMEL_CHANNELS, LogMel
from mlflow_ddsp.features.encoders.precision import quantize_fairseq_hubert_int8, resolve_encoder_precision
from mlflow_ddsp.features.frames import frame_count

__all__ = [
    "EncoderSpec",
    "UnitsEncoder",
    "align_units",
    "encoder_names",
    "get_encoder_spec",
    "load_units_encoder",
    "register_encoder",
]

CKPT_KEY = "data.encoder_ckpt"
# Upstream pads shorter inputs to one HuBERT receptive field (25 ms at 16 kHz).
MIN_ENCODER_SAMPLES = 400

AudioLike = np.ndarray | torch.Tensor
# build(checkpoint path or None, encoder_sample_rate, encoder_hop_size) -> backbone
Builder = Callable[[Path | None, int, int], nn.Module]


@dataclass(frozen=True)
class EncoderSpec:
    """One registry entry.

    Attributes:
        name: the ``data.encoder`` value.
        build: ``(ckpt_path | None, encoder_sample_rate, encoder_hop_size) -> nn.Module``.
        needs_checkpoint: whether ``data.encoder_ckpt`` must name a file.
        channels: upstream's channel count (``data.encoder_out_channels``); the
            loaded backbone's ``out_channels`` is what counts.
        sample_rate: the rate the network was trained at, or None when any works.
        summary: one line for help texts.
        int8: ``backbone -> backbone`` giving its CPU int8 form, or None when the
            encoder has none (then ``auto`` precision means fp32 for it).
    """

    name: str
    build: Builder
    needs_checkpoint: bool
    channels: int
    sample_rate: int | None
    summary: str
    int8: Callable[[nn.Module], nn.Module] | None = None


class _FairseqUnits(nn.Module):
    """A ``FairseqHubert`` read at one transformer layer, optionally through ``final_proj``."""

    def __init__(self, model: FairseqHubert, output_layer: int, use_final_proj: bool) -> None:
        super().__init__()
        self.model = model
        self.output_layer = output_layer
        self.use_final_proj = use_final_proj

    @property
    def out_channels(self) -> int:
        if self.use_final_proj:
            return self.model.final_proj.out_features
        return self.model.cfg.encoder_embed_dim

    @property
    def hop_size(self) -> int:
        return self.model.hop_size

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = self.model.extract_features(wav, self.output_layer)
        return self.model.final_proj(x) if self.use_final_proj else x


def _build_fairseq(
    name: str, output_layer: int, use_final_proj: bool, ckpt: Path | None, _sr: int, _hop: int
) -> nn.Module:
    model = load_fairseq_hubert(ckpt, CKPT_KEY)
    n_layers = model.cfg.encoder_layers
    if n_layers < output_layer:
        # fairseq would silently return the last layer instead.
        raise ConfigError(
            f"data.encoder: {name!r} reads transformer layer {output_layer}, but {ckpt} has only "
            f"{n_layers}; pick an encoder name matching the file"
        )
    if use_final_proj and model.final_proj is None:
        raise ConfigError(
            f"data.encoder: {name!r} needs final_proj, which {ckpt} lacks; "
            f"use {name}768 (layer {output_layer} without projection) or another file"
        )
    return _FairseqUnits(model, output_layer, use_final_proj)


def _fairseq_int8(backbone: nn.Module) -> nn.Module:
    # In place: the fp32 backbone was built for this encoder alone (a copy of a 95M-parameter model costs seconds).
    quantize_fairseq_hubert_int8(backbone.model, inplace=True)
    return backbone


def _build_hubert_soft(ckpt: Path | None, _sr: int, _hop: int) -> nn.Module:
    return load_hubert_soft(ckpt, CKPT_KEY)


def _build_logmel(_ckpt: Path | None, sample_rate: int, hop_size: int) -> nn.Module:
    return LogMel(sample_rate, hop_size)


def _fairseq_spec(name: str, layer: int, proj: bool, channels: int, what: str) -> EncoderSpec:
    read = f"layer {layer}" + (" + final_proj" if proj else "")
    return EncoderSpec(
        name=name,
        build=partial(_build_fairseq, name, layer, proj),
        needs_checkpoint=True,
        channels=channels,
        sample_rate=16000,
        summary=f"{what} (fairseq checkpoint), {read}, {channels} channels",
        int8=_fairseq_int8,
    )


_REGISTRY: dict[str, EncoderSpec] = {}

# Upstream names this package cannot serve, with the reason.
_UNAVAILABLE = {
    "cnhubertsoftfish": "needs the transformers library and the chinese-hubert-base weights folder",
}


def register_encoder(spec: EncoderSpec, *, replace: bool = False) -> None:
    """Add an encoder under ``spec.name`` (``replace=True`` to override an existing one)."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"encoder {spec.name!r} is already registered; pass replace=True")
    _REGISTRY[spec.name] = spec


for _spec in (
    EncoderSpec(
        name="hubertsoft",
        build=_build_hubert_soft,
        needs_checkpoint=True,
        channels=256,
        sample_rate=16000,
        summary="bshall HuBERT-Soft (state-dict checkpoint), soft units, 256 channels",
    ),
    _fairseq_spec("contentvec768l12", 12, False, 768, "ContentVec"),
    _fairseq_spec("contentvec768", 9, False, 768, "ContentVec"),
    _fairseq_spec("contentvec", 9, True, 256, "ContentVec"),
    _fairseq_spec("hubertbase768l12", 12, False, 768, "HuBERT base"),
    _fairseq_spec("hubertbase768", 9, False, 768, "HuBERT base"),
    _fairseq_spec("hubertbase", 9, True, 256, "HuBERT base"),
    _fairseq_spec("hubertlarge1024l24", 24, False, 1024, "HuBERT large"),
    EncoderSpec(
        name="logmel",
        build=_build_logmel,
        needs_checkpoint=False,
        channels=LOGMEL_CHANNELS,
        sample_rate=None,
        summary="built-in log-mel, no weights; resynthesis demos/tests only, cannot convert voices",
    ),
):
    register_encoder(_spec)
del _spec


def encoder_names() -> tuple[str, ...]:
    """Registered ``data.encoder`` values, in registration order."""
    return tuple(_REGISTRY)


def get_encoder_spec(name: str) -> EncoderSpec:
    """The registry entry for ``name``; ConfigError naming the allowed values otherwise."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _UNAVAILABLE:
        raise ConfigError(
            f"data.encoder: {name!r} is not available in mlflow-ddsp ({_UNAVAILABLE[name]}); "
            f"allowed: {', '.join(_REGISTRY)}"
        )
    raise ConfigError(f"data.encoder: unknown encoder {name!r}; allowed: {', '.join(_REGISTRY)}")


def align_units(units: torch.Tensor, n_frames: int, ratio: float) -> torch.Tensor:
    """Nearest-index alignment: ``units [B, N, C] -> [B, n_frames, C]``.

    ``ratio`` is (model frame period) / (encoder frame period); model frame ``n``
    takes encoder frame ``round(ratio * n)`` (half to even, as ``torch.round``),
    clamped to ``N - 1``. Computed in float32 like upstream, so that even on very
    long files the chosen indices are the same as upstream's.
    """
    index = torch.round(ratio * torch.arange(n_frames, device=units.device, dtype=torch.float32))
    index = index.long().clamp(max=units.size(1) - 1)
    return units.index_select(1, index)


class UnitsEncoder:
    """A loaded content encoder plus resampling and frame alignment (see module doc)."""

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        *,
        encoder_sample_rate: int = 16000,
        encoder_hop_size: int = 320,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ) -> None:
        self.name = name
        self.precision = precision
        self.encoder_sample_rate = int(encoder_sample_rate)
        self.encoder_hop_size = int(encoder_hop_size)
        self.device = resolve_device(device)
        self.backbone = backbone.to(self.device).eval()

    @property
    def out_channels(self) -> int:
        """Channels ``C`` of the units (``data.encoder_out_channels`` must equal this)."""
        return int(self.backbone.out_channels)

    def __repr__(self) -> str:
        return (
            f"UnitsEncoder({self.name!r}, out_channels={self.out_channels}, "
            f"encoder_sample_rate={self.encoder_sample_rate}, encoder_hop_size={self.encoder_hop_size}, "
            f"precision={self.precision!r})"
        )

    @torch.no_grad()  # not inference_mode: callers may feed the units to a model in training
    def encode(self, audio: AudioLike, sample_rate: int, hop_size: int) -> torch.Tensor:
        """Units for mono ``audio`` (``[T]`` or ``[1, T]`` at ``sample_rate``).

        Returns float32 ``[1, T // hop_size + 1, C]`` on the encoder's device.
        """
        if isinstance(audio, torch.Tensor):
            audio = audio.detach().to("cpu", torch.float32).numpy()
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 2 and audio.shape[0] == 1:
            audio = audio[0]
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError(f"encode expects non-empty mono audio [T] or [1, T], got shape {audio.shape}")
        n_frames = frame_count(audio.size, hop_size)
        wav = resample(audio, sample_rate, self.encoder_sample_rate)
        if wav.size < MIN_ENCODER_SAMPLES:
            # Upstream meant to do this too (its code pads the un-resampled audio).
            wav = np.pad(wav, (0, MIN_ENCODER_SAMPLES - wav.size))
        units = self.backbone(torch.from_numpy(wav).to(self.device).unsqueeze(0)).float()
        ratio = (hop_size / sample_rate) / (self.encoder_hop_size / self.encoder_sample_rate)
        return align_units(units, n_frames, ratio)


def load_units_encoder(
    name: str,
    ckpt: str | Path | None = None,
    *,
    encoder_sample_rate: int = 16000,
    encoder_hop_size: int = 320,
    out_channels: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    precision_key: str = "encoder_precision",
) -> UnitsEncoder:
    """Build the encoder registered as ``name`` (``data.encoder``) from ``ckpt`` (``data.encoder_ckpt``).

    ``out_channels`` (``data.encoder_out_channels``), when given, must equal the
    loaded encoder's channel count. ``precision`` is ``fp32``, ``int8`` or ``auto``
    (see the module doc; ``UnitsEncoder.precision`` tells which one was used);
    ``precision_key`` names the setting in errors (``--encoder-precision``,
    ``MLFLOW_DDSP_ENCODER_PRECISION``...).

    Raises:
        ConfigError: unknown/unavailable name, checkpoint unset or missing (the
            message says to set ``data.encoder_ckpt`` or use ``logmel``), a file
            that does not match the encoder, or rate/hop/channel mismatches; an
            unknown precision, or ``int8`` off the CPU or for an encoder without it.
    """
    spec = get_encoder_spec(name)
    precision = resolve_encoder_precision(
        precision, device, has_int8=spec.int8 is not None, encoder=name, key=precision_key
    )
    if spec.sample_rate is not None and int(encoder_sample_rate) != spec.sample_rate:
        raise ConfigError(
            f"data.encoder_sample_rate: {encoder_sample_rate} but encoder {name!r} was trained "
            f"at {spec.sample_rate} Hz; set it to {spec.sample_rate}"
        )
    path = require_checkpoint_path(ckpt, name, CKPT_KEY) if spec.needs_checkpoint else None
    backbone = spec.build(path, int(encoder_sample_rate), int(encoder_hop_size))
    hop = getattr(backbone, "hop_size", encoder_hop_size)
    if int(hop) != int(encoder_hop_size):
        raise ConfigError(
            f"data.encoder_hop_size: {encoder_hop_size} but encoder {name!r} has a fixed hop of "
            f"{hop} samples; set it to {hop}"
        )
    if precision == "int8":
        backbone = spec.int8(backbone)
    encoder = UnitsEncoder(
        name,
        backbone,
        precision=precision,
        encoder_sample_rate=encoder_sample_rate,
        encoder_hop_size=encoder_hop_size,
        device=device,
    )
    if out_channels is not None and int(out_channels) != encoder.out_channels:
        raise ConfigError(
            f"data.encoder_out_channels: {out_channels} but encoder {name!r} gives "
            f"{encoder.out_channels} channels; set it to {encoder.out_channels}"
        )
    return encoder
