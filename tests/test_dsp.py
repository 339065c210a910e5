"""Each DSP helper against a straightforward numpy reference (loops allowed here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlflow_ddsp import dsp

RNG = np.random.default_rng(0)


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


# ---------------------------------------------------------------- synthesis


def test_upsample_interpolates_linearly_and_holds_last_frame() -> None:
    frames = RNG.normal(size=(2, 5, 3))
    factor = 4
    out = dsp.upsample(_t(frames), factor).numpy()
    assert out.shape == (2, 20, 3)
    positions = np.arange(20) / factor
    for b in range(2):
        for c in range(3):
            expected = np.interp(positions, np.arange(5), frames[b, :, c])  # holds beyond frame 4
            np.testing.assert_allclose(out[b, :, c], expected, atol=1e-5)
    np.testing.assert_allclose(out[:, ::factor], frames, atol=1e-6)  # frame t lands on sample t*factor


@pytest.mark.parametrize("double_precision", [True, False])
def test_accumulate_phase_is_wrapped_running_sum(double_precision: bool) -> None:
    sr = 8000
    f0 = 100 + 300 * RNG.random(size=(2, 4000, 1))
    initial = np.array([0.5, -2.0]).reshape(2, 1, 1)
    phase = dsp.accumulate_phase(_t(f0), sr, _t(initial), double_precision=double_precision).numpy()
    cycles = np.cumsum(f0.astype(np.float32).astype(np.float64) / sr, axis=1) + initial / (2 * np.pi)
    expected = cycles - np.round(cycles)
    assert phase.dtype == np.float32 and np.all(np.abs(phase) <= 0.5)
    # float32 accumulation drifts over thousands of samples; float64 does not
    np.testing.assert_allclose(phase, expected, atol=1e-6 if double_precision else 2e-4)


def test_combtooth_is_sinc_of_distance_to_pulse() -> None:
    sr = 16000
    f0 = 50 + 400 * RNG.random(size=(2, 300, 1))
    phase = RNG.random(size=(2, 300, 1)) - 0.5
    out = dsp.combtooth(_t(phase), _t(f0), sr).numpy()
    expected = np.sinc(sr * phase[..., 0] / (f0[..., 0] + 1e-3))
    assert out.shape == (2, 300)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def _superfast_reference(f0: np.ndarray, sr: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame loop: linear frequency ramp to the next frame, integrated phase."""
    batch, frames, _ = f0.shape
    pulses = np.zeros((batch, frames * block))
    phase_frames = np.zeros((batch, frames, 1))
    for b in range(batch):
        start = 0.0
        for t in range(frames):
            s0 = f0[b, t, 0] / sr
            ds = (f0[b, t + 1, 0] / sr - s0) if t + 1 < frames else 0.0
            n = np.arange(block)
            rad = s0 * (n + 1) + 0.5 * ds * n * (n + 1) / block + start
            rad -= np.round(rad)
            pulses[b, t * block : (t + 1) * block] = np.sinc(rad / (s0 + ds * n / block + 1e-5))
            phase_frames[b, t, 0] = 2 * np.pi * rad[0]
            end = s0 * block + 0.5 * ds * (block - 1)
            start = math.fmod(start + math.fmod(end + 0.5, 1.0) - 0.5, 1.0)
    return pulses, phase_frames


def test_superfast_excitation_matches_framewise_reference() -> None:
    sr, block = 16000, 64
    f0 = np.cumsum(RNG.normal(scale=5, size=(2, 9, 1)), axis=1) + np.array([150.0, 420.0]).reshape(2, 1, 1)
    pulses, phase_frames = dsp.superfast_excitation(_t(f0), sr, block)
    ref_pulses, ref_phase = _superfast_reference(f0.astype(np.float32).astype(np.float64), sr, block)
    assert pulses.shape == (2, 9 * block) and phase_frames.shape == (2, 9, 1)
    np.testing.assert_allclose(pulses.numpy(), ref_pulses, atol=1e-4)
    np.testing.assert_allclose(np.cos(phase_frames.numpy()), np.cos(ref_phase), atol=1e-5)


def test_superfast_excitation_constant_f0_is_continuous_phase() -> None:
    sr, block, f = 16000, 32, 250.0
    _, phase_frames = dsp.superfast_excitation(torch.full((1, 6, 1), f), sr, block)
    cycles = (np.arange(6) * block + 1) * f / sr  # phase after the first sample of each frame
    np.testing.assert_allclose(np.exp(1j * phase_frames.numpy()[0, :, 0]), np.exp(2j * np.pi * cycles), atol=1e-5)


def test_remove_above_fmax_scales_harmonics_at_or_above_cutoff() -> None:
    amplitudes = 1 + RNG.random(size=(1, 3, 6))
    f0 = np.array([100.0, 300.0, 1000.0]).reshape(1, 3, 1)
    out = dsp.remove_above_fmax(_t(amplitudes), _t(f0), 1000.0).numpy()
    keep = (f0 * np.arange(1, 7) < 1000.0).astype(np.float64) + 1e-7
    np.testing.assert_allclose(out, amplitudes * keep, rtol=1e-6)
    assert out[0, 2, 0] < 1e-6  # 1 x 1000 Hz is not below 1000 Hz


@pytest.mark.parametrize("chunk_size", [3, 32])
def test_harmonic_oscillators_sum_sines(chunk_size: int) -> None:
    block, frames, harmonics = 16, 4, 8
    phase = 2 * np.pi * (RNG.random(size=(2, frames * block, 1)) - 0.5)
    amplitudes = RNG.random(size=(2, frames, harmonics))
    out = dsp.harmonic_oscillators(_t(phase), _t(amplitudes), block, chunk_size).numpy()
    upsampled = dsp.upsample(_t(amplitudes), block).numpy()
    expected = sum(np.sin(k * phase[..., 0]) * upsampled[..., k - 1] for k in range(1, harmonics + 1))
    np.testing.assert_allclose(out, expected, atol=1e-5)


# ---------------------------------------------------------------- filtering


def test_overlap_add_matches_loop() -> None:
    frames = RNG.normal(size=(2, 5, 7))
    hop = 3
    out = dsp.overlap_add(_t(frames), hop).numpy()
    expected = np.zeros((2, 4 * hop + 7))
    for f in range(5):
        expected[:, f * hop : f * hop + 7] += frames[:, f]
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_hold_last_frame_appends_copy() -> None:
    x = _t(RNG.normal(size=(2, 3, 4)))
    out = dsp.hold_last_frame(x)
    assert out.shape == (2, 4, 4)
    assert torch.equal(out[:, :3], x) and torch.equal(out[:, 3], x[:, 2])


def _frame_filter_reference(signal: np.ndarray, transfer: np.ndarray, window: np.ndarray, block: int) -> np.ndarray:
    padded = np.pad(signal, ((0, 0), (block, block)))
    n_frames = transfer.shape[1]
    out = np.zeros((signal.shape[0], (n_frames + 1) * block))
    for t in range(n_frames):
        segment = padded[:, t * block : t * block + 2 * block] * window
        frame = np.fft.irfft(np.fft.rfft(segment, axis=-1) * transfer[:, t], 2 * block, axis=-1) * window
        out[:, t * block : t * block + 2 * block] += frame
    return out[:, block:-block]


def test_frame_filtering_matches_reference() -> None:
    block, blocks = 16, 6
    signal = RNG.normal(size=(2, blocks * block))
    transfer = RNG.normal(size=(2, blocks + 1, block + 1)) + 1j * RNG.normal(size=(2, blocks + 1, block + 1))
    window = torch.sqrt(torch.hann_window(2 * block))
    spectra = dsp.frame_rfft(_t(signal), window, block)
    assert spectra.shape == (2, blocks + 1, block + 1)
    out = dsp.frame_irfft_ola(spectra * torch.from_numpy(transfer.astype(np.complex64)), window, block).numpy()
    expected = _frame_filter_reference(signal, transfer, window.double().numpy(), block)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_frame_filtering_with_unit_filter_reconstructs_input() -> None:
    block = 32
    signal = _t(RNG.normal(size=(1, 10 * block)))
    window = torch.sqrt(torch.hann_window(2 * block))
    out = dsp.frame_irfft_ola(dsp.frame_rfft(signal, window, block), window, block)
    torch.testing.assert_close(out, signal, atol=1e-5, rtol=0)


@pytest.mark.parametrize("blocks", [1, 2, 12])  # 1-2 blocks: zero padding; 12: reflect padding
def test_stft_round_trip_reconstructs_input(blocks: int) -> None:
    hop, window = 32, torch.hann_window(128)
    signal = _t(RNG.normal(size=(2, blocks * hop)))
    spectra = dsp.stft_analysis(signal, window, hop)
    assert spectra.shape == (2, 65, blocks + 1)
    torch.testing.assert_close(dsp.stft_synthesis(spectra, window, hop), signal, atol=1e-5, rtol=0)


def test_stft_analysis_matches_numpy_frames() -> None:
    hop, n_fft = 16, 64
    signal = RNG.normal(size=(1, 8 * hop))
    window = torch.hann_window(n_fft)
    out = dsp.stft_analysis(_t(signal), window, hop).numpy()
    padded = np.pad(signal[0], n_fft // 2, mode="reflect")
    for t in range(9):
        expected = np.fft.rfft(padded[t * hop : t * hop + n_fft] * window.double().numpy())
        np.testing.assert_allclose(out[0, :, t], expected, atol=1e-4)


def test_impulse_response_hann_window_reference() -> None:
    transfer = RNG.normal(size=(2, 3, 9)) + 1j * RNG.normal(size=(2, 3, 9))
    out = dsp.frequency_impulse_response(torch.from_numpy(transfer.astype(np.complex64))).numpy()
    length = 16
    impulse = np.fft.irfft(transfer, axis=-1)  # zero-time tap at index 0
    centred = np.roll(impulse, length // 2, axis=-1)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)  # periodic Hann, peak at centre
    np.testing.assert_allclose(out, centred * window, atol=1e-5)


def test_impulse_response_without_window_is_centred() -> None:
    transfer = np.ones((1, 2, 5), dtype=np.complex64)  # flat response: a unit impulse
    out = dsp.frequency_impulse_response(torch.from_numpy(transfer), hann_window=False).numpy()
    expected = np.zeros((1, 2, 8))
    expected[..., 4] = 1
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_impulse_response_dynamic_window_keeps_upstream_quirks() -> None:
    transfer = RNG.normal(size=(1, 2, 9)) + 0j
    half_width = np.array([2.0, 100.0]).reshape(1, 2, 1)
    out = dsp.frequency_impulse_response(
        torch.from_numpy(transfer.astype(np.complex64)), half_width_frames=_t(half_width)
    ).numpy()
    centred = np.roll(np.fft.irfft(transfer, axis=-1), 8, axis=-1)
    offsets = np.arange(-8, 8) / half_width
    offsets[offsets > 1] = 0  # upstream zeroes the *offset*, so the window is 1 there
    window = (1 + np.cos(np.pi * offsets)) / 2
    np.testing.assert_allclose(out, centred * window, atol=1e-5)
    assert window[0, 0, -1] == 1.0  # offset 7/2 > 1: passed unattenuated, as upstream


def _fft_convolve_reference(audio: np.ndarray, impulse: np.ndarray) -> np.ndarray:
    batch, n = audio.shape
    frames, ir_size = impulse.shape[1:]
    hop = n // frames
    window = 1 - np.abs(np.arange(2 * hop) - hop) / hop  # periodic Bartlett
    padded = np.pad(audio, ((0, 0), (hop, hop)))
    out = np.zeros((batch, (frames + 2) * hop + ir_size))
    for b in range(batch):
        for t in range(frames + 1):
            ir = impulse[b, min(t, frames - 1)]
            segment = padded[b, t * hop : t * hop + 2 * hop] * window
            out[b, t * hop : t * hop + 2 * hop + ir_size - 1] += np.convolve(segment, ir)
    start = hop + ir_size // 2
    return out[:, start : start + n]


def test_fft_convolve_matches_direct_convolution() -> None:
    audio = RNG.normal(size=(2, 5 * 8))
    impulse = RNG.normal(size=(2, 5, 6))
    out = dsp.fft_convolve(_t(audio), _t(impulse)).numpy()
    np.testing.assert_allclose(out, _fft_convolve_reference(audio, impulse), atol=1e-4)


def test_frequency_filter_with_flat_response_is_identity() -> None:
    audio = _t(RNG.normal(size=(2, 6 * 16)))
    flat = torch.ones(2, 6, 17, dtype=torch.complex64)
    out = dsp.frequency_filter(audio, flat, hann_window=False)
    torch.testing.assert_close(out, audio, atol=1e-5, rtol=0)


def test_fft_convolve_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="batch"):
        dsp.fft_convolve(torch.zeros(2, 40), torch.zeros(1, 5, 4))
    with pytest.raises(ValueError, match="multiple"):
        dsp.fft_convolve(torch.zeros(1, 41), torch.zeros(1, 5, 4))
