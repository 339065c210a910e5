"""Recordings too short for a data.duration crop are named; a speaker left with none is refused."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import soundfile as sf
import yaml
from click.testing import CliRunner

from mlflow_ddsp.cli import main
from mlflow_ddsp.crops import check_crops, min_clip_seconds
from mlflow_ddsp.errors import ConfigError

SR = 22050


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t) * np.minimum(1, t / 0.05)).astype(np.float32)


def test_upstreams_rule_is_duration_plus_a_tenth():
    assert min_clip_seconds(2.0) == pytest.approx(2.1)
    found = check_crops({"1/a.wav": 2.1, "1/b.wav": 2.09, "2/c.wav": 1.0}, 2.0, lambda rel: int(rel[0]))
    assert [rel for rel, _ in found.short] == ["1/b.wav", "2/c.wav"]
    assert found.speakers_without_crops == {2: (1, 1.0)}
    with pytest.raises(ConfigError, match=r"speaker 2 in here has no recording of at least 2.10 s"):
        found.raise_if_a_speaker_has_none("here")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Training clips: speaker 1 1.5 s and 0.3 s, speaker 2 0.6 s twice; preprocessed with data.duration 0.1."""
    root = tmp_path_factory.mktemp("short")
    for split, clips in (("train", {1: (1.5, 0.3), 2: (0.6, 0.6)}), ("val", {1: (1.0,), 2: (1.0,)})):
        for spk, lengths in clips.items():
            folder = root / split / "audio" / str(spk)
            folder.mkdir(parents=True)
            for i, seconds in enumerate(lengths):
                sf.write(folder / f"{split}_{i}.wav", tone(seconds), SR)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"f0_extractor": "parselmouth", "encoder": "logmel", "encoder_out_channels": 128,
                 "sampling_rate": SR, "block_size": 256, "duration": 0.1,
                 "train_path": str(root / "train"), "valid_path": str(root / "val")},
        "model": {"type": "CombSubFast", "n_spk": 2}, "device": "cpu",
        "train": {"batch_size": 2, "num_workers": 0, "max_steps": 1, "interval_val": 1, "interval_force_save": 1},
    }))  # fmt: skip
    result = CliRunner().invoke(main, ["preprocess", "-c", str(config), "--workers", "1"])
    assert result.exit_code == 0, result.output
    return root, config


@pytest.mark.parametrize("command", ["preprocess", "train"])
def test_a_speaker_with_only_short_clips_is_refused_in_one_line(dataset, sqlite_template, tmp_path, monkeypatch, command):
    root, config = dataset
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(sqlite_template, tmp_path / "mlflow.db")  # a migrated store: train opens it first
    argv = [command, "-c", str(config), "--set", "data.duration=1.0"]
    result = CliRunner().invoke(main, ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *argv])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error")]
    assert line.startswith("error: data.duration=1 s: speaker 2 in ") and "at least 1.10 s" in line, line
    assert "longest 0.60 s" in line and "lower data.duration" in line


@pytest.mark.parametrize("command", ["preprocess", "train"])
def test_short_clips_are_named_when_every_speaker_has_a_usable_one(dataset, caplog, command):
    """data.duration 0.45 (clips of at least 0.55 s): speaker 1's 0.3 s clip is named, nothing is refused."""
    from mlflow_ddsp.config import load_config
    from mlflow_ddsp.preprocess import preprocess
    from mlflow_ddsp.training.data import AudioDataset

    root, config = dataset
    cfg = load_config(config, ["data.duration=0.45"])
    with caplog.at_level(logging.WARNING):
        if command == "preprocess":
            preprocess(cfg, workers=1, progress=False)
        else:
            AudioDataset(root / "train", cfg, whole_audio=False, augment=False)
    (line,) = [r.getMessage() for r in caplog.records if "never trained on" in r.getMessage()]
    assert line.startswith("1 recording(s) in ") and "0.55 s" in line and line.endswith("1/train_1.wav (0.30 s)")
