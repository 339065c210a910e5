"""Audio loading/saving: mono mixdown, resampling, round trips and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from mlflow_ddsp.audio import load_audio, resample, save_wav
from mlflow_ddsp.errors import AudioError


def _tone(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(audio: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.fft.rfftfreq(audio.size, 1 / sr)[np.argmax(spectrum)])


def test_load_same_rate_is_float32_mono_and_exact(tmp_path):
    tone = _tone(440, 16000, 0.5)
    path = tmp_path / "a.wav"
    sf.write(path, tone, 16000, subtype="FLOAT")
    audio = load_audio(path, 16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    np.testing.assert_array_equal(audio, tone)


def test_load_stereo_averages_channels(tmp_path):
    left, right = _tone(440, 16000, 0.25), _tone(660, 16000, 0.25, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, 16000), (left + right) / 2, atol=1e-7)


def test_load_resamples_and_keeps_pitch(tmp_path):
    path = tmp_path / "44k.wav"
    sf.write(path, _tone(1000, 44100, 1.0), 44100, subtype="FLOAT")
    audio = load_audio(path, 16000)
    assert audio.shape == (16000,)
    assert abs(_peak_hz(audio, 16000) - 1000) < 2
    assert np.abs(audio).max() == pytest.approx(0.5, abs=0.01)


def test_resample_identity_and_length():
    x = _tone(300, 22050, 0.5)
    np.testing.assert_array_equal(resample(x, 22050, 22050), x)
    assert resample(x, 22050, 44100).shape == (22050,)


def test_save_then_load_round_trip_pcm16(tmp_path):
    tone = _tone(220, 44100, 0.3)
    out = save_wav(tmp_path / "sub" / "out.wav", tone, 44100)
    assert out.exists()
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16")
    np.testing.assert_allclose(load_audio(out, 44100), tone, atol=1 / 32767 + 1e-6)


def test_save_clips_instead_of_wrapping(tmp_path):
    loud = np.array([0.0, 1.5, -2.0, 0.5], dtype=np.float32)
    out = save_wav(tmp_path / "loud.wav", loud[None, :], 8000)  # [1, T] accepted
    back = load_audio(out, 8000)
    assert back[1] == pytest.approx(1.0, abs=1e-4) and back[2] == pytest.approx(-1.0, abs=1e-4)


def test_save_accepts_torch_tensor(tmp_path):
    torch = pytest.importorskip("torch")
    out = save_wav(tmp_path / "t.wav", torch.zeros(1, 100), 16000, subtype="FLOAT")
    assert sf.info(out).frames == 100


@pytest.mark.parametrize(
    "audio, match",
    [
        (np.zeros((2, 10), np.float32), "expected mono"),
        (np.zeros(0, np.float32), "empty"),
        (np.array([0.0, np.nan], np.float32), "NaN/inf"),
    ],
)
def test_save_rejects_bad_audio(tmp_path, audio, match):
    with pytest.raises(AudioError, match=match):
        save_wav(tmp_path / "bad.wav", audio, 16000)


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="nope.wav: audio file not found"):
        load_audio(path, 16000)


def test_unreadable_file_is_one_line_audio_error(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"RIFF\x00\x00not really a wave file" * 10)
    with pytest.raises(AudioError) as info:
        load_audio(path, 16000)
    message = str(info.value)
    assert "garbage.wav: cannot read audio" in message and "\n" not in message


def test_empty_file_is_rejected(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match=r"empty.wav: audio file is empty"):
        load_audio(path, 16000)


def test_non_finite_samples_are_rejected(tmp_path):
    path = tmp_path / "nan.wav"
    data = _tone(100, 8000, 0.1)
    data[5] = np.nan
    data[7] = np.inf
    sf.write(path, data, 8000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan.wav: audio contains 2 non-finite"):
        load_audio(path, 8000)


def test_too_short_to_resample_is_rejected(tmp_path):
    path = tmp_path / "one.wav"
    sf.write(path, np.array([0.1], np.float32), 48000, subtype="FLOAT")
    with pytest.raises(AudioError, match="one.wav: audio is too short"):
        load_audio(path, 8000)


def test_audio_error_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        load_audio(tmp_path / "missing.wav", 16000)
