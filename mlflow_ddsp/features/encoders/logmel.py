"""``logmel``: a weights-free content "encoder" for demos and tests.

A 128-band log-mel spectrogram (natural log, floor 1e-5) of the 16 kHz signal:
1024-point Hann window, hop = the encoder hop (320 samples = 50 frames/s), HTK mel
bands from 40 Hz to Nyquist, zero-padded so frame ``n`` is centred on sample
``n * hop`` (``T // hop + 1`` frames). It costs a few milliseconds per second of audio.

Honest scope: a log-mel spectrogram carries the speaker's timbre as well as the
content, so a model trained on it learns to *resynthesise* its input voice. That is
enough to exercise the pipeline end to end (train, checkpoint, serve) and to judge
vocoder quality; it is not suitable for converting one voice into another, which
needs a speaker-independent encoder such as ``contentvec768l12`` or ``hubertsoft``.

Shapes: ``forward(wav [B, T]) -> [B, T // hop + 1, 128]`` float32.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LogMel", "LOGMEL_CHANNELS", "mel_filterbank"]

LOGMEL_CHANNELS = 128
_N_FFT = 1024
_F_MIN = 40.0  # keeps the lowest bands at least one FFT bin wide at 16 kHz
_LOG_FLOOR = 1e-5


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """Triangular HTK-mel filters (peak 1) -> float32 ``[n_mels, n_fft // 2 + 1]``."""
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


class LogMel(nn.Module):
    """Log-mel "units" at the encoder frame rate; no parameters, no checkpoint."""

    def __init__(self, sample_rate: int = 16000, hop_size: int = 320, n_mels: int = LOGMEL_CHANNELS) -> None:
        super().__init__()
        self.sample_rate = int(sample_rate)
        self._hop = int(hop_size)
        self.n_mels = int(n_mels)
        fb = mel_filterbank(self.sample_rate, _N_FFT, self.n_mels, _F_MIN, self.sample_rate / 2)
        # Buffers, not parameters: nothing to train or load, but they follow .to(device).
        self.register_buffer("window", torch.hann_window(_N_FFT), persistent=False)
        self.register_buffer("filters", torch.from_numpy(fb), persistent=False)

    @property
    def out_channels(self) -> int:
        return self.n_mels

    @property
    def hop_size(self) -> int:
        return self._hop

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        # Zero padding (not reflect) so clips shorter than the window still work.
        x = F.pad(wav, (_N_FFT // 2, _N_FFT // 2))
        spec = torch.stft(x, _N_FFT, self._hop, window=self.window, center=False, return_complex=True)
        power = spec.real.square() + spec.imag.square()  # [B, F, N]
        mel = torch.matmul(self.filters, power)  # [B, n_mels, N]
        return torch.log(torch.clamp(mel, min=_LOG_FLOOR)).transpose(1, 2)
