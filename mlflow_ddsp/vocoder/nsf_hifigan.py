"""NSF-HiFiGAN: the neural vocoder that turns DDSP-SVC 5.0/6.0/6.1 mels and f0 into audio.

Port of upstream DDSP-SVC ``nsf_hifigan/models.py`` (``Generator``, ``SourceModuleHnNSF``,
``SineGen``, ``ResBlock1``/``ResBlock2``, ``load_model``/``load_config``) and of the
``Vocoder`` / ``NsfHifiGAN`` / ``NsfHifiGANLog10`` wrappers of ``reflow/vocoder.py``
(branch master). The weights are openvpi's NSF-HiFiGAN release: a torch file
``{'generator': state_dict}`` (upstream's ``pretrain/nsf_hifigan/model``) with its
``config.json`` beside it.

Generator, for mel ``[B, M, T]`` and f0 ``[B, T]`` (Hz, 0 = unvoiced), with
``upp = prod(upsample_rates)`` (= hop_size) samples per frame:

- Harmonic source (``m_source``): 9 sines (f0 and 8 overtones) whose phase is the running
  sum of ``f0 / sr`` per sample (accumulated per frame, wrapped to [-0.5, 0.5)); a random
  initial phase per overtone from ``torch.rand(1, 1, 9)`` (the fundamental's set to 0),
  amplitude 0.1; Gaussian noise from ``torch.randn`` of std 0.003 where voiced and
  0.1 / 3 where unvoiced (voiced sines are kept, unvoiced ones replaced by the noise);
  then ``tanh(Linear(9 -> 1))`` -> ``[B, 1, T * upp]``.
- ``conv_pre`` (k7), then per upsampling stage ``i``: leaky ReLU (0.1), transposed conv
  (stride ``u_i``, kernel ``k_i``, padding ``(k_i - u_i) // 2``, channels halve), plus the
  source brought to this rate by ``noise_convs[i]`` (stride ``prod(u_{i+1:})``, kernel twice
  that, or a 1x1 conv at the last stage); the mean of the ``len(resblock_kernel_sizes)``
  residual blocks. Finally leaky ReLU with torch's default slope 0.01, ``conv_post`` (k7,
  one channel) and tanh.

The two random draws come from the global RNG (or an optional ``torch.Generator``) in
upstream's order, so the same seed gives upstream's audio.

The weight-normalised convolutions keep the legacy ``weight_g``/``weight_v`` parameters,
so the state_dict keys are exactly those of upstream's ``generator``. Upstream folds them
into plain weights once after loading (``remove_weight_norm``); here the same fused op
(``torch._weight_norm``, dim 0) computes the folded kernel, cached while autograd is off
and the parameters are unchanged, so the numbers are the same.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlflow_ddsp.audio import resample
from mlflow_ddsp.errors import ConfigError, StateDictMismatchError, one_line
from mlflow_ddsp.features.encoders.layers import upgrade_weight_norm_keys
from mlflow_ddsp.state_dict import load_state_dict_checked
from mlflow_ddsp.vocoder.mel import MelExtractor

__all__ = [
    "VOCODER_TYPES",
    "LOG10_SCALE",
    "VocoderConfig",
    "default_vocoder_config",
    "write_vocoder_config",
    "SineGenerator",
    "SourceModuleHnNSF",
    "ResBlock1",
    "ResBlock2",
    "NsfHifiGanGenerator",
    "Vocoder",
    "load_vocoder",
]

PathLike = str | os.PathLike[str]

#: ``vocoder.type`` values of upstream's configs
VOCODER_TYPES = ("nsf-hifigan", "nsf-hifigan-log10")
#: log10(e): the ``nsf-hifigan-log10`` vocoder is fed ``LOG10_SCALE * mel`` (upstream ``NsfHifiGANLog10``)
LOG10_SCALE = 0.434294
#: leaky ReLU slope inside the generator (upstream ``LRELU_SLOPE``)
LRELU_SLOPE = 0.1
#: overtones above f0 in the harmonic source (upstream ``harmonic_num=8``)
HARMONIC_NUM = 8

WEIGHTS_HINT = (
    "the file is openvpi's NSF-HiFiGAN release (upstream's pretrain/nsf_hifigan/model, with its config.json beside it)"
)


# --------------------------------------------------------------------------- config


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class VocoderConfig:
    """The NSF-HiFiGAN ``config.json`` keys this package reads (upstream's names).

    Mel analysis: ``sampling_rate`` (Hz), ``num_mels``, ``n_fft``, ``win_size``, ``hop_size``
    (samples), ``fmin``/``fmax`` (Hz; ``fmax`` None = Nyquist). Generator:
    ``upsample_rates``, ``upsample_kernel_sizes``, ``upsample_initial_channel``,
    ``resblock`` ("1" or "2"), ``resblock_kernel_sizes``, ``resblock_dilation_sizes``.
    Other keys of a release's file (training settings) are ignored.

    Raises:
        ConfigError: a value has the wrong type or range, list lengths disagree, or
            ``hop_size`` is not ``prod(upsample_rates)`` (the audio would not line up with
            the frames). The message names the key.
    """

    sampling_rate: int
    num_mels: int
    n_fft: int
    win_size: int
    hop_size: int
    fmin: float
    fmax: float | None
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock: str
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    source: str = field(default="VocoderConfig", compare=False, repr=False)

    def __post_init__(self) -> None:
        src = self.source
        for key in ("sampling_rate", "num_mels", "n_fft", "win_size", "hop_size", "upsample_initial_channel"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{src}: invalid value for {key}={value!r}: must be an integer >= 1")
        if self.win_size > self.n_fft:
            raise ConfigError(f"{src}: invalid value for win_size={self.win_size}: must be <= n_fft={self.n_fft}")
        if not _is_number(self.fmin) or self.fmin < 0:
            raise ConfigError(f"{src}: invalid value for fmin={self.fmin!r}: must be a number >= 0 (Hz)")
        if self.fmax is not None and (not _is_number(self.fmax) or not self.fmin < self.fmax):
            raise ConfigError(f"{src}: invalid value for fmax={self.fmax!r}: must be a number > fmin={self.fmin} (Hz)")
        object.__setattr__(self, "upsample_rates", self._int_tuple("upsample_rates", self.upsample_rates))
        object.__setattr__(
            self, "upsample_kernel_sizes", self._int_tuple("upsample_kernel_sizes", self.upsample_kernel_sizes)
        )
        object.__setattr__(
            self, "resblock_kernel_sizes", self._int_tuple("resblock_kernel_sizes", self.resblock_kernel_sizes)
        )
        if len(self.upsample_kernel_sizes) != len(self.upsample_rates):
            raise ConfigError(
                f"{src}: upsample_kernel_sizes has {len(self.upsample_kernel_sizes)} entries, "
                f"upsample_rates {len(self.upsample_rates)}: give one kernel size per rate"
            )
        if self.resblock not in ("1", "2"):
            raise ConfigError(f'{src}: invalid value for resblock={self.resblock!r}: must be "1" or "2" (a string)')
        dilations = self.resblock_dilation_sizes
        if isinstance(dilations, (str, bytes)) or not isinstance(dilations, Sequence):
            raise ConfigError(
                f"{src}: invalid value for resblock_dilation_sizes={dilations!r}: must be a list of lists"
            )
        needed = 3 if self.resblock == "1" else 2
        dilations = tuple(self._int_tuple("resblock_dilation_sizes", d, minimum_length=needed) for d in dilations)
        object.__setattr__(self, "resblock_dilation_sizes", dilations)
        if len(dilations) != len(self.resblock_kernel_sizes):
            raise ConfigError(
                f"{src}: resblock_dilation_sizes has {len(dilations)} entries, resblock_kernel_sizes "
                f"{len(self.resblock_kernel_sizes)}: give one dilation list per kernel size"
            )
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            raise ConfigError(
                f"{src}: invalid value for upsample_initial_channel={self.upsample_initial_channel}: "
                f"must be divisible by 2**{len(self.upsample_rates)} (channels halve at each upsampling)"
            )
        if self.upsample_factor != self.hop_size:
            raise ConfigError(
                f"{src}: hop_size={self.hop_size} is not the product of upsample_rates "
                f"{list(self.upsample_rates)} = {self.upsample_factor}"
            )

    def _int_tuple(self, key: str, value: Any, minimum_length: int = 1) -> tuple[int, ...]:
        if (
            isinstance(value, (str, bytes))
            or not isinstance(value, Sequence)
            or len(value) < minimum_length
            or not all(_is_int(v) and v >= 1 for v in value)
        ):
            raise ConfigError(
                f"{self.source}: invalid value for {key}={value!r}: "
                f"must be a list of at least {minimum_length} integers >= 1"
            )
        return tuple(value)

    @property
    def upsample_factor(self) -> int:
        """Audio samples per mel frame the generator produces: ``prod(upsample_rates)``."""
        return int(np.prod(self.upsample_rates))

    def to_dict(self) -> dict[str, Any]:
        """The config as upstream's ``config.json`` spells it (lists, not tuples)."""
        data = asdict(self)
        data.pop("source")
        for key in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
            data[key] = list(data[key])
        data["resblock_dilation_sizes"] = [list(d) for d in data["resblock_dilation_sizes"]]
        return data

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The ``config.json`` keys read (all required)."""
        return tuple(f for f in cls.__dataclass_fields__ if f != "source")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "vocoder config") -> VocoderConfig:
        """Build from a parsed ``config.json`` (extra keys ignored).

        Raises:
            ConfigError: ``data`` is not a mapping, a key is missing or a value is invalid;
                the message starts with ``source`` and names the key.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a JSON object of NSF-HiFiGAN settings, got {type(data).__name__}")
        missing = [key for key in cls.field_names() if key not in data]
        if missing:
            more = f" (and {missing[1:]})" if missing[1:] else ""
            raise ConfigError(f"{source}: missing key {missing[0]!r}{more}")
        return cls(**{key: data[key] for key in cls.field_names()}, source=source)

    @classmethod
    def from_json(cls, path: PathLike) -> VocoderConfig:
        """Read an NSF-HiFiGAN ``config.json``.

        Raises:
            ConfigError: the file is missing, unreadable, not JSON, or a key is missing
                or invalid (one line naming the file and the key).
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"{path}: vocoder config.json not found: it must sit beside the NSF-HiFiGAN weights file"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read the vocoder config.json ({one_line(exc)})") from exc
        return cls.from_dict(data, source=str(path))


def default_vocoder_config() -> VocoderConfig:
    """The configuration of openvpi's 44.1 kHz NSF-HiFiGAN (upstream's recommended vocoder).

    44100 Hz, hop 512, 128 mels, n_fft = win 2048, 40-16000 Hz; upsample rates
    [8, 8, 2, 2, 2] with kernels [16, 16, 4, 4, 4], 512 initial channels, resblock "1"
    with kernels [3, 7, 11] and dilations [1, 3, 5] each.
    """
    return VocoderConfig(
        sampling_rate=44100,
        num_mels=128,
        n_fft=2048,
        win_size=2048,
        hop_size=512,
        fmin=40,
        fmax=16000,
        upsample_rates=(8, 8, 2, 2, 2),
        upsample_kernel_sizes=(16, 16, 4, 4, 4),
        upsample_initial_channel=512,
        resblock="1",
        resblock_kernel_sizes=(3, 7, 11),
        resblock_dilation_sizes=((1, 3, 5), (1, 3, 5), (1, 3, 5)),
        source="default_vocoder_config()",
    )


def write_vocoder_config(folder: PathLike, config: VocoderConfig) -> Path:
    """Write ``config`` as ``folder/config.json`` (upstream's layout); returns the file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- layers


class _WeightNormed(nn.Module):
    """Holds ``weight_g``/``weight_v``/``bias`` as legacy ``torch.nn.utils.weight_norm`` (dim 0) did."""

    def __init__(self, shape: tuple[int, ...], bias_size: int, init_std: float | None) -> None:
        super().__init__()
        v = torch.empty(shape)
        if init_std is None:  # torch's default conv initialisation
            nn.init.kaiming_uniform_(v, a=math.sqrt(5))
        else:
            nn.init.normal_(v, 0.0, init_std)
        # registered in the order legacy weight_norm leaves them (bias, weight_g, weight_v)
        self.bias = nn.Parameter(torch.zeros(bias_size))
        # g = ||v|| over all but dim 0, so the initial kernel equals v
        self.weight_g = nn.Parameter(torch.norm_except_dim(v, 2, 0))
        self.weight_v = nn.Parameter(v)
        self._cached: dict[bool, tuple[tuple, Tensor]] = {}

    def weight(self) -> Tensor:
        """The folded kernel ``g * v / ||v||`` (what upstream's ``remove_weight_norm`` stores)."""
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def _kernel(self, rows: bool) -> Tensor:
        weight = self.weight()
        # [*, *, k] -> [*, *, 1, k] channels-last: the 2-D kernel for a [B, C, 1, N] channels-last signal
        return weight.unsqueeze(2).contiguous(memory_format=torch.channels_last) if rows else weight

    def folded_weight(self, rows: bool = False) -> Tensor:
        """:meth:`weight` (``rows``: as a ``[*, *, 1, k]`` channels-last 2-D kernel), cached while
        autograd is off and the parameters are unchanged."""
        g, v = self.weight_g, self.weight_v
        if torch.is_grad_enabled() or g.is_inference() or v.is_inference():  # inference tensors: no version counter
            return self._kernel(rows)
        key = (id(g), id(v), g._version, v._version, g.data_ptr(), v.data_ptr(), v.dtype, v.device)
        cached = self._cached.get(rows)
        if cached is None or cached[0] != key:
            cached = self._cached[rows] = (key, self._kernel(rows))
        return cached[1]


class WeightNormConv1d(_WeightNormed):
    """Weight-normalised ``Conv1d`` (stride 1): ``[B, C_in, N] -> [B, C_out, N + 2p - d(k-1)]``.

    Also takes the signal as ``[B, C_in, 1, N]`` (channels-last, as the generator runs it) and
    then returns ``[B, C_out, 1, N']`` channels-last: the same convolution as a ``(1, k)`` conv2d.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, padding: int = 0,
        init_std: float | None = None,
    ) -> None:  # fmt: skip
        super().__init__((out_channels, in_channels, kernel_size), out_channels, init_std)
        self.dilation = dilation
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return F.conv2d(x, self.folded_weight(rows=True), self.bias, padding=(0, self.padding),
                            dilation=(1, self.dilation))  # fmt: skip
        return F.conv1d(x, self.folded_weight(), self.bias, padding=self.padding, dilation=self.dilation)


class WeightNormConvTranspose1d(_WeightNormed):
    """Weight-normalised ``ConvTranspose1d`` (weight ``[C_in, C_out, k]``, norm over dims 1, 2).

    ``[B, C_in, N] -> [B, C_out, (N - 1) * stride - 2 * padding + k]``; a ``[B, C_in, 1, N]``
    channels-last input gives ``[B, C_out, 1, N']`` channels-last (see :class:`WeightNormConv1d`).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
        init_std: float | None = None,
    ) -> None:  # fmt: skip
        super().__init__((in_channels, out_channels, kernel_size), out_channels, init_std)
        self.stride = stride
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return F.conv_transpose2d(x, self.folded_weight(rows=True), self.bias, stride=(1, self.stride),
                                      padding=(0, self.padding))  # fmt: skip
        return F.conv_transpose1d(x, self.folded_weight(), self.bias, stride=self.stride, padding=self.padding)


def _same_padding(kernel_size: int, dilation: int) -> int:
    """Padding that keeps the length of a stride-1 dilated conv (upstream ``get_padding``)."""
    return int((kernel_size * dilation - dilation) / 2)


class ResBlock1(nn.Module):
    """HiFiGAN residual block "1": per dilation ``d``, ``x += conv_k1(lrelu(conv_kd(lrelu(x))))``.

    ``[B, C, N] -> [B, C, N]`` (or channels-last ``[B, C, 1, N]`` -> the same); keys ``convs1.{j}``
    (dilated) and ``convs2.{j}`` (dilation 1).
    """

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        dilations = tuple(dilations)[:3]
        self.convs1 = nn.ModuleList(
            WeightNormConv1d(channels, channels, kernel_size, d, _same_padding(kernel_size, d), init_std=0.01)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            WeightNormConv1d(channels, channels, kernel_size, 1, _same_padding(kernel_size, 1), init_std=0.01)
            for _ in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        activate = F.leaky_relu if torch.is_grad_enabled() else F.leaky_relu_  # in place: a fresh conv output
        for dilated, plain in zip(self.convs1, self.convs2):
            x = plain(activate(dilated(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE)).add_(x)
        return x


class ResBlock2(nn.Module):
    """HiFiGAN residual block "2": per dilation ``d`` (first two), ``x += conv_kd(lrelu(x))``.

    ``[B, C, N] -> [B, C, N]`` (or channels-last ``[B, C, 1, N]`` -> the same); keys ``convs.{j}``.
    """

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            WeightNormConv1d(channels, channels, kernel_size, d, _same_padding(kernel_size, d), init_std=0.01)
            for d in tuple(dilations)[:2]
        )

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(F.leaky_relu(x, LRELU_SLOPE)).add_(x)
        return x


# --------------------------------------------------------------------------- source


class SineGenerator(nn.Module):
    """Harmonic sines plus noise from frame-rate f0 (upstream ``SineGen``, master).

    Args:
        sampling_rate: audio rate in Hz.
        harmonic_num: overtones above f0 (``harmonic_num + 1`` sines).
        sine_amp: sine amplitude; unvoiced noise has std ``sine_amp / 3``.
        noise_std: noise std where voiced.
        voiced_threshold: f0 (Hz) above which a frame counts as voiced.
    """

    def __init__(
        self,
        sampling_rate: int,
        harmonic_num: int = HARMONIC_NUM,
        sine_amp: float = 0.1,
        noise_std: float = 0.003,
        voiced_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.sampling_rate = sampling_rate
        self.dim = harmonic_num + 1
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.voiced_threshold = voiced_threshold

    def _sines(self, f0: Tensor, upp: int, generator: torch.Generator | None) -> Tensor:
        """``f0 [B, T, 1]`` -> unit sines ``[B, T * upp, dim]``; draws ``rand(1, 1, dim)``."""
        steps = torch.arange(1, upp + 1, device=f0.device)
        # phase (in cycles) of the fundamental at each sample of each frame, from the frame start
        phase = f0 / self.sampling_rate * steps  # [B, T, upp]
        # phase advanced over each whole frame, wrapped to [-0.5, 0.5), summed over the frames
        advance = torch.fmod(phase[..., -1:].float() + 0.5, 1.0) - 0.5
        frame_start = advance.cumsum(dim=1).fmod(1.0).to(f0)
        phase += F.pad(frame_start, (0, 0, 1, -1))  # frame t starts where frames < t ended
        phase = phase.reshape(f0.shape[0], -1, 1) * torch.arange(1, self.dim + 1, device=f0.device).reshape(1, 1, -1)
        initial = torch.rand(1, 1, self.dim, device=f0.device, generator=generator)
        initial[..., 0] = 0
        phase += initial
        return torch.sin(2 * np.pi * phase)

    @torch.no_grad()
    def forward(self, f0: Tensor, upp: int, generator: torch.Generator | None = None) -> Tensor:
        """``f0 [B, T]`` (Hz) -> excitation ``[B, T * upp, harmonic_num + 1]``.

        Random draws, in this order: ``torch.rand(1, 1, dim)`` (initial phases) and
        ``torch.randn`` of the output's shape (noise), from ``generator`` or the global RNG.
        """
        f0 = f0.unsqueeze(-1)
        sines = self._sines(f0, upp, generator) * self.sine_amp
        voiced = (f0 > self.voiced_threshold).float()
        voiced = voiced.repeat_interleave(upp, dim=1)  # [B, T * upp, 1]; nearest upsampling
        noise_amp = voiced * self.noise_std + (1 - voiced) * self.sine_amp / 3
        noise = noise_amp * torch.randn(
            sines.shape, dtype=sines.dtype, device=sines.device, generator=generator
        )  # same draws as randn_like
        return sines * voiced + noise


class SourceModuleHnNSF(nn.Module):
    """Harmonic-plus-noise source: ``tanh(l_linear(sines))`` (upstream ``SourceModuleHnNSF``)."""

    def __init__(self, sampling_rate: int, harmonic_num: int = HARMONIC_NUM, sine_amp: float = 0.1,
                 noise_std: float = 0.003, voiced_threshold: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.l_sin_gen = SineGenerator(sampling_rate, harmonic_num, sine_amp, noise_std, voiced_threshold)
        self.l_linear = nn.Linear(harmonic_num + 1, 1)

    def forward(self, f0: Tensor, upp: int, generator: torch.Generator | None = None) -> Tensor:
        """``f0 [B, T]`` (Hz) -> source ``[B, T * upp, 1]``."""
        return torch.tanh(self.l_linear(self.l_sin_gen(f0, upp, generator)))


# --------------------------------------------------------------------------- generator


def _source_conv(conv: nn.Conv1d, source: Tensor) -> Tensor:
    """A one-channel ``Conv1d`` over ``source [B, N]`` as a matmul of its strided windows: ``[B, L, C_out]``.

    The same sums as ``conv(source[:, None]).transpose(1, 2)`` (to float rounding), and time-major,
    which is the memory order of the generator's channels-last signal; oneDNN is slow on a
    one-channel input (about 0.3 s per call at 10 s of 44.1 kHz audio).
    """
    (kernel,), (stride,), (padding,) = conv.kernel_size, conv.stride, conv.padding
    windows = F.pad(source, (padding, padding)).unfold(-1, kernel, stride)  # [B, L, k]
    return F.linear(windows, conv.weight[:, 0], conv.bias)


class NsfHifiGanGenerator(nn.Module):
    """The NSF-HiFiGAN generator (upstream ``nsf_hifigan/models.py`` ``Generator``, master).

    Args:
        config: the vocoder's :class:`VocoderConfig`.

    state_dict keys are upstream's ``generator`` keys (``m_source.l_linear``,
    ``noise_convs.{i}``, ``conv_pre``, ``ups.{i}``, ``resblocks.{n}.convs1/convs2.{j}``
    or ``.convs.{j}``, ``conv_post``; weight-normed layers as ``weight_g``/``weight_v``).
    """

    def __init__(self, config: VocoderConfig) -> None:
        super().__init__()
        self.config = config
        self.num_kernels = len(config.resblock_kernel_sizes)
        self.num_upsamples = len(config.upsample_rates)
        self.upp = config.upsample_factor
        self.m_source = SourceModuleHnNSF(config.sampling_rate, HARMONIC_NUM)
        self.noise_convs = nn.ModuleList()  # registered in upstream's order (state_dict key order)
        channels = config.upsample_initial_channel
        self.conv_pre = WeightNormConv1d(config.num_mels, channels, 7, padding=3)
        block = ResBlock1 if config.resblock == "1" else ResBlock2
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        rates, kernels = config.upsample_rates, config.upsample_kernel_sizes
        for i, (rate, kernel) in enumerate(zip(rates, kernels)):
            out = channels // 2 ** (i + 1)
            self.ups.append(
                WeightNormConvTranspose1d(channels // 2**i, out, kernel, rate, (kernel - rate) // 2, init_std=0.01)
            )
            if i + 1 < len(rates):  # bring the sample-rate source down to this stage's rate
                stride = int(np.prod(rates[i + 1 :]))
                self.noise_convs.append(nn.Conv1d(1, out, 2 * stride, stride=stride, padding=stride // 2))
            else:
                self.noise_convs.append(nn.Conv1d(1, out, 1))
            for k, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(block(out, k, dilations))
        self.conv_post = WeightNormConv1d(channels // 2**self.num_upsamples, 1, 7, padding=3, init_std=0.01)

    def forward(self, mel: Tensor, f0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Render audio.

        Args:
            mel: ``[B, num_mels, T]`` log-mel (channels first, as upstream's generator).
            f0: ``[B, T]`` Hz, 0 where unvoiced.
            generator: optional RNG for the source's two draws (default: the global one).

        Returns:
            ``[B, 1, T * prod(upsample_rates)]`` audio in (-1, 1).
        """
        # Every convolution runs as a (1, k) conv2d on a [B, C, 1, N] channels-last signal: oneDNN's
        # fastest layout for these, and kept from layer to layer (no reorder between the ~100 convs);
        # the same sums as upstream's conv1d to float rounding.
        rows = torch.channels_last
        source = self.m_source(f0, self.upp, generator)[..., 0]  # [B, N]
        x = self.conv_pre(mel.unsqueeze(2).contiguous(memory_format=rows))
        for i, (up, noise_conv) in enumerate(zip(self.ups, self.noise_convs)):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            x = x.add_(_source_conv(noise_conv, source).transpose(1, 2).unsqueeze(2))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            total = blocks[0](x)
            for block in blocks[1:]:
                total = total.add_(block(x))
            x = total.div_(self.num_kernels)
        x = self.conv_post(F.leaky_relu(x))  # torch's default slope 0.01 here, as upstream
        return torch.tanh(x).squeeze(2)


# --------------------------------------------------------------------------- vocoder


class Vocoder:
    """An NSF-HiFiGAN vocoder: mel extraction (always) and mel + f0 -> audio (with weights).

    Upstream ``reflow/vocoder.py`` ``Vocoder`` with ``NsfHifiGAN`` / ``NsfHifiGANLog10``
    (master). Only ``config.json`` is needed to extract mels (training); the weights are
    loaded at the first :meth:`infer` (or :meth:`load`).

    Args:
        vocoder_type: ``'nsf-hifigan'`` or ``'nsf-hifigan-log10'`` (``vocoder.type``).
        path: the weights file (``vocoder.ckpt``, e.g. ``pretrain/nsf_hifigan/model``).
        config: the parsed ``config.json``; default: read from beside ``path``.
        device: torch device for the generator (mels follow the audio's device).

    Attributes:
        vocoder_type, path, config, device; ``sampling_rate`` (Hz), ``hop_size`` (samples
        per frame), ``dimension`` (mel bins), ``mel`` (the :class:`MelExtractor`).

    Raises:
        ConfigError: unknown ``vocoder_type``, or ``config.json`` missing/invalid.
    """

    def __init__(
        self,
        vocoder_type: str,
        path: PathLike,
        config: VocoderConfig | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if vocoder_type not in VOCODER_TYPES:
            raise ConfigError(
                f"Invalid value for vocoder.type={vocoder_type!r}: must be one of {', '.join(VOCODER_TYPES)}"
            )
        self.vocoder_type = vocoder_type
        self.path = Path(path)
        self.config = config if config is not None else VocoderConfig.from_json(self.path.parent / "config.json")
        self.device = torch.device(device)
        self.mel = MelExtractor(self.config)
        self.model: NsfHifiGanGenerator | None = None

    @property
    def sampling_rate(self) -> int:
        """Audio rate in Hz (``config.sampling_rate``)."""
        return self.config.sampling_rate

    @property
    def hop_size(self) -> int:
        """Audio samples per mel frame (``config.hop_size``)."""
        return self.config.hop_size

    @property
    def dimension(self) -> int:
        """Mel bins (``config.num_mels``)."""
        return self.config.num_mels

    @property
    def has_weights(self) -> bool:
        """Whether the weights file exists (it is read only at the first :meth:`infer`)."""
        return self.path.is_file()

    def to(self, device: torch.device | str) -> Vocoder:
        """Move the generator (now, if loaded, else when it is) to ``device``; returns self."""
        self.device = torch.device(device)
        if self.model is not None:
            self.model.to(self.device)
        return self

    def extract(self, audio: Tensor, sample_rate: int = 0, keyshift: float = 0.0) -> Tensor:
        """Log-mel of ``audio`` (upstream ``Vocoder.extract``).

        Args:
            audio: ``[B, N]`` float samples.
            sample_rate: rate of ``audio`` in Hz; 0 or :attr:`sampling_rate` = no resampling.
                Otherwise the audio is resampled with soxr (HQ) on the CPU, which is not
                differentiable and differs slightly from upstream's torchaudio
                ``Resample(lowpass_filter_width=128)``.
            keyshift: semitones (see :class:`MelExtractor`).

        Returns:
            ``[B, frames, num_mels]`` on ``audio``'s device.
        """
        if sample_rate and int(sample_rate) != self.sampling_rate:
            if audio.dim() != 2:
                raise ValueError(f"Vocoder.extract expects audio [B, N], got {list(audio.shape)}")
            rows = [resample(row.detach().cpu().float().numpy(), int(sample_rate), self.sampling_rate) for row in audio]
            audio = torch.from_numpy(np.stack(rows)).to(device=audio.device, dtype=audio.dtype)
        return self.mel(audio, keyshift=keyshift)

    def load(self) -> NsfHifiGanGenerator:
        """Read the weights file now (if not yet) and return the generator (eval mode).

        Building the generator does not consume the global RNG (upstream's lazy load does,
        so there the first ``infer`` after ``torch.manual_seed`` draws other numbers than
        later ones; here every call after a seed draws the same).

        Raises:
            ConfigError: the weights file is missing or not a torch file.
            StateDictMismatchError: it is not ``{'generator': state_dict}`` or its keys or
                shapes do not fit ``config.json`` (missing/unexpected keys and shape
                mismatches named).
        """
        if self.model is not None:
            return self.model
        if not self.path.is_file():
            raise ConfigError(f"NSF-HiFiGAN weights not found at {self.path}: {WEIGHTS_HINT}")
        try:
            checkpoint = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not this file"
            raise ConfigError(
                f"{self.path}: cannot read NSF-HiFiGAN weights ({one_line(exc)}): {WEIGHTS_HINT}"
            ) from exc
        if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("generator"), Mapping):
            found = sorted(map(str, checkpoint))[:5] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
            raise StateDictMismatchError(
                f"{self.path} is not an NSF-HiFiGAN generator file: expected {{'generator': state_dict}}, "
                f"found {found}: {WEIGHTS_HINT}"
            )
        # Normal tensors even when the first infer runs under torch.inference_mode (a conversion):
        # inference tensors have no version counter, which the folded-weight cache reads.
        with torch.inference_mode(False):
            with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten: leave the global RNG as it was
                model = NsfHifiGanGenerator(self.config)
            load_state_dict_checked(
                model,
                upgrade_weight_norm_keys(dict(checkpoint["generator"])),
                source=f"NSF-HiFiGAN weights {self.path}",
                hint=f"is {self.path.parent / 'config.json'} the config released with them?",
            )
            self.model = model.eval().to(self.device)
        return self.model

    def infer(self, mel: Tensor, f0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Render audio from a mel and f0 (upstream ``Vocoder.infer``), without gradients.

        Args:
            mel: ``[B, frames, num_mels]`` natural-log mel (as :meth:`extract` gives).
                The ``nsf-hifigan-log10`` type multiplies it by 0.434294 first.
            f0: ``[B, >= frames, 1]`` (or ``[B, >= frames]``) Hz; cut to the first ``frames``.
            generator: optional RNG for the source's draws (default: the global one, as upstream).

        Returns:
            ``[B, frames * hop_size]`` audio on the vocoder's device (upstream keeps a
            channel axis, ``[B, 1, N]``).

        Raises:
            ConfigError / StateDictMismatchError: see :meth:`load`.
            ValueError: shapes that do not fit.
        """
        if mel.dim() != 3 or mel.shape[-1] != self.dimension:
            raise ValueError(f"Vocoder.infer expects mel [B, frames, {self.dimension}], got {list(mel.shape)}")
        frames = mel.shape[1]
        if f0.dim() not in (2, 3) or f0.shape[0] != mel.shape[0] or f0.shape[1] < frames:
            raise ValueError(
                f"Vocoder.infer expects f0 [B, >= {frames}, 1] for mel {list(mel.shape)}, got {list(f0.shape)}"
            )
        f0 = f0[:, :frames, 0] if f0.dim() == 3 else f0[:, :frames]
        model = self.load()
        with torch.no_grad():
            spec = mel.transpose(1, 2).to(self.device)
            if self.vocoder_type == "nsf-hifigan-log10":
                spec = LOG10_SCALE * spec
            return model(spec, f0.to(self.device), generator).squeeze(1)


def load_vocoder(path: PathLike, vocoder_type: str = "nsf-hifigan", device: torch.device | str = "cpu") -> Vocoder:
    """A :class:`Vocoder` for the weights file ``path`` with ``config.json`` beside it.

    The weights are not read yet (see :meth:`Vocoder.load`).

    Raises:
        ConfigError: unknown ``vocoder_type``; ``config.json`` missing (the message names
            the expected path), unreadable or invalid.
    """
    return Vocoder(vocoder_type, path, device=device)
