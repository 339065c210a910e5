"""Multi-resolution spectral losses of DDSP-SVC.

For one FFT size ``n``: magnitude spectrograms ``S`` (Hann window of length ``n``
divided by ``sqrt(sum(w^2))``, hop ``n``, no centering, +1e-7) of target and
prediction, and

    loss_n = mean_b( ||S_t - S_p||_F / ||S_t + S_p||_F ) + alpha * mean(|log S_t - log S_p|)

(spectral convergence plus log-magnitude L1). Two ways to pick the sizes:

- :class:`RandomScaleSpectralLoss` (upstream's ``RSSLoss``, for training):
  each call draws ``n_scale`` sizes uniformly from ``[fft_min, fft_max)`` and
  averages; the randomness acts as augmentation but makes single values noisy.
- :class:`FixedScaleSpectralLoss` (for validation): a fixed list of sizes, so
  validation losses of different checkpoints are comparable.
  :func:`validation_fft_sizes` derives that list from the training range.

Inputs are ``[B, N]`` audio; the loss is a scalar tensor. ``torch.stft`` only
(torchaudio is not used).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlflow_ddsp.errors import AudioError, ConfigError

__all__ = [
    "magnitude_spectrogram",
    "single_scale_spectral_loss",
    "validation_fft_sizes",
    "RandomScaleSpectralLoss",
    "FixedScaleSpectralLoss",
]


def magnitude_spectrogram(audio: Tensor, n_fft: int) -> Tensor:
    """Window-normalised magnitude STFT with hop ``n_fft`` and no centering.

    Equals torchaudio's ``Spectrogram(n_fft, hop_length=n_fft, power=1,
    normalized=True, center=False)``, which upstream uses.

    Args:
        audio: ``[B, N]`` with ``N >= n_fft``.
        n_fft: FFT size = window length = hop.

    Returns:
        ``[B, n_fft // 2 + 1, N // n_fft]``.
    """
    if audio.shape[-1] < n_fft:
        raise AudioError(
            f"audio of {audio.shape[-1]} samples is shorter than the loss FFT size {n_fft}; "
            "use longer clips or a smaller loss.fft_max"
        )
    window = torch.hann_window(n_fft, dtype=audio.dtype, device=audio.device)
    # torchaudio divides the complex STFT by the window's L2 norm; dividing the
    # window instead is the same (the STFT is linear in it) and saves a complex
    # pass forward and backward.
    window = window / window.pow(2).sum().sqrt()
    spec = torch.stft(
        audio, n_fft=n_fft, hop_length=n_fft, win_length=n_fft, window=window, center=False, return_complex=True
    )
    return spec.abs()


def single_scale_spectral_loss(
    pred: Tensor, target: Tensor, n_fft: int, alpha: float = 1.0, eps: float = 1e-7
) -> Tensor:
    """Spectral convergence + ``alpha`` * log-magnitude L1 at one FFT size.

    Args:
        pred: ``[B, N]`` predicted audio.
        target: ``[B, N]`` reference audio (no gradient flows into it).
        n_fft: FFT size.
        alpha: weight of the log term.
        eps: added to magnitudes before the ratio and the log.

    Returns:
        Scalar tensor.
    """
    with torch.no_grad():  # the reference needs no graph
        s_true = magnitude_spectrogram(target, n_fft) + eps
    s_pred = magnitude_spectrogram(pred, n_fft) + eps
    converge = torch.mean(
        torch.linalg.norm(s_true - s_pred, dim=(1, 2)) / torch.linalg.norm(s_true + s_pred, dim=(1, 2))
    )
    return converge + alpha * F.l1_loss(s_true.log(), s_pred.log())


def validation_fft_sizes(fft_min: int, fft_max: int, n_scale: int) -> list[int]:
    """Deterministic stand-in for the random draw: the midpoints of ``n_scale``
    equal-probability slices of ``[fft_min, fft_max)``.

    The mean over these sizes estimates the *expected* random-scale loss, so
    validation and training values stay on the same scale.
    Upstream defaults (256, 2048, 4) give ``[480, 928, 1376, 1824]``.
    """
    _check_range(fft_min, fft_max, n_scale)
    width = (fft_max - fft_min) / n_scale
    return [int(fft_min + width * (i + 0.5)) for i in range(n_scale)]


def _check_range(fft_min: int, fft_max: int, n_scale: int) -> None:
    for key, value, low in (("loss.fft_min", fft_min, 2), ("loss.n_scale", n_scale, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"Invalid value for {key}={value!r}: must be an integer >= {low}")
    if isinstance(fft_max, bool) or not isinstance(fft_max, int) or fft_max <= fft_min:
        raise ConfigError(f"Invalid value for loss.fft_max={fft_max!r}: must be an integer > loss.fft_min={fft_min}")


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.dim() != 2 or pred.shape != target.shape:
        raise ValueError(
            f"pred and target must both be [B, N] of equal shape; got {tuple(pred.shape)} and {tuple(target.shape)} "
            "(crop both to the shorter length first)"
        )


class RandomScaleSpectralLoss(nn.Module):
    """Upstream's random-scale spectral loss (training)."""

    def __init__(
        self,
        fft_min: int = 256,
        fft_max: int = 2048,
        n_scale: int = 4,
        alpha: float = 1.0,
        eps: float = 1e-7,
    ) -> None:
        """
        Args:
            fft_min: smallest FFT size drawn (``loss.fft_min``), inclusive.
            fft_max: largest FFT size (``loss.fft_max``), exclusive.
            n_scale: sizes drawn per call (``loss.n_scale``).
            alpha: weight of the log-magnitude term.
            eps: magnitude floor.

        Raises:
            ConfigError: a value is out of range.
        """
        super().__init__()
        _check_range(fft_min, fft_max, n_scale)
        self.fft_min, self.fft_max, self.n_scale = fft_min, fft_max, n_scale
        self.alpha, self.eps = alpha, eps

    def draw_fft_sizes(self, generator: torch.Generator | None = None) -> list[int]:
        """``n_scale`` sizes uniform in ``[fft_min, fft_max)`` from ``generator``
        (default: torch's global RNG, as upstream)."""
        return torch.randint(self.fft_min, self.fft_max, (self.n_scale,), generator=generator).tolist()

    def forward(self, pred: Tensor, target: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Mean single-scale loss over freshly drawn sizes.

        Args:
            pred: ``[B, N]`` predicted audio.
            target: ``[B, N]`` reference audio, ``N >= fft_max - 1``.
            generator: RNG for the draw; default the global one.

        Returns:
            Scalar tensor.
        """
        _check_pair(pred, target)
        sizes = self.draw_fft_sizes(generator)
        total = sum(single_scale_spectral_loss(pred, target, n, self.alpha, self.eps) for n in sizes)
        return total / self.n_scale


class FixedScaleSpectralLoss(nn.Module):
    """Spectral loss over a fixed list of FFT sizes (validation)."""

    def __init__(self, fft_sizes: Sequence[int], alpha: float = 1.0, eps: float = 1e-7) -> None:
        """
        Args:
            fft_sizes: FFT sizes to average over, e.g. :func:`validation_fft_sizes`.
            alpha: weight of the log-magnitude term.
            eps: magnitude floor.

        Raises:
            ConfigError: empty list or a size < 2.
        """
        super().__init__()
        sizes = list(fft_sizes)
        if not sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in sizes):
            raise ConfigError(f"Invalid FFT sizes {sizes!r}: need at least one integer >= 2")
        self.fft_sizes = sizes
        self.alpha, self.eps = alpha, eps

    @classmethod
    def from_range(cls, fft_min: int, fft_max: int, n_scale: int, **kwargs: float) -> FixedScaleSpectralLoss:
        """The validation counterpart of ``RandomScaleSpectralLoss(fft_min, fft_max, n_scale)``."""
        return cls(validation_fft_sizes(fft_min, fft_max, n_scale), **kwargs)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Mean single-scale loss over :attr:`fft_sizes`.

        Args:
            pred: ``[B, N]`` predicted audio.
            target: ``[B, N]`` reference audio, ``N >= max(fft_sizes)``.

        Returns:
            Scalar tensor.
        """
        _check_pair(pred, target)
        total = sum(single_scale_spectral_loss(pred, target, n, self.alpha, self.eps) for n in self.fft_sizes)
        return total / len(self.fft_sizes)
