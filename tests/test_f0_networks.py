"""fcpe and crepe f0 extractors: the pip libraries' bundled weights, on our frame grid.

- accuracy on synthetic singing whose f0 is known (``synthesize_sung_clip``);
- every extractor returns ``T // hop + 1`` frames at several rates and hops;
- parity: our extractors equal upstream DDSP-SVC's recipe (``ddsp/vocoder.py``
  ``F0_Extractor``) written out here on top of the libraries' own entry points;
- importing: with torchaudio broken (this machine: torch 2.13 has no torchaudio) and
  with a working torchaudio, in fresh interpreters; a missing library is one line.

torchfcpe/torchcrepe come with ``pip install 'mlflow-ddsp[f0]' && pip install
--no-deps torchfcpe torchcrepe`` (``.ci/run`` does it); without them these tests
skip locally and fail in CI.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlflow_ddsp.audio import resample
from mlflow_ddsp.demo_data import VOICES, synthesize_sung_clip
from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.features import f0 as f0_module
from mlflow_ddsp.features import get_f0_extractor
from mlflow_ddsp.features.f0 import masked_mean_pool, median_pool, onto_frame_grid
from mlflow_ddsp.features.pitch_libraries import INSTALL_HINT, import_pitch_library

from conftest import scaled_timeout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SR, HOP = 44100, 512


def _need(library: str) -> None:
    if importlib.util.find_spec(library) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{library} is not installed; .ci/run installs it ({INSTALL_HINT})")
        pytest.skip(f"{library} is not installed ({INSTALL_HINT})")


@pytest.fixture(scope="module")
def soprano():
    return synthesize_sung_clip(3.0, VOICES[1], np.random.default_rng(1), SR, HOP)


@pytest.fixture(scope="module")
def baritone():
    return synthesize_sung_clip(3.0, VOICES[2], np.random.default_rng(2), SR, HOP)


def _rpa(clip, raw):
    """Raw pitch accuracy: reference-voiced frames called voiced within 50 cents."""
    ok = (raw > 0) & clip.voiced
    cents = 1200 * np.abs(np.log2(np.where(ok, raw, 1.0) / clip.f0))
    return float((ok & (cents <= 50)).sum() / clip.voiced.sum())


def _extractor(name, sr=SR, hop=HOP, **kw):
    _need("torchfcpe" if name == "fcpe" else "torchcrepe")
    return get_f0_extractor(name, sample_rate=sr, hop_size=hop, **kw)


# ------------------------------------------------------------------ accuracy


@pytest.mark.parametrize("voice", ["soprano", "baritone"])
def test_fcpe_tracks_synthetic_singing(voice, request):
    clip = request.getfixturevalue(voice)
    track = _extractor("fcpe").extract(clip.audio)
    assert track.f0.shape == track.voiced.shape == (clip.audio.size // HOP + 1,)
    assert _rpa(clip, track.raw) >= 0.9
    assert track.voiced[~clip.voiced].mean() < 0.35  # pauses and inhales mostly unvoiced


def test_crepe_tiny_tracks_synthetic_singing(soprano):
    track = _extractor("crepe-tiny").extract(soprano.audio)
    assert track.f0.shape == (soprano.audio.size // HOP + 1,)
    assert _rpa(soprano, track.raw) >= 0.8  # tiny is the weaker model (0.86 here; fcpe 0.99)


@pytest.mark.parametrize("name", ["fcpe", "crepe-tiny"])
@pytest.mark.parametrize("sr, hop, n", [(16000, 160, 16000 - 7), (48000, 480, 24000 + 479), (22050, 256, 300)])
def test_frame_count_matches_grid(name, sr, hop, n):
    audio = synthesize_sung_clip(2.0, VOICES[1], np.random.default_rng(0), sr, hop).audio[:n]
    assert _extractor(name, sr=sr, hop=hop).extract_raw(audio).shape == (n // hop + 1,)


@pytest.mark.slow
def test_crepe_full_frame_count_on_a_short_clip():
    # Full CREPE is ~100x slower than tiny on a CPU: shape only, on 0.2 s.
    audio = synthesize_sung_clip(2.0, VOICES[1], np.random.default_rng(0), SR, HOP).audio[SR // 2 : SR // 2 + SR // 5]
    raw = _extractor("crepe").extract_raw(audio)
    assert raw.shape == (audio.size // HOP + 1,) and np.isfinite(raw).all()


@pytest.mark.parametrize("name", ["fcpe", "crepe-tiny"])
def test_silence_is_unvoiced(name):
    track = _extractor(name).extract(np.zeros(SR // 2, np.float32))
    assert not track.has_voice and track.f0.shape == (SR // 2 // HOP + 1,)


# ------------------------------------------------------------------ parity with upstream's recipe


def _upstream_grid(f0, n_frames, sample_rate, hop):
    """Upstream's fcpe/rmvpe post-processing (``ddsp/vocoder.py``), written out."""
    f0 = np.array(f0, dtype=np.float64)
    uv = f0 == 0
    if len(f0[~uv]) > 0:
        f0[uv] = np.interp(np.where(uv)[0], np.where(~uv)[0], f0[~uv])
    origin_time = 0.01 * np.arange(len(f0))
    target_time = hop / sample_rate * np.arange(n_frames)
    f0 = np.interp(target_time, origin_time, f0)
    uv = np.interp(target_time, origin_time, uv.astype(float)) > 0.5
    f0[uv] = 0
    return f0


def _torch_median_pool(x, k):
    x = F.pad(x.unsqueeze(1), ((k - 1) // 2, k // 2), mode="reflect").squeeze(1)
    return torch.sort(x.unfold(1, k, 1), dim=-1)[0][:, :, (k - 1) // 2]


def _torch_masked_avg_pool(x, k):
    x = F.pad(x.unsqueeze(1), ((k - 1) // 2, k // 2), mode="reflect")
    mask = ~torch.isnan(x)
    ones = torch.ones(1, 1, k, dtype=x.dtype)
    total = F.conv1d(torch.where(mask, x, torch.zeros_like(x)), ones)
    count = F.conv1d(mask.to(x.dtype), ones).clamp(min=1)
    return (total / count).squeeze(1)


def test_fcpe_equals_the_library_with_upstreams_settings(soprano):
    _need("torchfcpe")
    torchfcpe = import_pitch_library("torchfcpe", "fcpe")

    audio = soprano.audio
    wav16 = torch.from_numpy(resample(audio, SR, 16000))[None]
    model = torchfcpe.spawn_bundled_infer_model(device="cpu")  # a fresh load of the bundled file
    f0 = model(wav16, sr=16000, decoder_mode="local_argmax", threshold=0.006).squeeze().numpy()
    expected = _upstream_grid(f0, audio.size // HOP + 1, SR, HOP)
    ours = _extractor("fcpe").extract_raw(audio)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-3)
    assert (ours > 0).sum() > 0.5 * ours.size


def test_crepe_tiny_equals_the_library_with_upstreams_settings(soprano):
    _need("torchcrepe")
    torchcrepe = import_pitch_library("torchcrepe", "crepe")

    audio = soprano.audio[: SR]
    wav16 = torch.from_numpy(resample(audio, SR, 16000))[None]
    np.random.seed(0)  # torchcrepe dithers its pitch with numpy's global RNG; the extractor seeds it with 0
    f0, pd = torchcrepe.predict(wav16, 16000, 80, 65.0, 800.0, pad=True, model="tiny", batch_size=512,
                                device="cpu", return_periodicity=True)  # fmt: skip
    pd = _torch_median_pool(pd, 4)
    f0 = _torch_masked_avg_pool(torchcrepe.threshold.At(0.05)(f0, pd), 4).squeeze(0).numpy()
    n_frames = audio.size // HOP + 1
    expected = np.array([f0[min(int(np.round(n * HOP / SR / 0.005)), len(f0) - 1)] for n in range(n_frames)])
    ours = _extractor("crepe-tiny").extract_raw(audio)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(_extractor("crepe-tiny").extract_raw(audio), ours)  # deterministic
    assert (ours > 0).sum() > 0.5 * ours.size


def test_pools_match_upstreams_torch_versions():
    rng = np.random.default_rng(0)
    x = rng.uniform(50, 500, 37)
    x[[0, 5, 6, 7, 8, 20, 36]] = np.nan
    np.testing.assert_allclose(masked_mean_pool(x, 4), _torch_masked_avg_pool(torch.from_numpy(x)[None], 4)[0].numpy())
    y = rng.uniform(0, 1, 37)
    np.testing.assert_array_equal(median_pool(y, 4), _torch_median_pool(torch.from_numpy(y)[None], 4)[0].numpy())
    assert masked_mean_pool(np.full(6, np.nan), 4).tolist() == [0.0] * 6


def test_onto_frame_grid_is_upstreams_rule():
    f0 = np.array([0, 0, 200, 210, 0, 0, 0, 230, 240, 0], dtype=np.float64)
    for sr, hop in [(44100, 512), (16000, 160), (48000, 256)]:
        n = int(0.1 * sr) // hop + 1
        np.testing.assert_array_equal(onto_frame_grid(f0, 0.01, n, hop / sr), _upstream_grid(f0, n, sr, hop))


# ------------------------------------------------------------------ importing


def _run(code: str, pythonpath: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath + [REPO]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=scaled_timeout(300), cwd=REPO)  # fmt: skip


_IMPORT_AND_RUN = """
    import sys, numpy as np
    from mlflow_ddsp.features import get_f0_extractor
    t = np.arange(16000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    raw = get_f0_extractor("fcpe", sample_rate=16000, hop_size=160).extract_raw(audio)
    assert raw.shape == (101,), raw.shape
    assert abs(np.median(raw[10:-10]) - 220) < 5, np.median(raw[10:-10])
    get_f0_extractor("crepe-tiny", sample_rate=16000, hop_size=160)  # imports torchcrepe
    import torchcrepe.load, torchfcpe.mel_extractor
    ta = sys.modules.get("torchaudio")
    print("torchaudio in sys.modules:", ta is not None, getattr(ta, "MARK", None))
    print("torchcrepe.load.torchaudio:", (torchcrepe.load.torchaudio.__doc__ or "real")[:11])
    print("Resample from:", torchfcpe.mel_extractor.Resample.__module__)
"""


def test_libraries_run_where_torchaudio_is_broken(tmp_path):
    # A torchaudio whose import fails the way a mismatched build does (its C++ extension does not load).
    _need("torchfcpe"), _need("torchcrepe")
    (tmp_path / "torchaudio").mkdir()
    (tmp_path / "torchaudio" / "__init__.py").write_text("raise OSError('Could not load this library: _torchaudio.so')\n")
    result = _run(_IMPORT_AND_RUN, [str(tmp_path)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torchaudio in sys.modules: False" in result.stdout  # the placeholder did not stay behind
    assert "torchcrepe.load.torchaudio: placeholder" in result.stdout
    assert "Resample from: mlflow_ddsp.features.pitch_libraries" in result.stdout


def test_libraries_use_a_working_torchaudio_as_they_are(tmp_path):
    _need("torchfcpe"), _need("torchcrepe")
    (tmp_path / "torchaudio").mkdir()
    (tmp_path / "torchaudio" / "__init__.py").write_text("MARK = 'real'\nfrom . import transforms\n")
    (tmp_path / "torchaudio" / "transforms.py").write_text("class Resample:\n    pass\n")
    result = _run(_IMPORT_AND_RUN, [str(tmp_path)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torchaudio in sys.modules: True real" in result.stdout
    assert "torchcrepe.load.torchaudio: real" in result.stdout and "Resample from: torchaudio.transforms" in result.stdout


def test_placeholder_says_why_when_called():
    _need("torchfcpe")
    _extractor("fcpe")
    import torchfcpe.mel_extractor as mel_extractor

    if getattr(mel_extractor.Resample, "__module__", "").startswith("torchaudio"):
        pytest.skip("torchaudio imports here; the library uses it as it is")
    with pytest.raises(RuntimeError, match="torchaudio.transforms.Resample was called, but torchaudio does not import"):
        mel_extractor.Resample(44100, 16000)


@pytest.mark.parametrize("name, library", [("fcpe", "torchfcpe"), ("crepe", "torchcrepe"), ("crepe-tiny", "torchcrepe")])
def test_missing_library_is_one_line(monkeypatch, name, library):
    monkeypatch.setattr(f0_module, "_MODELS", {})
    monkeypatch.setitem(sys.modules, library, None)  # makes find_spec report it missing
    with pytest.raises(ConfigError) as info:
        get_f0_extractor(name, sample_rate=SR, hop_size=HOP)
    assert str(info.value) == f"data.f0_extractor: {name!r} needs {library}; {INSTALL_HINT}"
