"""Volume: exact agreement with upstream's RMS definition, frame count and scale."""

from __future__ import annotations

import numpy as np
import pytest

from mlflow_ddsp.features import extract_volume, frame_count


def _upstream_volume(audio: np.ndarray, hop: int) -> np.ndarray:
    """The definition, written frame by frame: reflect-pad the squared signal, mean, root."""
    n_frames = len(audio) // hop + 1
    power = np.pad(audio.astype(np.float64) ** 2, (hop // 2, (hop + 1) // 2), mode="reflect")
    return np.sqrt([power[n * hop : (n + 1) * hop].mean() for n in range(n_frames)])


@pytest.mark.parametrize("n_samples", [1000, 1024, 1025, 44100, 88064, 12345])
@pytest.mark.parametrize("hop", [512, 441, 7])
def test_matches_upstream_definition(n_samples, hop):
    rng = np.random.default_rng(n_samples + hop)
    audio = (rng.standard_normal(n_samples) * np.linspace(0.01, 0.8, n_samples)).astype(np.float32)
    volume = extract_volume(audio, hop)
    assert volume.dtype == np.float32
    assert volume.shape == (frame_count(n_samples, hop),) == (n_samples // hop + 1,)
    np.testing.assert_allclose(volume, _upstream_volume(audio, hop), rtol=1e-5, atol=1e-8)


def test_sine_rms_and_silence():
    sr, hop = 44100, 512
    t = np.arange(sr) / sr
    tone = (0.5 * np.sin(2 * np.pi * 441 * t)).astype(np.float32)
    volume = extract_volume(tone, hop)
    # Interior frames span >5 periods: RMS of a sine is amp / sqrt(2).
    np.testing.assert_allclose(volume[2:-2], 0.5 / np.sqrt(2), rtol=0.02)
    assert np.all(extract_volume(np.zeros(5000, np.float32), hop) == 0)


def test_frame_n_is_centred_on_sample_n_hop():
    hop = 100
    audio = np.zeros(1000, np.float32)
    audio[500] = 1.0  # an impulse at frame 5's centre
    volume = extract_volume(audio, hop)
    assert np.flatnonzero(volume).tolist() == [5]


def test_rejects_empty_or_2d():
    with pytest.raises(ValueError):
        extract_volume(np.zeros(0, np.float32), 512)
    with pytest.raises(ValueError):
        extract_volume(np.zeros((2, 100), np.float32), 512)
