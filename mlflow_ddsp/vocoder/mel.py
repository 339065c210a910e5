"""The NSF-HiFiGAN log-mel spectrogram: the target every DDSP-SVC 5.0/6.0/6.1 model learns.

Recipe of upstream DDSP-SVC ``nsf_hifigan/nvSTFT.py`` ``STFT.get_mel`` (branch master),
re-expressed here; the parameters come from the vocoder's ``config.json``
(:class:`~mlflow_ddsp.vocoder.VocoderConfig`). For audio ``[B, N]`` and a key shift of
``k`` semitones:

1. ``factor = 2 ** (k / 12)``; FFT size ``n_fft' = round(n_fft * factor)`` and window
   ``win' = round(win_size * factor)`` (Python/numpy round-half-to-even), hop unchanged.
2. Pad ``(win' - hop) // 2`` samples on the left and ``max((win' - hop + 1) // 2,
   win' - N - left)`` on the right, by reflection when the right padding is shorter than
   the audio, else with zeros (very short clips).
3. ``torch.stft`` with a periodic Hann window of ``win'``, ``center=False``, one-sided;
   magnitude ``sqrt(re^2 + im^2 + 1e-9)``.
4. With ``k != 0``: crop or zero-pad the spectrum to ``n_fft // 2 + 1`` bins and scale it
   by ``win_size / win'``. The mel filterbank is always the one of the unshifted ``n_fft``.
5. Mel filterbank (:func:`mel_filterbank`, Slaney, as ``librosa.filters.mel``), then the
   natural log of ``clamp(x, 1e-5)``.

So ``frames = (N + left + right - n_fft') // hop + 1``; with ``n_fft == win_size`` (every
released config) and ``N >= win`` that is ``(N + (win - hop) - win) // hop + 1``: one frame
fewer than DDSP-SVC's unit/f0/volume frames.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # the config class lives beside the generator
    from mlflow_ddsp.vocoder.nsf_hifigan import VocoderConfig

__all__ = ["hz_to_mel_slaney", "mel_to_hz_slaney", "mel_filterbank", "MelExtractor", "CLIP_VALUE", "MAGNITUDE_EPS"]

#: floor of the mel energies before the log (nvSTFT ``clip_val``)
CLIP_VALUE = 1e-5
#: added to re^2 + im^2 before the square root (nvSTFT)
MAGNITUDE_EPS = 1e-9

# Slaney's Auditory Toolbox mel scale: linear (200/3 Hz per mel) below 1 kHz, log above
_LINEAR_HZ_PER_MEL = 200.0 / 3.0
_BREAK_HZ = 1000.0
_BREAK_MEL = _BREAK_HZ / _LINEAR_HZ_PER_MEL
_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Frequencies in Hz -> Slaney mels (float64 array of the same shape)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _LINEAR_HZ_PER_MEL
    above = hz >= _BREAK_HZ
    # np.where evaluates both branches: keep the log's argument positive
    logarithmic = _BREAK_MEL + np.log(np.where(above, hz, _BREAK_HZ) / _BREAK_HZ) / _LOG_STEP
    return np.where(above, logarithmic, linear)


def mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    """Slaney mels -> frequencies in Hz (inverse of :func:`hz_to_mel_slaney`)."""
    mels = np.asarray(mels, dtype=np.float64)
    linear = _LINEAR_HZ_PER_MEL * mels
    logarithmic = _BREAK_HZ * np.exp(_LOG_STEP * (mels - _BREAK_MEL))
    return np.where(mels >= _BREAK_MEL, logarithmic, linear)


def mel_filterbank(sampling_rate: float, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    """Slaney-normalised triangular mel filterbank ``[n_mels, n_fft // 2 + 1]`` (float32).

    Equal to ``librosa.filters.mel(sr=sampling_rate, n_fft=n_fft, n_mels=n_mels,
    fmin=fmin, fmax=fmax)`` with its defaults (``htk=False, norm='slaney'``), which
    upstream's nvSTFT uses; librosa is not needed at run time. Triangles join
    ``n_mels + 2`` points equally spaced in Slaney mels between ``fmin`` and ``fmax``
    (Hz; ``None`` = Nyquist); each row is scaled by ``2 / (upper edge - lower edge)``
    so it has unit area in Hz. As librosa, the triangles are stored in float32 before
    that scaling, which is computed in float64 and rounded to float32 again.
    """
    if fmax is None:
        fmax = float(sampling_rate) / 2
    n_bins = int(n_fft) // 2 + 1
    # spacing written as numpy.fft.rfftfreq computes it (1 / (n * d)), for identical bits
    bin_hz = np.arange(n_bins) * (1.0 / (int(n_fft) * (1.0 / float(sampling_rate))))
    edges_mel = np.linspace(hz_to_mel_slaney(fmin), hz_to_mel_slaney(fmax), int(n_mels) + 2)
    edges_hz = mel_to_hz_slaney(edges_mel)  # [n_mels + 2]
    widths = np.diff(edges_hz)  # [n_mels + 1]
    offsets = edges_hz[:, None] - bin_hz[None, :]  # [n_mels + 2, n_bins]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    triangles = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    area = 2.0 / (edges_hz[2:] - edges_hz[:-2])
    return (triangles * area[:, None]).astype(np.float32)


class MelExtractor:
    """Log-mel spectrogram of NSF-HiFiGAN (upstream ``nsf_hifigan/nvSTFT.py`` ``STFT.get_mel``).

    Args:
        config: a :class:`~mlflow_ddsp.vocoder.VocoderConfig` (uses ``sampling_rate``,
            ``num_mels``, ``n_fft``, ``win_size``, ``hop_size``, ``fmin``, ``fmax``).

    Calling it is differentiable and runs on the audio's device and dtype; the
    filterbank (per device) and the Hann windows (per device and key shift) are
    computed once and cached.
    """

    def __init__(self, config: VocoderConfig) -> None:
        self.config = config
        self.sampling_rate = int(config.sampling_rate)
        self.num_mels = int(config.num_mels)
        self.n_fft = int(config.n_fft)
        self.win_size = int(config.win_size)
        self.hop_size = int(config.hop_size)
        self.fmin = float(config.fmin)
        self.fmax = None if config.fmax is None else float(config.fmax)
        self._filterbanks: dict[tuple[str, torch.dtype], Tensor] = {}
        self._windows: dict[tuple[str, float, torch.dtype], Tensor] = {}

    def shifted_sizes(self, keyshift: float = 0.0) -> tuple[int, int]:
        """``(n_fft', win')`` for a key shift of ``keyshift`` semitones (both scaled by ``2^(k/12)``)."""
        factor = 2 ** (float(keyshift) / 12)
        return int(np.round(self.n_fft * factor)), int(np.round(self.win_size * factor))

    def num_frames(self, num_samples: int, keyshift: float = 0.0) -> int:
        """Mel frames for ``num_samples`` samples of audio (the STFT's frame count)."""
        n_fft, win = self.shifted_sizes(keyshift)
        left, right, _ = self._padding(num_samples, win)
        return (num_samples + left + right - n_fft) // self.hop_size + 1

    def filterbank(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
        """The cached ``[num_mels, n_fft // 2 + 1]`` mel filterbank on ``device``."""
        key = (str(device), dtype)
        if key not in self._filterbanks:
            bank = mel_filterbank(self.sampling_rate, self.n_fft, self.num_mels, self.fmin, self.fmax)
            self._filterbanks[key] = torch.from_numpy(bank).to(device=device, dtype=dtype)
        return self._filterbanks[key]

    def _window(self, win: int, keyshift: float, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (str(device), float(keyshift), dtype)
        if key not in self._windows:
            # computed on the CPU in float32 and moved, as upstream does
            self._windows[key] = torch.hann_window(win).to(device=device, dtype=dtype)
        return self._windows[key]

    def _padding(self, num_samples: int, win: int) -> tuple[int, int, str]:
        left = (win - self.hop_size) // 2
        right = max((win - self.hop_size + 1) // 2, win - num_samples - left)
        return left, right, "reflect" if right < num_samples else "constant"

    def __call__(self, audio: Tensor, keyshift: float = 0.0) -> Tensor:
        """Log-mel of ``audio``.

        Args:
            audio: ``[B, N]`` float samples at ``config.sampling_rate`` Hz.
            keyshift: semitones; the analysis window is stretched by ``2^(k/12)`` so that
                the spectrum of audio pitch-shifted by ``k`` lines up with the original's.

        Returns:
            ``[B, frames, num_mels]`` natural-log mel energies, ``frames`` as :meth:`num_frames`.

        Raises:
            ValueError: ``audio`` is not a 2-D floating-point tensor.
        """
        if not torch.is_tensor(audio) or audio.dim() != 2 or not audio.is_floating_point():
            shape = list(audio.shape) if torch.is_tensor(audio) else type(audio).__name__
            raise ValueError(f"MelExtractor expects float audio [B, N], got {shape}")
        keyshift = float(keyshift)
        n_fft, win = self.shifted_sizes(keyshift)
        left, right, mode = self._padding(audio.shape[-1], win)
        padded = F.pad(audio.unsqueeze(1), (left, right), mode=mode).squeeze(1)
        window = self._window(win, keyshift, audio.device, audio.dtype)
        spec = torch.stft(
            padded,
            n_fft,
            hop_length=self.hop_size,
            win_length=win,
            window=window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )  # [B, n_fft // 2 + 1, frames]
        magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + MAGNITUDE_EPS)
        if keyshift != 0:
            bins = self.n_fft // 2 + 1
            if magnitude.shape[1] < bins:
                magnitude = F.pad(magnitude, (0, 0, 0, bins - magnitude.shape[1]))
            magnitude = magnitude[:, :bins, :] * self.win_size / win
        mel = torch.matmul(self.filterbank(audio.device, magnitude.dtype), magnitude)
        return torch.log(torch.clamp(mel, min=CLIP_VALUE)).transpose(1, 2)
