"""Output paths: a file the user names is overwritten; a path nothing can be written to is refused first.

Issue 20, points 10 and 13. ``infer -o out.wav`` run twice must replace out.wav
(a regression refused it as "a file, so no folder can be made below it"), and so
must every command that writes into a folder it already wrote (compare, export
--force, demo-data). A destination where nothing can be created (``/proc/...``:
even root cannot create a file there, and ``os.access`` says yes to root) is
refused in one line before anything is downloaded or converted, by every
command with an output.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.audio import save_wav
from mlflow_ddsp.cli import main
from mlflow_ddsp.config import parse_config
from mlflow_ddsp.destinations import check_output_dir, check_output_file
from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.models import build_model_from_config

SR = 44100
CONFIG = {
    "data": {"encoder": "logmel", "encoder_out_channels": 128, "sampling_rate": SR, "block_size": 512},
    "model": {"type": "CombSubFast", "n_spk": 2},
    "device": "cpu",
}
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "projects" / "demo" / "config.yaml"
UNWRITABLE = "/proc/mlflow-ddsp-nope"  # exists for no one; nothing can be created below /proc, not even by root


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.fixture
def registered(backend, model_name, tmp_path):
    """Step 10 of a tiny logmel CombSubFast registered as v1 of ``model_name``, and a 0.5 s clip."""
    cfg = parse_config(CONFIG)
    torch.manual_seed(0)
    with CheckpointQueue(model_name, 10, None, tracking_uri=backend.uri, experiment=backend.experiment,
                         config=cfg.to_yaml()) as queue:  # fmt: skip
        queue.save(10, build_model_from_config(cfg)).result()
    clip = save_wav(tmp_path / "clip.wav", _tone(0.5), SR)
    return backend, model_name, clip


def _cli(uri: str, *args: str):
    return CliRunner().invoke(main, ["--tracking-uri", uri, *args], catch_exceptions=False)


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    text = result.stderr.strip()
    assert text.startswith("error: ") and "\n" not in text and "Traceback" not in result.output, result.output
    return text


# ------------------------------------------------------------------ point 10: overwriting works


def test_check_output_file_accepts_an_existing_file(tmp_path):
    target = tmp_path / "out.wav"
    target.write_bytes(b"an earlier result")
    assert check_output_file(target) == target
    assert target.read_bytes() == b"an earlier result"  # the check writes nothing into it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]  # and leaves no probe behind


def test_check_output_dir_accepts_an_existing_folder_with_files(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "clip_v1.wav").write_bytes(b"earlier")
    assert check_output_dir(tmp_path / "out") == tmp_path / "out"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip_v1.wav"]


def test_infer_twice_overwrites_the_output(registered, tmp_path):
    backend, name, clip = registered
    target = tmp_path / "out.wav"
    target.write_bytes(b"not audio: an earlier file the user chose to replace")
    for _ in range(2):  # the second run replaces what the first one wrote
        result = _cli(backend.uri, "infer", "-m", f"models:/{name}/1", "-i", str(clip), "-o", str(target))
        assert result.exit_code == 0, result.output
        data, rate = sf.read(target)
        assert rate == SR and data.shape == (SR // 2,)


def test_compare_into_its_own_earlier_output_overwrites(registered, tmp_path):
    backend, name, clip = registered
    out = tmp_path / "cmp"
    for _ in range(2):
        result = _cli(backend.uri, "compare", name, "1", "-i", str(clip), "-o", str(out), "--no-log")
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["clip_compare.png", "clip_compare.tsv", "clip_v1.wav"]


def test_export_force_into_its_own_earlier_output_overwrites(registered, tmp_path):
    backend, name, _ = registered
    out = tmp_path / "exported"
    first = _cli(backend.uri, "export", f"models:/{name}/1", str(out))
    assert first.exit_code == 0, first.output
    again = _cli(backend.uri, "export", f"models:/{name}/1", str(out), "--force")
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model_10.pt"]


def test_compare_refuses_a_folder_where_one_of_its_files_goes_before_converting(registered, tmp_path):
    backend, name, clip = registered
    out = tmp_path / "cmp"
    (out / "clip_v1.wav").mkdir(parents=True)  # where compare writes v1's audio
    text = _one_line_error(_cli(backend.uri, "compare", name, "1", "-i", str(clip), "-o", str(out), "--no-log"))
    assert "clip_v1.wav is a folder" in text, text
    assert sorted(p.name for p in out.iterdir()) == ["clip_v1.wav"]  # nothing converted, nothing written


# ------------------------------------------------------------------ point 13: refused before the work


needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc on this system")


@needs_proc
@pytest.mark.parametrize("check", [check_output_file, check_output_dir])
def test_a_path_below_proc_is_refused_even_for_root(check, tmp_path):
    with pytest.raises(ConfigError, match=r"cannot create anything in /proc"):
        check(f"{UNWRITABLE}/x.wav")


def test_a_path_longer_than_path_max_is_refused(tmp_path):
    deep = tmp_path.joinpath(*["d" * 200] * 25, "x.wav")
    with pytest.raises(ConfigError, match=r"the path is \d+ bytes, longer than 4095 bytes"):
        check_output_file(deep)


@needs_proc
@pytest.mark.parametrize("command", ["infer", "compare", "export", "demo-data", "demo"])
def test_every_command_refuses_an_unwritable_destination_before_working(registered, tmp_path, command):
    backend, name, clip = registered
    target = f"{UNWRITABLE}/{'x.wav' if command == 'infer' else 'out'}"
    args = {
        "infer": ["infer", "-m", f"models:/{name}/1", "-i", str(clip), "-o", target],
        "compare": ["compare", name, "1", "-i", str(clip), "-o", target, "--no-log"],
        "export": ["export", f"models:/{name}/1", target],
        "demo-data": ["demo-data", target],
        "demo": ["demo", "--workdir", target, "--max-steps", "1", "--config", str(DEMO_CONFIG)],
    }[command]
    before = sorted(os.listdir(tmp_path))
    text = _one_line_error(_cli(backend.uri, *args))
    assert "cannot create anything in /proc" in text and UNWRITABLE in text, text
    assert sorted(os.listdir(tmp_path)) == before  # nothing downloaded into the folder, nothing partial
