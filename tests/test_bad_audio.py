"""Audio as people have it, through ``mlflow-ddsp infer``: odd but valid files convert, broken ones are one line.

Each row is a file a user might pass with ``-i``. Valid ones (stereo, 8-bit,
24-bit, float, 8 kHz, 96 kHz, silent, unicode and spaces in the name) convert
and write the output; broken ones (empty, no samples, NaN/inf, truncated, text or
random bytes named ``.wav``) exit 1 with one ``error:`` line naming the file,
print no traceback and leave no output file behind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.cli import main
from mlflow_ddsp.config import parse_config
from mlflow_ddsp.models import build_model_from_config
from mlflow_ddsp.serving.model_files import pyfunc_files

TINY = {
    "data": {"f0_extractor": "parselmouth", "sampling_rate": 44100, "block_size": 512, "duration": 0.5,
             "encoder": "logmel", "encoder_out_channels": 128},
    "model": {"type": "CombSubFast", "n_spk": 1},
    "device": "cpu",
}  # fmt: skip


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 220 * t)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


def write(path: Path, kind: str) -> None:
    if kind == "stereo":
        sf.write(path, tone(0.5, 44100, 2), 44100)
    elif kind == "8-bit":
        sf.write(path, tone(0.5, 22050), 22050, subtype="PCM_U8")
    elif kind == "24-bit":
        sf.write(path, tone(0.5, 48000), 48000, subtype="PCM_24")
    elif kind == "float":
        sf.write(path, tone(0.5, 44100), 44100, subtype="FLOAT")
    elif kind == "8 kHz":
        sf.write(path, tone(0.5, 8000), 8000)
    elif kind == "96 kHz":
        sf.write(path, tone(0.5, 96000), 96000, subtype="PCM_24")
    elif kind == "silent":
        sf.write(path, np.zeros(22050), 44100)
    elif kind == "a few samples":
        sf.write(path, tone(0.002, 44100), 44100)
    elif kind == "flac":
        sf.write(path, tone(0.5, 44100), 44100, format="FLAC")
    elif kind == "empty file":
        path.write_bytes(b"")
    elif kind == "0 samples":
        sf.write(path, np.zeros(0), 44100)
    elif kind == "NaN samples":
        audio = tone(0.5, 44100)
        audio[100] = np.nan
        sf.write(path, audio, 44100, subtype="FLOAT")
    elif kind == "inf samples":
        audio = tone(0.5, 44100)
        audio[100] = np.inf
        sf.write(path, audio, 44100, subtype="FLOAT")
    elif kind == "truncated header":
        sf.write(path, tone(0.5, 44100), 44100)
        path.write_bytes(path.read_bytes()[:30])
    elif kind == "text named .wav":
        path.write_text("these are the lyrics, not the audio\n" * 20)
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    else:
        raise AssertionError(kind)


VALID = ["stereo", "8-bit", "24-bit", "float", "8 kHz", "96 kHz", "silent", "a few samples", "flac"]
BROKEN = {
    "empty file": "cannot read audio",
    "0 samples": "empty (0 samples)",
    "NaN samples": "non-finite (NaN/inf) samples",
    "inf samples": "non-finite (NaN/inf) samples",
    "truncated header": "cannot read audio",
    "text named .wav": "cannot read audio",
    "random bytes": "cannot read audio",
}


@pytest.fixture(scope="module")
def version(tmp_path_factory, sqlite_template):
    from conftest import fresh_embedded

    backend = fresh_embedded(sqlite_template, tmp_path_factory.mktemp("bad-audio"), "bad-audio")
    cfg = parse_config(TINY)
    with CheckpointQueue("voice", 10, None, config=cfg.to_yaml(), tracking_uri=backend.uri,
                         experiment="bad-audio", extra_files=pyfunc_files()) as queue:  # fmt: skip
        queue.save(10, build_model_from_config(cfg)).result()
    return backend.uri


def infer(uri: str, source: Path, out: Path):
    return CliRunner().invoke(main, ["--tracking-uri", uri, "infer", "-m", "models:/voice/1", "-i", str(source),
                                     "-o", str(out)])  # fmt: skip


@pytest.mark.parametrize("kind", VALID)
def test_odd_but_valid_audio_converts(version, tmp_path, kind):
    source = tmp_path / "in.wav"
    write(source, kind)
    result = infer(version, source, tmp_path / "out.wav")
    assert result.exit_code == 0, result.output
    out, rate = sf.read(tmp_path / "out.wav")
    assert rate == 44100 and out.ndim == 1 and np.isfinite(out).all()
    assert abs(out.size - sf.info(source).duration * 44100) <= 512


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_audio_is_one_line_naming_the_file(version, tmp_path, kind):
    source = tmp_path / "in.wav"
    write(source, kind)
    result = infer(version, source, tmp_path / "out.wav")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), result.exception
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {source}") and BROKEN[kind] in line, line
    assert not (tmp_path / "out.wav").exists()


@pytest.mark.parametrize("name", ["Grüße aus Köln.wav", "my take 3 (final).wav", "歌.wav", "-dash.wav"])
def test_unicode_and_spaces_in_names(version, tmp_path, name):
    source = tmp_path / name
    write(source, "stereo")
    out = tmp_path / f"converted {name}"
    result = infer(version, source, out)
    assert result.exit_code == 0, result.output
    assert sf.info(out).samplerate == 44100
