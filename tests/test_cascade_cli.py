"""Upstream's 5.0 / 6.0 / 6.1 models through the CLI, on an embedded store and a real `mlflow-ddsp serve`.

Each test starts from the project templates (``projects/reflow``, ``projects/reflow61``,
``projects/diffusion-fast``: upstream's ``configs/reflow.yaml`` of master and 6.1 and
``configs/diffusion-fast.yaml``), changed only where a user on this CPU must:

* data paths, ``device=cpu``, the vocoder file (a random-weight NSF-HiFiGAN the tests
  write, with a narrow generator so that it renders quickly);
* the weights-free ``logmel`` encoder and parselmouth f0 (upstream's ContentVec and RMVPE
  need files nothing may download here);
* a short run: 0.5 s crops, batch 2, validation every 2 steps, a force-save every 4, and
  the velocity/denoiser network at 64 channels and 2 layers with 2 sampling steps, so a
  run takes seconds on two cores (upstream's sizes are covered by the parity tests).

``train.best_metric: null`` leaves upstream's rule alone: the registry must hold exactly
the newest checkpoint and every force-save.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import rolling_checkpoint, scaled_timeout
import soundfile as sf
import torch
from click.testing import CliRunner

from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = {"6.0": "projects/reflow/config.yaml", "6.1": "projects/reflow61/config.yaml",
             "5.0": "projects/diffusion-fast/config.yaml"}  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Synthetic two-singer recordings and a random-weight NSF-HiFiGAN (``voc/model`` + config.json)."""
    from mlflow_ddsp.demo_data import make_demo_dataset
    from mlflow_ddsp.vocoder import NsfHifiGanGenerator, default_vocoder_config, write_vocoder_config

    root = tmp_path_factory.mktemp("cascade")
    make_demo_dataset(root / "data", seconds_per_speaker=6, progress=False)
    config = dataclasses.replace(default_vocoder_config(), upsample_initial_channel=32)
    write_vocoder_config(root / "voc", config)
    torch.manual_seed(0)
    torch.save({"generator": NsfHifiGanGenerator(config).state_dict()}, root / "voc" / "model")
    # The features every template shares (same vocoder, use_pitch_aug and seed), so that a test that
    # does not preprocess can run alone.
    prep = cli("sqlite:///:memory:", "preprocess", "-c", str(ROOT / TEMPLATES["6.0"]), *overrides(root, "prep", "6.0"))
    assert prep.exit_code == 0, prep.output
    return root


def overrides(root: Path, name: str, generation: str, vocoder: Path | None = None, **extra) -> list[str]:
    sets = {
        "data.train_path": root / "data" / "train", "data.valid_path": root / "data" / "val",
        "data.f0_extractor": "parselmouth", "data.encoder": "logmel", "data.encoder_out_channels": 128,
        "data.duration": 0.5, "device": "cpu", "vocoder.ckpt": vocoder or root / "voc" / "model",
        "env.expdir": f"exp/{name}", "mlflow.experiment": f"exp-{name}", "mlflow.audio_clips": 1,
        "model.n_chans": 64, "model.n_layers": 2, "train.batch_size": 2, "train.num_workers": 0,
        "train.interval_log": 1, "train.interval_val": 2, "train.interval_force_save": 4, "train.max_steps": 6,
        "train.best_metric": "null", "train.cache_fp16": "false", "train.save_opt": "true",
        **({"infer.speedup": 5, "model.k_step_max": 10} if generation == "5.0" else {"infer.infer_step": 2}),
        **extra,
    }  # fmt: skip
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]


def cli(uri: str, *args: str) -> object:
    return CliRunner().invoke(main, ["--tracking-uri", uri, *args], catch_exceptions=False)


def kept(uri: str, name: str) -> dict[int, str]:
    """step -> kind of every version the registry holds."""
    result = cli(uri, "versions", name, "--json", "--no-verify")
    assert result.exit_code == 0, result.output
    return {row["step"]: row["kind"] for row in json.loads(result.output)}


@pytest.mark.parametrize("generation", ["6.0", "6.1", "5.0"])
def test_upstream_config_preprocess_train_infer_and_serve(workspace, tmp_path, generation, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    name = f"cascade-{generation.replace('.', '')}"
    config = str(ROOT / TEMPLATES[generation])
    sets = overrides(workspace, name, generation)
    prep = cli(uri, "preprocess", "-c", config, *sets)
    assert prep.exit_code == 0, prep.output
    assert (workspace / "data" / "train" / "mel").is_dir()
    trained = cli(uri, "train", "-c", config, *sets)
    assert trained.exit_code == 0, trained.output
    assert f"trained {name} from step 0 to 6" in trained.output
    assert kept(uri, name) == {4: "force_saved", 6: "rolling"}  # upstream's rule: newest + every force-save

    store = RegistryStore(uri)
    run_id = store.get_version(name, store.alias_version(name, "rolling")).run_id
    metrics = store.client.get_run(run_id).data.metrics
    flow_term = "diff_loss" if generation == "5.0" else "reflow_loss"
    for key in ("train/loss", "train/ddsp_loss", f"train/{flow_term}", "train/lr", "validation/loss",
                "validation/ddsp_loss", f"validation/{flow_term}", "validation/mel_mse", "validation/mel_snr",
                "validation/mel_psnr", "validation/mel_si_snr"):  # fmt: skip
        assert np.isfinite(metrics[key]), key

    clip = next((workspace / "data" / "val" / "audio").rglob("*.wav"))
    out = tmp_path / "out.wav"
    method = "ddim" if generation == "5.0" else "rk4"
    converted = cli(uri, "infer", "-m", f"models:/{name}@rolling", "-i", str(clip), "-o", str(out),
                    "--method", method, "--seed", "1", "--formant-shift", "1")  # fmt: skip
    assert converted.exit_code == 0, converted.output
    audio, rate = sf.read(out)
    assert rate == 44100 and abs(len(audio) - sf.info(clip).frames * 44100 / sf.info(clip).samplerate) <= 1
    assert np.isfinite(audio).all() and np.abs(audio).max() > 1e-4
    again = tmp_path / "again.wav"
    cli(uri, "infer", "-m", f"models:/{name}@rolling", "-i", str(clip), "-o", str(again), "--method", method,
        "--seed", "1", "--formant-shift", "1")  # fmt: skip
    assert again.read_bytes() == out.read_bytes()  # the same seed, the same conversion

    bad = cli(uri, "infer", "-m", f"models:/{name}@rolling", "-i", str(clip), "-o", str(tmp_path / "x.wav"),
              "--method", "euler" if generation == "5.0" else "dpm-solver")  # fmt: skip
    assert bad.exit_code != 0 and "is not a" in bad.output and "sampler; allowed" in bad.output
    assert not (tmp_path / "x.wav").exists()

    version = store.alias_version(name, "rolling")
    compared = cli(uri, "compare", name, str(version - 1), str(version), "-i", str(clip), "-o", str(tmp_path / "cmp"),
                   "--no-log")  # fmt: skip
    assert compared.exit_code == 0, compared.output
    assert (tmp_path / "cmp" / f"{clip.stem}_v{version}.wav").is_file()

    from mlflow_ddsp.testing.server import LocalModelServer

    with LocalModelServer(f"models:/{name}/{version}", uri, tmp_path / "serve.log",
                          startup_timeout=scaled_timeout(180)) as server:
        tone, sr = sf.read(clip, dtype="float32")
        buffer = io.BytesIO()
        sf.write(buffer, tone, sr, format="WAV", subtype="PCM_16")
        body = {"dataframe_records": [{"audio_base64": base64.b64encode(buffer.getvalue()).decode()}],
                "params": {"method": method, "formant_shift": 1.0}}  # fmt: skip
        request = urllib.request.Request(server.url + "/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=scaled_timeout(300)) as response:
            (prediction,) = json.loads(response.read())["predictions"]
    served, served_rate = sf.read(io.BytesIO(base64.b64decode(prediction["audio_base64"])))
    assert served_rate == 44100 and abs(len(served) - len(audio)) <= 1 and np.abs(served).max() > 1e-4


def test_training_without_vocoder_weights_validates_with_the_ddsp_stage(workspace, tmp_path, monkeypatch, caplog):
    """Upstream needs only config.json to train and crashes at the first validation without the weights."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "voc").mkdir()
    (tmp_path / "voc" / "config.json").write_bytes((workspace / "voc" / "config.json").read_bytes())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = overrides(workspace, "noweights", "6.0", vocoder=tmp_path / "voc" / "model")
    with caplog.at_level("WARNING"):
        trained = cli(uri, "train", "-c", str(ROOT / TEMPLATES["6.0"]), *sets)
    assert trained.exit_code == 0, trained.output
    said = [r.getMessage() for r in caplog.records if "no vocoder weights" in r.getMessage()]
    assert len(said) == 1 and str(tmp_path / "voc" / "model") in said[0]
    assert kept(uri, "noweights") == {4: "force_saved", 6: "rolling"}
    clip = str(next((workspace / "data" / "val" / "audio").rglob("*.wav")))
    converted = cli(uri, "infer", "-m", "models:/noweights@rolling", "-i", clip, "-o", str(tmp_path / "o.wav"))
    assert converted.exit_code != 0 and "NSF-HiFiGAN" in converted.output and "--vocoder-ckpt" in converted.output
    assert not (tmp_path / "o.wav").exists()
    # the weights on this machine, named by the environment (as a serving box would)
    monkeypatch.setenv("MLFLOW_DDSP_VOCODER_CKPT", str(workspace / "voc" / "model"))
    converted = cli(uri, "infer", "-m", "models:/noweights@rolling", "-i", clip, "-o", str(tmp_path / "o.wav"))
    assert converted.exit_code == 0, converted.output
    assert (tmp_path / "o.wav").is_file()


def test_a_vocoder_of_another_rate_is_refused_before_any_work(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "voc").mkdir()
    config = json.loads((workspace / "voc" / "config.json").read_text())
    (tmp_path / "voc" / "config.json").write_text(json.dumps({**config, "sampling_rate": 24000}))
    sets = overrides(workspace, "otherrate", "6.0", vocoder=tmp_path / "voc" / "model")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = cli(uri, "train", "-c", str(ROOT / TEMPLATES["6.0"]), *sets)
    assert result.exit_code != 0
    assert "sampling_rate=24000" in result.output and "data.sampling_rate=44100" in result.output
    # refused before a run or a registered model exists
    if (tmp_path / "mlflow.db").exists():
        store = RegistryStore(uri)
        assert store.client.search_registered_models() == []
        assert store.client.search_runs([e.experiment_id for e in store.client.search_experiments()]) == []


def test_a_killed_reflow_training_resumes_bit_identical(workspace, tmp_path):
    """SIGKILLed once the checkpoint of step 3 is in the spool, started again: the same weights,
    optimizer moments and step as an uninterrupted run (data order, mel augmentation choice,
    flow noise and t draws, the lr schedule all continue)."""
    name = "reflow-resume"
    sets = overrides(workspace, name, "6.0", **{"train.interval_val": 3, "train.interval_force_save": 6,
                                                "train.max_steps": 7, "train.decay_step": 2})  # fmt: skip
    command = [str(Path(sys.executable).with_name("mlflow-ddsp")), "train", "-c", str(ROOT / TEMPLATES["6.0"]), *sets]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_DDSP_")}

    def train(folder: str, crash: str | None = None) -> subprocess.CompletedProcess:
        (tmp_path / folder).mkdir(exist_ok=True)
        extra = {"MLFLOW_DDSP_CRASH_AT": crash} if crash else {}
        return subprocess.run(command, cwd=tmp_path / folder, env={**env, **extra}, capture_output=True, text=True,
                              timeout=scaled_timeout(900))  # fmt: skip

    first = train("uninterrupted")
    assert first.returncode == 0, first.stderr[-2000:]
    killed = train("resumed", crash="after_spool@3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    again = train("resumed")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"trained {name} from step 3 to 7" in again.stdout

    a = rolling_checkpoint(f"sqlite:///{tmp_path / 'uninterrupted' / 'mlflow.db'}", name)
    b = rolling_checkpoint(f"sqlite:///{tmp_path / 'resumed' / 'mlflow.db'}", name)
    assert a["global_step"] == b["global_step"] == 7
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for index, moments in a["optimizer"]["state"].items():
        assert torch.equal(moments["exp_avg"], b["optimizer"]["state"][index]["exp_avg"])
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"] == 2e-4 * 0.5 ** 2


def test_init_from_a_pretrained_model_0_pt_then_resume_from_its_own(workspace, tmp_path, monkeypatch):
    """Upstream's convention: model_0.pt is the starting point while nothing newer exists."""
    from mlflow_ddsp.config import load_config
    from mlflow_ddsp.models import build_model_from_config

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = overrides(workspace, "finetuned", "6.0", **{"train.max_steps": 2})
    cfg = load_config(ROOT / TEMPLATES["6.0"], [s for s in sets if s != "--set"])
    torch.manual_seed(5)
    pretrained = build_model_from_config(cfg)
    state = {k: v.clone() for k, v in pretrained.state_dict().items()}
    state["some.upstream.extra"] = torch.zeros(3)  # tolerated, as upstream loads non-strictly
    torch.save({"global_step": 0, "model": state}, tmp_path / "model_0.pt")

    started = cli(uri, "train", "-c", str(ROOT / TEMPLATES["6.0"]), *sets, "--init-from", str(tmp_path / "model_0.pt"))
    assert started.exit_code == 0, started.output
    assert "trained finetuned from step 0 to 2" in started.output
    store = RegistryStore(uri)
    run = store.client.get_run(store.get_version("finetuned", store.alias_version("finetuned", "rolling")).run_id)
    assert run.data.tags["mlflow_ddsp.pretrained.file"] == str(tmp_path / "model_0.pt")
    assert len(run.data.tags["mlflow_ddsp.pretrained.sha256"]) == 64

    later = cli(uri, "train", "-c", str(ROOT / TEMPLATES["6.0"]), *sets, "--set", "train.max_steps=4",
                "--init-from", str(tmp_path / "model_0.pt"))  # fmt: skip
    assert later.exit_code == 0, later.output
    assert "trained finetuned from step 2 to 4" in later.output

    missing = cli(uri, "train", "-c", str(ROOT / TEMPLATES["6.0"]), *sets, "--init-from", "nope/model_0.pt")
    assert missing.exit_code != 0 and "--init-from 'nope/model_0.pt': no such file" in missing.output

    state["ddsp_model.unit2ctrl.stack.0.weight"] = torch.zeros(256, 64, 3)  # upstream #111: a shape that does not fit
    torch.save({"global_step": 0, "model": state}, tmp_path / "bad_0.pt")
    bad = cli(uri, "train", "-c", str(ROOT / TEMPLATES["6.0"]), *sets, "--set", "mlflow.registered_model=other",
              "--init-from", str(tmp_path / "bad_0.pt"))  # fmt: skip
    assert bad.exit_code != 0 and "data.encoder_out_channels" in bad.output


@pytest.mark.parametrize("generation", ["6.0", "6.1", "5.0"])
def test_import_and_export_of_an_upstream_folder_round_trip_byte_identically(workspace, tmp_path, generation,
                                                                             monkeypatch):  # fmt: skip
    from mlflow_ddsp.config import load_config
    from mlflow_ddsp.models import build_model_from_config

    monkeypatch.chdir(tmp_path)
    sets = overrides(workspace, "imported", generation)
    cfg = load_config(ROOT / TEMPLATES[generation], [s for s in sets if s != "--set"])
    exp = tmp_path / "exp" / "upstream"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_bytes(cfg.to_yaml())
    for step in (2000, 4000):
        torch.manual_seed(step)
        torch.save({"global_step": step, "model": build_model_from_config(cfg).state_dict()}, exp / f"model_{step}.pt")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    imported = cli(uri, "import", str(exp), "--name", "imported")
    assert imported.exit_code == 0, imported.output
    exported = cli(uri, "export", "models:/imported@rolling", str(tmp_path / "out"))
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "out" / "model_4000.pt").read_bytes() == (exp / "model_4000.pt").read_bytes()
    assert (tmp_path / "out" / "config.yaml").read_bytes() == (exp / "config.yaml").read_bytes()
