"""Every version is a pyfunc model: loaded in process and served by a real `mlflow models serve`."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import mlflow
from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.config import parse_config
from mlflow_ddsp.testing.server import LocalModelServer, free_port
from mlflow_ddsp.models import build_model_from_config
from mlflow_ddsp.serving.model_files import pyfunc_files
from mlflow_ddsp.serving.resolve import load_model

from conftest import scaled_timeout

pytestmark = pytest.mark.slow

TINY = {
    "data": {"f0_extractor": "parselmouth", "sampling_rate": 44100, "block_size": 512, "duration": 0.5,
             "encoder": "logmel", "encoder_out_channels": 128},
    "model": {"type": "CombSubFast", "n_spk": 2},
    "device": "cpu",
    "train": {"interval_val": 10, "interval_force_save": 20},
}  # fmt: skip


def sung_tone(seconds: float, rate: int, f0: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * f0 * t + 0.3 * np.sin(2 * np.pi * 5 * t)
    tone = sum(np.sin(k * phase) / k for k in range(1, 10)) * 0.2
    return (tone * np.minimum(1, t / 0.05)).astype(np.float32)


def wav_b64(audio: np.ndarray, rate: int) -> str:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def registered(tmp_path_factory, sqlite_template):
    """A freshly trained (random-weight) version with its pyfunc files, in an embedded store."""
    from conftest import fresh_embedded

    backend = fresh_embedded(sqlite_template, tmp_path_factory.mktemp("serving"), "serving")
    cfg = parse_config(TINY)
    model = build_model_from_config(cfg)
    with CheckpointQueue("singer", 10, 20, config=cfg.to_yaml(), tracking_uri=backend.uri,
                         experiment="serving", extra_files=pyfunc_files()) as queue:  # fmt: skip
        queue.save(10, model).result()
        version = queue.save(20, model).result()
    return backend, version


def test_version_loads_as_pyfunc_through_an_alias(registered, caplog):
    backend, version = registered
    with caplog.at_level("WARNING"):
        model = load_model("models:/singer@rolling", tracking_uri=backend.uri)
    assert f"models:/singer@rolling resolved to models:/singer/{version.version}" in caplog.text
    request = pd.DataFrame([{"samples": sung_tone(1.0, 16000).tolist(), "sample_rate": 16000}])
    out = model.predict(request, params={"key": 3})
    assert out[0]["sample_rate"] == 44100
    assert abs(len(out[0]["samples"]) - 44100) <= 512


def test_plain_mlflow_loads_a_version_too(registered, monkeypatch):
    """What plain `mlflow models serve -m models:/NAME/7` runs: MLflow's download, our loader."""
    backend, version = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", backend.uri)
    model = mlflow.pyfunc.load_model(f"models:/singer/{version.version}")
    out = model.predict(pd.DataFrame([{"samples": sung_tone(0.5, 16000).tolist(), "sample_rate": 16000}]))
    assert out[0]["sample_rate"] == 44100


def test_loading_refuses_changed_bytes(registered, tmp_path):
    from mlflow_ddsp.errors import CheckpointIntegrityError
    from mlflow_ddsp.serving.pyfunc import load_version_dir

    backend, version = registered
    from mlflow_ddsp.serving.resolve import fetch_servable

    local = tmp_path / "copy"
    local.mkdir()
    fetch_servable(f"models:/singer/{version.version}", local, tracking_uri=backend.uri)
    assert (local / "MLmodel").is_file() and (local / "model_20.pt").is_file()
    load_version_dir(local)  # intact: loads
    data = bytearray((local / "model_20.pt").read_bytes())
    data[-100] ^= 1
    (local / "model_20.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointIntegrityError, match=r"model_20.pt is .* expected"):
        load_version_dir(local)


def post(url: str, body: str | dict) -> tuple[int, dict]:
    data = body if isinstance(body, str) else json.dumps(body)
    request = urllib.request.Request(url + "/invocations", data=data.encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=scaled_timeout(300)) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def served(registered, tmp_path_factory):
    """A real `mlflow models serve` process for the version, on 127.0.0.1."""
    backend, version = registered
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with LocalModelServer(f"models:/singer/{version.version}", backend.uri, log, startup_timeout=scaled_timeout(180),
                          env={"MLFLOW_DDSP_MAX_SECONDS": "5"}) as server:  # fmt: skip
        yield server.url


def test_http_conversion_of_a_wav(served):
    status, body = post(served, {"dataframe_records": [{"audio_base64": wav_b64(sung_tone(2.0, 22050), 22050)}],
                                "params": {"key": 2.0, "spk_id": 2}})  # fmt: skip
    assert status == 200, body
    (result,) = body["predictions"]
    audio, rate = sf.read(io.BytesIO(base64.b64decode(result["audio_base64"])))
    assert rate == result["sample_rate"] == 44100
    assert abs(len(audio) - 2 * 44100) <= 512


@pytest.mark.parametrize("form", ["inputs", "instances", "inputs-columns"])
def test_mlflows_other_request_forms_convert_too(served, form):
    clip = wav_b64(sung_tone(0.5, 16000), 16000)
    body = {"inputs-columns": {"inputs": {"audio_base64": [clip]}}}.get(form, {form: [{"audio_base64": clip}]})
    status, answer = post(served, body)
    assert status == 200, answer
    assert answer["predictions"][0]["sample_rate"] == 44100


def test_http_conversion_of_samples_matches_the_input_form(served):
    status, body = post(served, {"dataframe_records": [{"samples": sung_tone(1.0, 16000).tolist(), "sample_rate": 16000}],
                                "params": {"spk_mix": "1:0.5,2:0.5"}})  # fmt: skip
    assert status == 200, body
    (result,) = body["predictions"]
    assert "audio_base64" not in result and result["sample_rate"] == 44100
    assert abs(len(result["samples"]) - 44100) <= 512


@pytest.mark.parametrize(
    "body, message",
    [
        ({"dataframe_records": [{"audio_base64": base64.b64encode(b"not audio at all").decode()}]},
         "not a readable audio file"),
        ({"dataframe_records": [{"audio_base64": "%%%"}]}, "not valid base64"),
        ({"dataframe_records": [{"samples": [], "sample_rate": 16000}]}, "the audio is empty"),
        ('{"dataframe_records": [{"samples": [0.1, NaN], "sample_rate": 16000}]}', "NaN or infinite"),
        ({"dataframe_records": [{"samples": [0.1, 0.2]}]}, "samples need a sample_rate in 1..384000 Hz"),
        ({"dataframe_records": [{"audio_base64": wav_b64(sung_tone(1.0, 16000), 16000)}], "params": {"spk_id": 9}},
         "spk_id=9: unknown speaker id 9; ids are 1..2"),
        ({"dataframe_records": [{"samples": sung_tone(6.0, 8000).tolist(), "sample_rate": 8000}]},
         "at most 5 s (MLFLOW_DDSP_MAX_SECONDS)"),
        ({"dataframe_records": [{"samples": ["x"], "sample_rate": 16000}]}, "Array(double)"),
        ("this is not json", "valid JSON"),
        ({"dataframe_records": [{}]}, "the request has no audio: each row needs audio_base64"),
        ({"inputs": {"audio_base64": ["%%%", "%%%"]}}, "holds 2 values in one cell; send one clip per row"),
        ('{"dataframe_records": ' + "[" * 100_000 + "]" * 100_000 + "}", "the request's JSON nests too deeply"),
        ({"instances": [{"sample_rate": 16000.5, "samples": [0.1] * 20_000}]},
         "the request does not fit the model's input schema"),
    ],
)  # fmt: skip
def test_bad_payloads_get_a_4xx_and_the_server_keeps_serving(served, body, message):
    """Ours and MLflow's own refusals (not JSON, schema) alike: one line, the payload not echoed."""
    status, answer = post(served, body)
    assert 400 <= status < 500, answer
    assert message in answer.get("message", ""), answer
    assert "\n" not in answer["message"] and not answer["message"].startswith("Failed to predict"), answer
    assert len(answer["message"]) <= 300 and "stack_trace" not in answer, answer
    status, _ = post(served, {"dataframe_records": [{"samples": sung_tone(0.5, 16000).tolist(), "sample_rate": 16000}]})
    assert status == 200


@pytest.fixture
def tampered(registered):
    """A second registered model in the same store whose stored files a test may edit in place."""
    backend, _ = registered
    cfg = parse_config(TINY)
    with CheckpointQueue("tampered", 10, 20, config=cfg.to_yaml(), tracking_uri=backend.uri,
                         experiment="serving", extra_files=pyfunc_files()) as queue:  # fmt: skip
        version = queue.save(10, build_model_from_config(cfg)).result()
    location = RegistryStore(backend.uri).files_of(version).artifact_location
    stored = Path(location.removeprefix("file://"))
    assert (stored / "model_10.pt").is_file()
    yield backend, version, stored
    mlflow.MlflowClient(backend.uri).delete_registered_model("tampered")


EVIL_MODULE = "import pathlib, os\npathlib.Path(os.environ['EVIL_MARKER']).write_text('ran')\n"


@pytest.mark.parametrize("how", ["load_model", "mlflow-ddsp serve"])
def test_an_edited_mlmodel_never_runs_its_code(tampered, tmp_path, monkeypatch, how):
    from click.testing import CliRunner

    from mlflow_ddsp.cli import main
    from mlflow_ddsp.errors import CheckpointIntegrityError

    backend, version, stored = tampered
    marker = tmp_path / "evil-ran"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    (stored / "code").mkdir()
    module = f"evil_loader_{uuid.uuid4().hex}"  # a module this process has not imported yet
    (stored / "code" / f"{module}.py").write_text(EVIL_MODULE)
    mlmodel = (stored / "MLmodel").read_text()
    (stored / "MLmodel").write_text(mlmodel.replace("mlflow_ddsp.serving.pyfunc", module)
                                    .replace("python_function:", "python_function:\n    code: code", 1))  # fmt: skip
    uri = f"models:/tampered/{version.version}"
    if how == "load_model":
        with pytest.raises(CheckpointIntegrityError, match=r"MLmodel is \d+ bytes with sha256 .* expected"):
            load_model(uri, tracking_uri=backend.uri)
    else:
        result = CliRunner().invoke(main, ["--tracking-uri", backend.uri, "serve", "-m", uri, "-p", "1"])
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "MLmodel is" in lines[0], result.output
    assert not marker.exists()
    with pytest.raises(Exception):  # the edit is real: plain MLflow imports the named module, which runs
        mlflow.pyfunc.load_model(str(stored))
    assert marker.read_text() == "ran"


def test_weights_and_manifest_rewritten_together_are_refused(tampered, tmp_path):
    from mlflow_ddsp.checkpoint.files import MANIFEST_FILE, Manifest, sha256_file
    from mlflow_ddsp.errors import CheckpointIntegrityError
    from mlflow_ddsp.serving.pyfunc import load_version_dir

    backend, version, stored = tampered
    checkpoint = stored / "model_10.pt"
    data = bytearray(checkpoint.read_bytes())
    data[-100] ^= 1
    checkpoint.write_bytes(bytes(data))
    manifest = Manifest.from_json((stored / MANIFEST_FILE).read_bytes())
    manifest.files["model_10.pt"] = sha256_file(checkpoint)
    (stored / MANIFEST_FILE).write_bytes(manifest.to_json())
    load_version_dir(stored)  # consistent with itself: the version's own manifest cannot tell
    with pytest.raises(CheckpointIntegrityError, match=r"manifest.json changed since registration"):
        load_model(f"models:/tampered/{version.version}", tracking_uri=backend.uri)


@pytest.mark.parametrize("workers", [1, 2])
def test_plain_mlflow_models_serve_refuses_changed_bytes_in_one_line_of_ours(tampered, workers):
    """Plain `mlflow models serve` of a version whose weights changed: each server process states our
    reason in one line and exits, no traceback of its own (MLflow's CLI still reports the exit, after
    it); with two workers uvicorn stops instead of restarting them forever (exit status 3)."""
    backend, version, stored = tampered
    checkpoint = stored / "model_10.pt"
    data = bytearray(checkpoint.read_bytes())
    data[-100] ^= 1
    checkpoint.write_bytes(bytes(data))
    env = {**os.environ, "MLFLOW_TRACKING_URI": backend.uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/tampered/{version.version}",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(free_port()), "-w", str(workers)],
                            env=env, capture_output=True, text=True, timeout=scaled_timeout(240))  # fmt: skip
    # One worker: uvicorn exits 3 and MLflow's CLI fails. Two: uvicorn's supervisor stops its workers
    # and itself, and exits 0 (its own choice); with any other status it would restart them forever.
    assert result.returncode != 0 if workers == 1 else "Stopping parent process" in result.stderr, result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("mlflow-ddsp: ")]
    assert 1 <= len(ours) <= workers and len(set(ours)) == 1, result.stderr
    assert "model_10.pt is" in ours[0] and "expected" in ours[0], result.stderr
    server_part = result.stderr.split(ours[-1])[0]  # everything the server processes printed up to our line
    assert "Traceback" not in server_part and "CheckpointIntegrityError" not in result.stderr, result.stderr


def test_the_f0_extractor_request_param_reaches_the_network_extractors(registered):
    import importlib.util
    import os

    if importlib.util.find_spec("torchfcpe") is None and os.environ.get("CI") != "true":
        pytest.skip("torchfcpe is not installed (pip install 'mlflow-ddsp[f0]' && pip install --no-deps torchfcpe)")
    backend, _ = registered
    model = load_model("models:/singer@rolling", tracking_uri=backend.uri)
    request = pd.DataFrame([{"samples": sung_tone(1.0, 16000).tolist(), "sample_rate": 16000}])
    out = model.predict(request, params={"f0_extractor": "fcpe"})
    assert out[0]["sample_rate"] == 44100 and abs(len(out[0]["samples"]) - 44100) <= 512
    with pytest.raises(Exception, match="data.f0_ckpt: 'pretrain/rmvpe/model.pt' does not exist"):
        model.predict(request, params={"f0_extractor": "rmvpe"})
