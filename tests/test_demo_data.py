"""The synthetic demo dataset: layout, determinism, voicing, two distinct voices, errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mlflow_ddsp.audio import load_audio
from mlflow_ddsp.cli import main
from mlflow_ddsp.demo_data import DEFAULT_SECONDS_PER_SPEAKER, MIN_CLIP_SECONDS, make_demo_dataset
from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.features import extract_volume, get_f0_extractor

SR, HOP = 44100, 512


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", seconds_per_speaker=12, progress=False)


def _wavs(root, split, spk):
    return sorted((root / split / "audio" / str(spk)).glob("*.wav"))


def test_layout_and_summary(demo):
    root = demo.root
    for split in ("train", "val"):
        assert sorted(p.name for p in (root / split / "audio").iterdir()) == ["1", "2"]
    for spk in (1, 2):
        train, val = _wavs(root, "train", spk), _wavs(root, "val", spk)
        assert train == demo.files["train"][spk] and val == demo.files["val"][spk]
        assert len(train) >= 2 and len(val) == 2
        durations = [sf.info(str(p)).duration for p in train]
        assert sum(durations) == pytest.approx(12, abs=0.01)
        assert demo.seconds["train"][spk] == pytest.approx(12, abs=0.01)
        for path in train + val:
            info = sf.info(str(path))
            assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
            assert info.duration >= MIN_CLIP_SECONDS
    assert demo.n_files == sum(len(_wavs(root, s, k)) for s in ("train", "val") for k in (1, 2))
    assert any("speaker 2" in line for line in demo.lines())


def test_every_file_is_voiced_sung_audio_with_pauses(demo):
    extractor = get_f0_extractor("parselmouth", sample_rate=SR, hop_size=HOP)
    for path in (p for split in demo.files.values() for paths in split.values() for p in paths):
        audio = load_audio(path, SR)
        track = extractor.extract(audio)
        voiced = track.voiced.mean()
        assert 0.5 < voiced < 0.98, (path, voiced)  # singing, with silences between phrases
        volume_db = 20 * np.log10(extract_volume(audio, HOP) + 1e-9)
        assert volume_db.min() < -60 and volume_db.max() > -20, path  # real pauses, audible voice
        assert 0 < np.abs(audio).max() <= 1.0
        # A melody, not a held tone: the voiced pitch spans at least two semitones.
        semis = 12 * np.log2(track.f0[track.voiced])
        assert np.percentile(semis, 95) - np.percentile(semis, 5) > 2, path


def test_the_two_speakers_differ(demo):
    extractor = get_f0_extractor("parselmouth", sample_rate=SR, hop_size=HOP)

    def stats(spk):
        f0s, high = [], []
        for path in demo.files["train"][spk]:
            audio = load_audio(path, SR)
            track = extractor.extract(audio)
            f0s.append(track.f0[track.voiced])
            power = np.abs(np.fft.rfft(audio)) ** 2
            freqs = np.fft.rfftfreq(audio.size, 1 / SR)
            high.append(power[freqs > 3000].sum() / power.sum())
        return np.median(np.concatenate(f0s)), np.mean(high)

    (f0_1, bright_1), (f0_2, bright_2) = stats(1), stats(2)
    assert f0_1 > 1.6 * f0_2  # about an octave apart
    assert 250 < f0_1 < 700 and 90 < f0_2 < 260
    assert bright_1 > 3 * bright_2  # speaker 1 is brighter


def test_same_seed_same_bytes_other_seed_other_audio(tmp_path):
    a = make_demo_dataset(tmp_path / "a", seconds_per_speaker=3, seed=7, progress=False)
    b = make_demo_dataset(tmp_path / "b", seconds_per_speaker=3, seed=7, progress=False)
    c = make_demo_dataset(tmp_path / "c", seconds_per_speaker=3, seed=8, progress=False)
    rel = [p.relative_to(a.root) for split in a.files.values() for paths in split.values() for p in paths]
    assert rel == [p.relative_to(b.root) for split in b.files.values() for paths in split.values() for p in paths]
    for r in rel:
        assert (a.root / r).read_bytes() == (b.root / r).read_bytes()
        assert (a.root / r).read_bytes() != (c.root / r).read_bytes()


def test_rerun_overwrites_own_files_but_refuses_foreign_ones(tmp_path):
    first = make_demo_dataset(tmp_path / "d", seconds_per_speaker=3, seed=1, progress=False)
    again = make_demo_dataset(tmp_path / "d", seconds_per_speaker=3, seed=2, progress=False)
    assert again.files == first.files
    foreign = tmp_path / "d" / "val" / "audio" / "1" / "mine.wav"
    foreign.write_bytes(b"x")
    with pytest.raises(ConfigError, match="mine.wav"):
        make_demo_dataset(tmp_path / "d", seconds_per_speaker=3, progress=False)


def test_too_little_audio_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="seconds_per_speaker"):
        make_demo_dataset(tmp_path, seconds_per_speaker=1.0, progress=False)


def test_cli_demo_data(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["demo-data", str(tmp_path / "demo"), "--seconds-per-speaker", "3", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "speaker 1" in result.stdout and "mlflow-ddsp preprocess" in result.stdout
    assert len(list((tmp_path / "demo" / "train" / "audio" / "2").glob("*.wav"))) == 1
    help_text = runner.invoke(main, ["demo-data", "--help"]).stdout
    assert f"[default: {DEFAULT_SECONDS_PER_SPEAKER:g}]" in help_text
    bad = runner.invoke(main, ["demo-data", str(tmp_path / "x"), "--seconds-per-speaker", "1"])
    assert bad.exit_code == 2 and "seconds-per-speaker" in bad.stderr
