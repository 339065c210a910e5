"""One refusal for every device request this machine cannot meet, in every command and in serving."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from click.testing import CliRunner

from mlflow_ddsp.cli import main
from mlflow_ddsp.device import available_devices, resolve_device
from mlflow_ddsp.errors import ConfigError, DeviceError

# Requests no test machine meets: cuda on a CPU-only torch, a GPU index beyond any machine's, no MPS, nonsense.
UNMET = [
    *([] if torch.cuda.is_available() else ["cuda", "cuda:0"]),
    "cuda:99",
    *([] if torch.backends.mps.is_available() else ["mps"]),
    "tpu",
    "gpu0",
]


def test_auto_and_cpu_always_resolve_to_an_available_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert str(resolve_device("auto")) in {*available_devices(), "cuda"}
    assert resolve_device(None) == resolve_device("auto")


@pytest.mark.parametrize("request_", UNMET)
def test_unmet_request_is_one_line_naming_it_and_what_is_available(request_):
    with pytest.raises(DeviceError) as info:
        resolve_device(request_, setting="--device")
    message = str(info.value)
    assert "\n" not in message and f"--device={request_!r}" in message
    assert "cpu" in message  # what to use instead
    assert isinstance(info.value, ConfigError)  # callers catching ValueError/ConfigError still catch it


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A config and a clip; no store, no model: a device refusal must come before either is needed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_DDSP_DEVICE", raising=False)
    sf.write(tmp_path / "clip.wav", np.zeros(4410, np.float32), 44100)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "data": {"f0_extractor": "parselmouth", "encoder": "logmel", "encoder_out_channels": 128,
                 "train_path": str(tmp_path / "train"), "valid_path": str(tmp_path / "val")},
        "model": {"n_spk": 2}, "device": "cpu",
    }))  # fmt: skip
    return tmp_path


COMMANDS = {
    "infer": lambda d: (["infer", "-m", "models:/singer/1", "-i", "clip.wav", "-o", "out.wav", "--device", d], {}, "--device"),
    "compare": lambda d: (["compare", "singer", "1", "-i", "clip.wav", "-o", "cmp", "--device", d], {}, "--device"),
    "serve": lambda d: (["serve", "-m", "models:/singer/1", "--device", d], {}, "--device"),
    "serve (env)": lambda d: (["serve", "-m", "models:/singer/1"], {"MLFLOW_DDSP_DEVICE": d}, "MLFLOW_DDSP_DEVICE"),
    "train": lambda d: (["train", "-c", "config.yaml", "--set", f"device={d}"], {}, "device"),
    "preprocess": lambda d: (["preprocess", "-c", "config.yaml", "--set", f"device={d}"], {}, "device"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("request_", ["cuda:99", UNMET[0], "tpu"])
def test_every_command_refuses_an_unmet_device_in_one_line(workspace, command, request_):
    argv, env, setting = COMMANDS[command](request_)
    result = CliRunner().invoke(main, ["--tracking-uri", f"sqlite:///{workspace}/mlflow.db", *argv], env=env)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    if request_ == "tpu" and setting == "device":  # a config value: rejected when the config is read
        assert "device='tpu' must be auto, cpu, cuda, cuda:N or mps" in lines[0]
    else:
        assert f"{setting}={request_!r}" in lines[0]
    # refused before anything was made: no store, no output, no run
    assert not (workspace / "mlflow.db").exists() and not (workspace / "out.wav").exists()
    assert not (workspace / "cmp").exists() and not (workspace / "mlruns").exists()


def test_serving_load_refuses_an_unmet_device_before_loading(tmp_path, monkeypatch):
    from mlflow_ddsp.serving.pyfunc import _load_pyfunc

    monkeypatch.setenv("MLFLOW_DDSP_DEVICE", UNMET[0])
    with pytest.raises(DeviceError, match=rf"^MLFLOW_DDSP_DEVICE={UNMET[0]!r}: .*available: cpu"):
        _load_pyfunc(str(tmp_path))  # an empty folder: the device is checked first
