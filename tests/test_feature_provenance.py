"""Preprocess records the sha256 of the networks that made the features; training checks them (issue 21, point 2).

The encoder files are tiny random-weight HuBERT-Soft checkpoints written here the way
tests/test_encoders.py writes them: two seeds give two files of the same architecture
(each loads into the same network) with different bytes, the swap the digests exist to catch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from click.testing import CliRunner

from mlflow_ddsp import weights
from mlflow_ddsp.audio import save_wav
from mlflow_ddsp.cli import main
from mlflow_ddsp.config import load_config
from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.preprocess import MANIFEST_NAME, preprocess
from mlflow_ddsp.training.data import FeatureProvenance, check_recordings
from mlflow_ddsp.weights import Dependency, feature_dependencies

from test_band_limited_input import voice
from test_encoders import TINY_SOFT, _write_hubert_soft
from test_rmvpe import TINY as TINY_RMVPE
from test_rmvpe import _random_state as rmvpe_state

SR = 44100
SPLITS = ("train", "val")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def data(tmp_path) -> Path:
    root = tmp_path / "data"
    for i, f0 in enumerate((200.0, 240.0)):
        save_wav(root / "train" / "audio" / f"a{i}.wav", voice(SR, 1.0, f0, seed=i), SR)
    save_wav(root / "val" / "audio" / "v.wav", voice(SR, 0.8, 220.0, seed=9), SR)
    return root


@pytest.fixture
def encoder(tmp_path) -> Path:
    path = tmp_path / "pretrain" / "hubert" / "hubert-soft.pt"
    path.parent.mkdir(parents=True)
    _write_hubert_soft(path, seed=1)
    return path


def write_config(path: Path, data: Path, encoder_ckpt: Path, **extra) -> Path:
    doc = {
        "data": {"f0_extractor": "parselmouth", "sampling_rate": SR, "block_size": 512, "duration": 0.5,
                 "encoder": "hubertsoft", "encoder_out_channels": TINY_SOFT.n_units, "encoder_ckpt": str(encoder_ckpt),
                 "train_path": str(data / "train"), "valid_path": str(data / "val"), **extra},
        "model": {"type": "CombSubFast", "n_spk": 1},
        "device": "cpu",
        "train": {"batch_size": 2, "num_workers": 0, "max_steps": 2, "interval_val": 2, "interval_force_save": 2},
        "mlflow": {"experiment": "provenance", "audio_clips": 1},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return path


def manifests(data: Path) -> dict[str, dict]:
    return {split: json.loads((data / split / MANIFEST_NAME).read_text()) for split in SPLITS}


@pytest.fixture
def prepared(data, encoder, tmp_path):
    """The dataset preprocessed with ``encoder``; the config naming it."""
    config = write_config(tmp_path / "config.yaml", data, encoder)
    assert preprocess(load_config(config), workers=1, progress=False).ok
    return config


@pytest.fixture
def hashed(monkeypatch) -> list[Path]:
    """Every weight file sha256_of reads, in order (the helper itself still runs)."""
    seen: list[Path] = []
    real = weights.sha256_of

    def counting(path, *args, **kwargs):
        seen.append(Path(path).resolve())
        return real(path, *args, **kwargs)

    monkeypatch.setattr(weights, "sha256_of", counting)
    return seen


def test_preprocess_records_each_weight_files_digest_and_role_beside_the_cache_key(data, encoder, prepared):
    st = encoder.stat()
    expected = {"role": "encoder", "sha256": sha256(encoder), "size": st.st_size, "path": str(encoder.resolve()),
                "mtime_ns": st.st_mtime_ns}  # fmt: skip
    for split, manifest in manifests(data).items():
        assert "settings_digest" in manifest, split
        assert manifest["dependencies"] == [expected], split  # parselmouth: no f0 file

    # Training gets them as a typed record (the checkpoint manifest will carry them).
    provenance = check_recordings(load_config(prepared))
    assert isinstance(provenance, FeatureProvenance) and provenance.checked
    assert provenance.dependencies == (Dependency("encoder", sha256(encoder), st.st_size, str(encoder.resolve()),
                                                  st.st_mtime_ns),)  # fmt: skip
    assert provenance.get("encoder").sha256 == sha256(encoder) and provenance.get("f0") is None


def test_the_f0_network_file_is_a_dependency_and_parselmouth_has_none(data, encoder, tmp_path):
    rmvpe = tmp_path / "pretrain" / "rmvpe" / "model.pt"
    rmvpe.parent.mkdir(parents=True)
    torch.save({"model": rmvpe_state(TINY_RMVPE)}, rmvpe)
    cfg = load_config(write_config(tmp_path / "r.yaml", data, encoder, f0_extractor="rmvpe", f0_ckpt=str(rmvpe)))
    deps = feature_dependencies(cfg)
    assert [(d.role, d.sha256, d.path) for d in deps] == [
        ("encoder", sha256(encoder), str(encoder.resolve())), ("f0", sha256(rmvpe), str(rmvpe.resolve()))]
    plain = load_config(write_config(tmp_path / "p.yaml", data, encoder))
    assert [d.role for d in feature_dependencies(plain)] == ["encoder"]
    logmel = load_config(write_config(tmp_path / "l.yaml", data, encoder, encoder="logmel", encoder_out_channels=128))
    assert feature_dependencies(logmel) == []


def test_fcpe_depends_on_the_weights_its_wheel_ships(data, encoder, tmp_path):
    spec = importlib.util.find_spec("torchfcpe")  # not imported: it needs torchaudio, which the f0 extra lacks here
    if spec is None:
        pytest.skip("torchfcpe is not installed")
    bundled = Path(spec.origin).parent / "assets" / "fcpe_c_v001.pt"
    assert bundled.is_file()
    cfg = load_config(write_config(tmp_path / "f.yaml", data, encoder, f0_extractor="fcpe"))
    (f0,) = [d for d in feature_dependencies(cfg) if d.role == "f0"]
    assert f0.path == str(bundled.resolve()) and f0.sha256 == sha256(bundled)


def test_training_refuses_features_made_by_another_encoder_file_in_one_line(data, encoder, prepared, tmp_path,
                                                                            sqlite_template, monkeypatch):  # fmt: skip
    made_by = sha256(encoder)
    # Another file of the same architecture, named by the config instead.
    other = tmp_path / "other-soft.pt"
    _write_hubert_soft(other, seed=7)
    moved = write_config(tmp_path / "moved.yaml", data, other)
    with pytest.raises(ConfigError) as info:
        check_recordings(load_config(moved))
    line = str(info.value)
    assert "\n" not in line and line.startswith("data.encoder_ckpt: ")
    assert "encoder" in line and made_by[:12] in line and sha256(other)[:12] in line
    assert str(encoder.resolve()) in line and str(other.resolve()) in line
    assert "mlflow-ddsp preprocess -c CONFIG" in line

    # The same swap in place (same path, new bytes and mtime): `train` refuses before any run exists.
    before = encoder.stat()
    _write_hubert_soft(encoder, seed=7)
    os.utime(encoder, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "mlflow.db"
    store.write_bytes(sqlite_template.read_bytes())
    result = CliRunner().invoke(main, ["--tracking-uri", f"sqlite:///{store}", "train", "-c", str(prepared)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (error,) = [x for x in result.stderr.splitlines() if x.startswith("error")]
    assert made_by[:12] in error and sha256(encoder)[:12] in error and "mlflow-ddsp preprocess -c CONFIG" in error
    assert mlflow.MlflowClient(f"sqlite:///{store}").get_experiment_by_name("provenance") is None

    # Preprocess takes the changed digest as a changed file: every recording is recomputed.
    report = preprocess(load_config(prepared), workers=1, progress=False)
    assert all(s.settings_changed and not s.skipped for s in report.splits)
    assert all(m["dependencies"][0]["sha256"] == sha256(encoder) for m in manifests(data).values())
    assert check_recordings(load_config(prepared)).get("encoder").sha256 == sha256(encoder)


def test_an_unchanged_file_is_not_hashed_and_a_touched_identical_one_once(data, encoder, prepared, hashed):
    cfg = load_config(prepared)
    check_recordings(cfg)
    assert preprocess(cfg, workers=1, progress=False).splits[0].skipped
    assert hashed == []  # size and mtime match the manifest: no 360 MB read at every start

    st = encoder.stat()
    os.utime(encoder, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes
    assert check_recordings(cfg).get("encoder").sha256 == sha256(encoder)
    assert hashed == [encoder.resolve()]  # one re-hash ...
    check_recordings(cfg)
    report = preprocess(cfg, workers=1, progress=False)
    assert hashed == [encoder.resolve()]  # ... and the new mtime is recorded: none again
    assert all(not s.processed and not s.settings_changed for s in report.splits)  # nothing recomputed
    assert all(m["dependencies"][0]["mtime_ns"] == encoder.stat().st_mtime_ns for m in manifests(data).values())


def test_preprocess_recomputes_nothing_for_a_touched_identical_encoder(data, encoder, prepared):
    st = encoder.stat()
    os.utime(encoder, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    report = preprocess(load_config(prepared), workers=1, progress=False)
    assert all(not s.processed and not s.settings_changed and s.skipped for s in report.splits)


def test_features_from_before_the_digests_warn_once_and_preprocess_records_them_without_recomputing(
    data, encoder, prepared, caplog
):
    for split, manifest in manifests(data).items():  # what preprocess wrote before this change
        legacy = {k: v for k, v in manifest.items() if k in ("version", "settings", "settings_digest", "files", "failed")}
        (data / split / MANIFEST_NAME).write_text(json.dumps(legacy))
    cfg = load_config(prepared)
    with caplog.at_level(logging.WARNING):
        provenance = check_recordings(cfg)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert "could not be checked" in lines[0] and "mlflow-ddsp preprocess -c CONFIG" in lines[0]
    assert str(data / "train") in lines[0] and str(data / "val") in lines[0]
    assert not provenance.checked and provenance.dependencies == ()

    report = preprocess(cfg, workers=1, progress=False)
    assert all(not s.processed and not s.settings_changed for s in report.splits)  # only recorded
    assert all(m["dependencies"][0]["sha256"] == sha256(encoder) for m in manifests(data).values())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert check_recordings(cfg).checked
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_features_made_without_the_f0_file_the_config_names_are_refused(data, encoder, prepared, tmp_path):
    rmvpe = tmp_path / "rmvpe.pt"
    torch.save({"model": rmvpe_state(TINY_RMVPE)}, rmvpe)
    cfg = load_config(write_config(tmp_path / "r.yaml", data, encoder, f0_extractor="rmvpe", f0_ckpt=str(rmvpe)))
    with pytest.raises(ConfigError, match=r"^data\.f0_ckpt: .*made without.*mlflow-ddsp preprocess -c CONFIG"):
        check_recordings(cfg)


def test_a_config_file_missing_here_is_named_and_the_recorded_digest_kept(data, encoder, prepared, caplog):
    made_by = sha256(encoder)
    encoder.unlink()  # e.g. a training box that never needs the encoder
    with caplog.at_level(logging.WARNING):
        provenance = check_recordings(load_config(prepared))
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert line.startswith("data.encoder_ckpt: ") and str(encoder) in line and made_by[:12] in line
    assert "could not be checked" in line
    assert provenance.get("encoder").sha256 == made_by  # what made the features, for the checkpoint to carry
