"""Inputs that cannot fill the model's band (issue 23, point 4).

An 8 kHz phone recording or a low-passed (MP3-sourced) file gives a model trained on
it nothing above its edge. Preprocess names each such recording, says what the model
will lack, lists them all in ``<root>/band_limited.txt``, and ``--strict`` refuses them
before extracting anything. The tests make their own audio: a full-band voice-like tone
(harmonics up to Nyquist over a -75 dB noise floor, as a microphone's), the same sung at
8 kHz, and the full-band one low-passed at 4 kHz with a brick wall (as an MP3 encoder does).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from mlflow_ddsp.audio import (
    band_shortfall,
    content_edge_hz,
    save_wav,
)
from mlflow_ddsp.cli import main
from mlflow_ddsp.config import load_config
from mlflow_ddsp.errors import AudioError
from mlflow_ddsp.preprocess import BAND_LIST_NAME, MANIFEST_NAME, preprocess

SR = 44100


def voice(sample_rate: int, seconds: float = 1.5, f0: float = 220.0, seed: int = 0) -> np.ndarray:
    """A sung vowel-like tone at ``sample_rate``: every harmonic below Nyquist (1/k amplitude,
    5 Hz vibrato) plus white noise 75 dB below the harmonics' level, float32 ``[T]``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))) / sample_rate
    harmonics = np.arange(1, int(sample_rate / 2 / (f0 * 1.02)))
    x = (np.sin(np.outer(phase, harmonics)) / harmonics).sum(axis=1)
    x = 0.5 * x / np.abs(x).max()
    x += 10 ** (-75 / 20) * 0.5 * rng.standard_normal(x.size)
    return x.astype(np.float32)


def brick_wall(x: np.ndarray, sample_rate: int, cutoff_hz: float) -> np.ndarray:
    """``x`` with every frequency above ``cutoff_hz`` removed (an MP3 encoder's low-pass)."""
    spectrum = np.fft.rfft(x)
    spectrum[np.fft.rfftfreq(x.size, 1 / sample_rate) > cutoff_hz] = 0
    return np.fft.irfft(spectrum, n=x.size).astype(np.float32)


def write_set(root: Path, files: dict[str, tuple[np.ndarray, int]]) -> None:
    for name, (audio, rate) in files.items():
        save_wav(root / "audio" / name, audio, rate)  # 16-bit PCM, as recordings come


@pytest.fixture
def dataset(tmp_path):
    """train/: an 8 kHz recording, a 44.1 kHz one low-passed at 4 kHz, a full-band one; val/: full band."""
    data = tmp_path / "data"
    full = voice(SR)
    write_set(data / "train", {
        "phone_8k.wav": (voice(8000, seed=1), 8000),
        "mp3_lowpass_4k.wav": (brick_wall(voice(SR, seed=2), SR, 4000), SR),
        "full_band.wav": (full, SR),
    })  # fmt: skip
    write_set(data / "val", {"val_full.wav": (voice(SR, seed=3, f0=180.0), SR)})
    return data


def write_config(path: Path, data: Path) -> Path:
    cfg = {
        "data": {"f0_extractor": "parselmouth", "encoder": "logmel", "encoder_out_channels": 128,
                 "duration": 0.5, "train_path": str(data / "train"), "valid_path": str(data / "val")},
        "model": {"n_spk": 1},
        "device": "cpu",
    }  # fmt: skip
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- the measurement and the rule (pure) -------------------------------------------------


def test_content_edge_tells_a_low_passed_recording_from_a_full_band_one():
    full = voice(SR)
    assert content_edge_hz(full, SR) > 20000  # harmonics and noise up to Nyquist
    # The brick wall at 4 kHz, then 16-bit PCM (its quantization noise fills the band above again).
    lowpassed = np.round(brick_wall(full, SR, 4000) * 32767) / 32767
    assert 4000 <= content_edge_hz(lowpassed, SR) <= 4500
    # An 8 kHz recording loaded at 44.1 kHz (soxr's stop band) stops at its own Nyquist.
    assert 3500 <= content_edge_hz(load_audio_from(voice(8000), 8000), SR) <= 4000
    assert content_edge_hz(np.zeros(SR, dtype=np.float32), SR) is None
    assert content_edge_hz(np.zeros(10, dtype=np.float32), SR) is None


def load_audio_from(audio: np.ndarray, rate: int) -> np.ndarray:
    from mlflow_ddsp.audio import resample

    return resample(audio, rate, SR)


def test_the_rule_reports_a_lower_rate_or_an_edge_below_half_of_nyquist():
    assert band_shortfall(8000, 4000.0, 44100) == "8000 Hz recording: the model trained on it will have nothing above 4.0 kHz"
    assert band_shortfall(16000, 3400.0, 44100) == (
        "16000 Hz recording, content stops at 3.4 kHz: the model trained on it will have nothing above 3.4 kHz"
    )
    assert band_shortfall(44100, 4250.0, 44100) == (
        "content stops at 4.2 kHz: the model trained on it will have nothing above 4.2 kHz"
    )
    assert band_shortfall(44100, 16000.0, 44100) is None  # a 128 kbit/s MP3's 16 kHz: not far below 22.05
    assert band_shortfall(48000, 22050.0, 44100) is None  # a higher rate is resampled down: full band
    assert band_shortfall(44100, None, 44100) is None  # silent: nothing to say
    assert band_shortfall(32000, 16000.0, 32000) is None  # a 32 kHz model and recording


def test_dark_voice_with_a_noise_floor_is_not_reported():
    """A voice whose harmonics fall 12 dB per octave is dark, not band-limited: its noise floor
    and upper harmonics still reach Nyquist within 80 dB of its strongest band."""
    x = voice(SR)
    spectrum = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.size, 1 / SR)
    spectrum *= 1 / np.maximum(1.0, f / 1000.0) ** 2  # -12 dB/octave above 1 kHz
    dark = np.fft.irfft(spectrum, n=x.size).astype(np.float32)
    dark += 10 ** (-70 / 20) * 0.5 * np.random.default_rng(4).standard_normal(x.size).astype(np.float32)
    edge = content_edge_hz(np.round(dark * 32767) / 32767, SR)
    assert edge is not None and band_shortfall(SR, edge, SR) is None


# -- preprocess ----------------------------------------------------------------------


def test_preprocess_names_the_8k_and_the_low_passed_recordings_only(dataset, tmp_path, caplog):
    config = write_config(tmp_path / "my.yaml", dataset)
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(main, ["preprocess", "-c", str(config), "--workers", "1"])
    assert result.exit_code == 0, result.output
    warnings = [r.getMessage() for r in caplog.records if "cannot fill the model's band" in r.getMessage()]
    assert len(warnings) == 1, warnings  # one line for train/, none for the full-band val/
    (line,) = warnings
    train_audio = (dataset / "train" / "audio").absolute()
    assert f"2 recording(s) in {train_audio}" in line
    assert "phone_8k.wav (8000 Hz recording: the model trained on it will have nothing above 4.0 kHz)" in line
    assert "mp3_lowpass_4k.wav (content stops at 4." in line
    assert "full_band.wav" not in line and "val_full" not in line
    assert "--strict" in line and "\n" not in line
    listing = dataset / "train" / BAND_LIST_NAME
    rows = [row.split("\t") for row in listing.read_text().splitlines()]
    assert [Path(path).name for path, _ in rows] == ["mp3_lowpass_4k.wav", "phone_8k.wav"]
    assert all(Path(path).is_absolute() for path, _ in rows)
    assert not (dataset / "val" / BAND_LIST_NAME).exists()
    # the summary names the list; the features of all three were still made
    assert f"2 cannot fill the model's band (list: {listing.absolute()})" in result.stdout
    assert len(list((dataset / "train" / "units").glob("*.npy"))) == 3

    # The measurements are kept: a second run measures nothing and reports the same.
    manifest = json.loads((dataset / "train" / MANIFEST_NAME).read_text())
    assert {rel: e["band"]["rate"] for rel, e in manifest["files"].items()} == {
        "full_band.wav": SR, "mp3_lowpass_4k.wav": SR, "phone_8k.wav": 8000}  # fmt: skip
    report = preprocess(load_config(config), workers=1, progress=False)
    assert [rel for rel, _ in report.splits[0].band_limited] == ["mp3_lowpass_4k.wav", "phone_8k.wav"]
    assert report.splits[0].skipped and not report.splits[0].processed

    # Replaced by full-band recordings: nothing reported, and the old list is gone.
    write_set(dataset / "train", {"phone_8k.wav": (voice(SR, seed=5), SR),
                                  "mp3_lowpass_4k.wav": (voice(SR, seed=6), SR)})  # fmt: skip
    report = preprocess(load_config(config), workers=1, progress=False)
    assert report.splits[0].band_limited == [] and not listing.exists()


def test_strict_refuses_them_in_one_line_before_any_work(dataset, tmp_path):
    config = write_config(tmp_path / "my.yaml", dataset)
    result = CliRunner().invoke(main, ["preprocess", "-c", str(config), "--strict"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    line = result.stderr
    assert line.startswith("error: --strict: recordings that cannot fill the model's band "
                           "(data.sampling_rate=44100: up to 22.05 kHz): 2 recording(s) in ")  # fmt: skip
    assert "phone_8k.wav (8000 Hz recording" in line and "mp3_lowpass_4k.wav (content stops at" in line
    assert "full_band.wav" not in line
    assert str((dataset / "train" / BAND_LIST_NAME).absolute()) in line
    assert "Traceback" not in result.output
    # Nothing extracted, for any recording.
    for split in ("train", "val"):
        assert not any((dataset / split / kind).exists() for kind in ("f0", "volume", "units"))
    # `--strict false` is the default behaviour (the MLproject passes it that way).
    result = CliRunner().invoke(main, ["preprocess", "-c", str(config), "--strict", "false", "--workers", "1"])
    assert result.exit_code == 0, result.output


def test_many_recordings_give_a_count_the_first_few_and_the_list(dataset, tmp_path):
    write_set(dataset / "train", {f"phone_{i:02d}.wav": (voice(8000, seed=10 + i), 8000) for i in range(12)})
    config = write_config(tmp_path / "my.yaml", dataset)
    with pytest.raises(AudioError) as caught:
        preprocess(load_config(config), workers=1, progress=False, strict=True)
    message = str(caught.value)
    assert "14 recording(s) in" in message and " and 11 more (all listed in " in message
    assert "mp3_lowpass_4k.wav (content stops" in message and message.count("8000 Hz recording") == 2
    assert "phone_00.wav" in message and "phone_01.wav" in message and "phone_02" not in message
    assert "\n" not in message
    rows = (dataset / "train" / BAND_LIST_NAME).read_text().splitlines()
    assert len(rows) == 14 and all("\t" in row for row in rows)
