"""Spectral losses against a numpy reference, and the random/fixed scale choices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlflow_ddsp.errors import AudioError, ConfigError
from mlflow_ddsp.loss import (
    FixedScaleSpectralLoss,
    RandomScaleSpectralLoss,
    magnitude_spectrogram,
    single_scale_spectral_loss,
    validation_fft_sizes,
)

RNG = np.random.default_rng(0)


def _spectrogram_reference(audio: np.ndarray, n_fft: int) -> np.ndarray:
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    n_frames = (audio.shape[-1] - n_fft) // n_fft + 1  # hop = n_fft, no centering
    frames = np.stack([audio[:, t * n_fft : (t + 1) * n_fft] for t in range(n_frames)], axis=1)
    spectra = np.abs(np.fft.rfft(frames * window, axis=-1)) / np.sqrt(np.sum(window**2))
    return spectra.transpose(0, 2, 1)  # [B, bins, frames]


def _loss_reference(pred: np.ndarray, target: np.ndarray, n_fft: int, eps: float = 1e-7) -> float:
    s_true = _spectrogram_reference(target, n_fft) + eps
    s_pred = _spectrogram_reference(pred, n_fft) + eps
    converge = np.mean(
        [np.linalg.norm(s_true[b] - s_pred[b]) / np.linalg.norm(s_true[b] + s_pred[b]) for b in range(len(pred))]
    )
    return float(converge + np.mean(np.abs(np.log(s_true) - np.log(s_pred))))


def _pair(n: int = 3000) -> tuple[torch.Tensor, torch.Tensor]:
    target = RNG.normal(size=(2, n))
    pred = target + 0.3 * RNG.normal(size=(2, n))
    return torch.from_numpy(pred.astype(np.float32)), torch.from_numpy(target.astype(np.float32))


@pytest.mark.parametrize("n_fft", [256, 333, 1000])
def test_magnitude_spectrogram_matches_reference(n_fft: int) -> None:
    audio = RNG.normal(size=(2, 2500))
    out = magnitude_spectrogram(torch.from_numpy(audio.astype(np.float32)), n_fft).numpy()
    expected = _spectrogram_reference(audio.astype(np.float32).astype(np.float64), n_fft)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_fft", [256, 777])
def test_single_scale_loss_matches_reference(n_fft: int) -> None:
    pred, target = _pair()
    value = single_scale_spectral_loss(pred, target, n_fft).item()
    assert value == pytest.approx(_loss_reference(pred.double().numpy(), target.double().numpy(), n_fft), rel=1e-4)


def test_identical_signals_have_zero_loss() -> None:
    _, target = _pair()
    assert single_scale_spectral_loss(target, target, 512).item() == 0.0
    assert FixedScaleSpectralLoss([300, 600])(target, target).item() == 0.0


def test_random_scale_loss_averages_drawn_sizes() -> None:
    pred, target = _pair()
    loss = RandomScaleSpectralLoss(fft_min=256, fft_max=1024, n_scale=3)
    sizes = loss.draw_fft_sizes(torch.Generator().manual_seed(5))
    assert len(sizes) == 3 and all(256 <= n < 1024 for n in sizes)
    value = loss(pred, target, generator=torch.Generator().manual_seed(5))
    expected = np.mean([_loss_reference(pred.double().numpy(), target.double().numpy(), n) for n in sizes])
    assert value.item() == pytest.approx(expected, rel=1e-4)


def test_random_scale_loss_draws_from_global_rng_like_upstream() -> None:
    pred, target = _pair()
    loss = RandomScaleSpectralLoss(fft_min=256, fft_max=1024, n_scale=4)
    torch.manual_seed(11)
    from_global = loss(pred, target)
    torch.manual_seed(11)
    sizes = torch.randint(256, 1024, (4,)).tolist()  # upstream's draw
    expected = sum(single_scale_spectral_loss(pred, target, n) for n in sizes) / 4
    assert from_global.item() == pytest.approx(expected.item(), rel=1e-6)


def test_random_scale_loss_varies_but_fixed_scale_does_not() -> None:
    pred, target = _pair()
    random_loss = RandomScaleSpectralLoss(fft_min=256, fft_max=1024, n_scale=2)
    values = {round(random_loss(pred, target, torch.Generator().manual_seed(s)).item(), 6) for s in range(6)}
    assert len(values) > 1
    fixed = FixedScaleSpectralLoss.from_range(256, 1024, 2)
    assert fixed(pred, target).item() == fixed(pred, target).item()
    assert fixed.fft_sizes == [448, 832]


def test_validation_sizes_are_quantile_midpoints_of_training_range() -> None:
    assert validation_fft_sizes(256, 2048, 4) == [480, 928, 1376, 1824]
    assert validation_fft_sizes(256, 257, 1) == [256]


def test_loss_gradient_reaches_prediction() -> None:
    pred, target = _pair()
    pred.requires_grad_(True)
    FixedScaleSpectralLoss([256, 512])(pred, target).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fft_min": 1}, r"loss\.fft_min=1"),
        ({"fft_max": 256}, r"loss\.fft_max=256: must be an integer > loss\.fft_min=256"),
        ({"n_scale": 0}, r"loss\.n_scale=0"),
        ({"n_scale": 2.0}, r"loss\.n_scale=2\.0"),
    ],
)
def test_random_scale_loss_rejects_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RandomScaleSpectralLoss(**kwargs)


def test_fixed_scale_loss_rejects_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="FFT sizes"):
        FixedScaleSpectralLoss([])
    with pytest.raises(ConfigError, match="FFT sizes"):
        FixedScaleSpectralLoss([512, 1])


def test_audio_shorter_than_fft_is_a_clear_error() -> None:
    short = torch.zeros(1, 400)
    with pytest.raises(AudioError, match="400 samples is shorter than the loss FFT size 512"):
        FixedScaleSpectralLoss([512])(short, short)


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="equal shape"):
        FixedScaleSpectralLoss([256])(torch.zeros(1, 1000), torch.zeros(1, 999))
