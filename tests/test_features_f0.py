"""f0 extractors: known pitch recovered, frame grid, unvoiced interpolation, silence, registry errors."""

from __future__ import annotations

import numpy as np
import pytest

from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.features import F0Track, get_f0_extractor, interpolate_unvoiced
from mlflow_ddsp.features import f0 as f0_module

SR, HOP = 44100, 512


def _harmonic(freq, seconds, sr=SR, amp=0.3, n_harmonics=6):
    t = np.arange(int(sr * seconds)) / sr
    freq = np.broadcast_to(np.asarray(freq, dtype=np.float64), t.shape)
    phase = 2 * np.pi * np.cumsum(freq) / sr
    wave = sum(np.sin(k * phase) / k for k in range(1, n_harmonics + 1))
    return (amp * wave / 2).astype(np.float32)


def _cents(a, b):
    return 1200 * np.abs(np.log2(np.asarray(a) / np.asarray(b)))


def _extractor(name, **kw):
    try:
        return get_f0_extractor(name, sample_rate=kw.pop("sr", SR), hop_size=kw.pop("hop", HOP), **kw)
    except ConfigError as exc:
        if "needs pyworld" in str(exc):
            pytest.skip("pyworld is not installed (optional extra mlflow-ddsp[world])")
        raise


@pytest.mark.parametrize("freq", [110.0, 220.0, 523.25])
def test_parselmouth_recovers_known_pitch(freq):
    audio = _harmonic(freq, 1.0)
    track = _extractor("parselmouth").extract(audio)
    assert isinstance(track, F0Track)
    assert track.f0.shape == track.voiced.shape == (len(audio) // HOP + 1,)
    assert track.f0.dtype == np.float32 and track.voiced.dtype == bool
    assert track.voiced[3:-3].all()
    assert _cents(track.f0[3:-3], freq).max() < 5


@pytest.mark.parametrize("sr, hop", [(16000, 160), (48000, 480), (22050, 256), (44100, 512)])
@pytest.mark.parametrize("n_extra", [0, 1, 255])
def test_frame_count_matches_grid(sr, hop, n_extra):
    audio = _harmonic(200.0, 0.5, sr=sr)[: int(0.5 * sr) - 300 + n_extra]
    raw = _extractor("parselmouth", sr=sr, hop=hop).extract_raw(audio)
    assert raw.shape == (len(audio) // hop + 1,)


def test_sweep_is_tracked():
    # A 150 -> 600 Hz exponential glide over 2 s.
    seconds = 2.0
    t = np.arange(int(SR * seconds)) / SR
    freq = 150 * 4 ** (t / seconds)
    track = _extractor("parselmouth").extract(_harmonic(freq, seconds))
    expected = 150 * 4 ** (np.arange(track.f0.size) * HOP / SR / seconds)
    assert _cents(track.f0[5:-5], expected[5:-5]).max() < 15


def test_voiced_region_lands_on_its_frames():
    # 0.5 s silence, 1 s tone, 0.5 s silence: voicing must start/end within 3 frames of the edges.
    audio = np.concatenate([np.zeros(SR // 2), _harmonic(220.0, 1.0), np.zeros(SR // 2)]).astype(np.float32)
    track = _extractor("parselmouth").extract(audio)
    voiced = np.flatnonzero(track.voiced)
    start, end = SR // 2 / HOP, 1.5 * SR / HOP
    assert abs(voiced[0] - start) <= 3 and abs(voiced[-1] - end) <= 3
    # Unvoiced head/tail hold the nearest voiced value, as upstream's np.interp does.
    assert np.all(track.f0[: voiced[0]] == track.f0[voiced[0]])
    assert np.all(track.f0[voiced[-1] + 1 :] == track.f0[voiced[-1]])
    assert np.all(track.raw[~track.voiced] == 0)


def test_gap_is_filled_by_linear_interpolation():
    # Tone at 200 Hz, a 0.3 s silent gap, then 300 Hz: the gap's f0 is a straight line.
    audio = np.concatenate([_harmonic(200.0, 0.6), np.zeros(int(0.3 * SR)), _harmonic(300.0, 0.6)]).astype(
        np.float32
    )
    track = _extractor("parselmouth").extract(audio)
    gap = np.flatnonzero(~track.voiced)
    gap = gap[(gap > 5) & (gap < track.f0.size - 5)]
    assert gap.size > 10
    left, right = gap[0] - 1, gap[-1] + 1
    line = np.interp(gap, [left, right], [track.f0[left], track.f0[right]])
    np.testing.assert_allclose(track.f0[gap], line, rtol=1e-5)
    assert track.f0[left] == pytest.approx(200, rel=0.01) and track.f0[right] == pytest.approx(300, rel=0.01)


def test_interpolate_unvoiced_unit():
    f0 = np.array([0, 100, 0, 0, 200, 0], dtype=np.float32)
    np.testing.assert_allclose(
        interpolate_unvoiced(f0), [100, 100, 133.33333, 166.66667, 200, 200], rtol=1e-6
    )
    np.testing.assert_array_equal(interpolate_unvoiced(np.zeros(4)), np.zeros(4))


@pytest.mark.parametrize("name", ["parselmouth", "dio", "harvest"])
def test_silence_has_no_voiced_frame(name):
    track = _extractor(name).extract(np.zeros(SR // 2, np.float32))
    assert not track.has_voice
    assert np.all(track.f0 == 0) and track.f0.shape == (SR // 2 // HOP + 1,)


def test_white_noise_is_mostly_unvoiced():
    noise = (np.random.default_rng(0).standard_normal(SR) * 0.1).astype(np.float32)
    track = _extractor("parselmouth").extract(noise)
    assert track.voiced.mean() < 0.2


@pytest.mark.parametrize("name", ["dio", "harvest"])
def test_pyworld_extractors_recover_pitch(name):
    freq = 220.0
    audio = _harmonic(freq, 1.0)
    track = _extractor(name).extract(audio)
    assert track.f0.shape == (len(audio) // HOP + 1,)
    assert track.voiced[5:-5].mean() > 0.9
    assert np.median(_cents(track.f0[5:-5], freq)) < 10


def test_missing_pyworld_message(monkeypatch):
    monkeypatch.setattr(f0_module, "_PYWORLD", None)
    monkeypatch.setitem(__import__("sys").modules, "pyworld", None)  # makes `import pyworld` fail
    with pytest.raises(ConfigError) as info:
        get_f0_extractor("harvest", sample_rate=SR, hop_size=HOP)
    assert str(info.value) == (
        "data.f0_extractor: 'harvest' needs pyworld; pip install 'mlflow-ddsp[world]' or use 'parselmouth'"
    )


def test_unknown_extractor_names_key_value_and_allowed():
    with pytest.raises(ConfigError) as info:
        get_f0_extractor("yin", sample_rate=SR, hop_size=HOP)
    assert str(info.value) == (
        "data.f0_extractor: unknown extractor 'yin'; "
        "allowed: parselmouth, dio, harvest, fcpe, crepe, crepe-tiny, rmvpe"
    )


def test_every_upstream_name_is_registered():
    # upstream's configs/combsub.yaml: 'parselmouth', 'dio', 'harvest', 'crepe', 'rmvpe' or 'fcpe'
    assert {"parselmouth", "dio", "harvest", "crepe", "rmvpe", "fcpe"} <= set(f0_module.F0_EXTRACTORS)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(f0_min=800, f0_max=65), "data.f0_min/data.f0_max"),
        (dict(f0_min=0, f0_max=800), "data.f0_min/data.f0_max"),
        (dict(f0_max=9000, sample_rate=16000), "data.f0_max: 9000"),
        (dict(hop_size=0), "data.block_size"),
    ],
)
def test_invalid_settings_are_config_errors(kw, match):
    args = dict(sample_rate=SR, hop_size=HOP) | kw
    with pytest.raises(ConfigError, match=match):
        get_f0_extractor("parselmouth", **args)
