"""Preprocess: upstream's layout and shapes, skip/, per-file failures, idempotency, workers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import yaml
from click.testing import CliRunner

from mlflow_ddsp.audio import load_audio
from mlflow_ddsp.cli import main
from mlflow_ddsp.config import load_config
from mlflow_ddsp.corpus import FEATURE_KINDS, feature_path, list_audio
from mlflow_ddsp.demo_data import make_demo_dataset
from mlflow_ddsp.errors import ConfigError, MlflowDdspError
from mlflow_ddsp.preprocess import MANIFEST_NAME, preprocess

SR = 44100


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A demo dataset made once per module; tests copy it."""
    return make_demo_dataset(tmp_path_factory.mktemp("tpl") / "data", seconds_per_speaker=6, progress=False).root


@pytest.fixture
def data(template, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(template, root)
    return root


def write_config(path, data_root, **data_overrides):
    cfg = {
        "data": {
            "f0_extractor": "parselmouth",
            "encoder": "logmel",
            "encoder_out_channels": 128,
            "train_path": str(data_root / "train"),
            "valid_path": str(data_root / "val"),
            **data_overrides,
        },
        "model": {"n_spk": 2},
        "device": "cpu",
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def config(data, tmp_path):
    return write_config(tmp_path / "config.yaml", data)


def all_rels(data):
    return {split: list_audio(data / split, ["wav"]) for split in ("train", "val")}


def output_stamps(data):
    return {
        p: p.stat().st_mtime_ns
        for split in ("train", "val")
        for kind in FEATURE_KINDS
        for p in (data / split / kind).rglob("*.npy")
    }


def test_outputs_follow_upstream_layout_shapes_and_frames(data, config):
    report = preprocess(load_config(config), workers=1, progress=False)
    assert report.ok and [s.name for s in report.splits] == ["train", "val"]
    for split in report.splits:
        rels = all_rels(data)[split.name]
        assert sorted(split.processed) == rels and not split.skipped and not split.moved_to_skip
        assert all(rel.startswith(("1/", "2/")) for rel in rels)
        for rel in rels:
            n = load_audio(data / split.name / "audio" / rel, SR).size // 512 + 1
            f0, volume, units = (np.load(data / split.name / kind / f"{rel}.npy") for kind in FEATURE_KINDS)
            assert f0.shape == volume.shape == (n,) and units.shape == (n, 128)
            assert f0.dtype == volume.dtype == units.dtype == np.float32
            # Unvoiced frames are interpolated: every frame has a pitch in the configured range.
            assert f0.min() >= 65 and f0.max() <= 800
            assert volume.min() >= 0 and np.isfinite(units).all()
    manifest = json.loads((data / "train" / MANIFEST_NAME).read_text())
    assert sorted(manifest["files"]) == all_rels(data)["train"]
    assert manifest["settings"]["encoder"] == "logmel"


def test_silent_file_is_moved_to_skip_and_is_not_a_failure(data, config):
    sf.write(data / "train" / "audio" / "1" / "silent.wav", np.zeros(SR * 3, np.float32), SR)
    # The MLproject entry point's defaults: no overrides, automatic worker count.
    result = CliRunner().invoke(main, ["preprocess", "-c", str(config), "--set", "", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert not (data / "train" / "audio" / "1" / "silent.wav").exists()
    assert (data / "train" / "skip" / "1" / "silent.wav").is_file()
    assert not feature_path(data / "train", "f0", "1/silent.wav").exists()
    assert "silent.wav: no voiced frame" in result.stdout and "1 moved to skip/" in result.stdout
    report = preprocess(load_config(config), workers=1, progress=False)
    assert report.ok and not report.splits[0].moved_to_skip  # gone from audio/: not seen again


def test_unreadable_and_empty_files_are_reported_by_name_and_the_rest_processed(data, config):
    speaker = data / "train" / "audio" / "2"
    (speaker / "corrupt.wav").write_bytes(b"definitely not a RIFF file " * 50)
    (speaker / "empty.wav").write_bytes(b"")
    sf.write(speaker / "no_samples.wav", np.zeros(0, np.float32), SR)
    result = CliRunner().invoke(main, ["preprocess", "-c", str(config), "--workers", "1"])
    assert result.exit_code == 1
    bad = {"corrupt.wav", "empty.wav", "no_samples.wav"}
    failed_lines = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert {name for name in bad if any(name in line for line in failed_lines)} == bad
    assert any("no_samples.wav: audio file is empty" in line for line in failed_lines)
    assert "3 recording(s) failed" in result.stderr
    good = [r for r in all_rels(data)["train"] if r.rsplit("/", 1)[-1] not in bad]
    assert good and all(feature_path(data / "train", "units", r).is_file() for r in good)
    assert all(feature_path(data / "val", "units", r).is_file() for r in all_rels(data)["val"])
    assert f"train ({data / 'train'}): {len(good)} processed" in result.stdout
    assert (speaker / "corrupt.wav").exists()  # reported, not moved or deleted

    # Training then names what preprocess could not use, not "run preprocess first".
    from mlflow_ddsp.errors import AudioError
    from mlflow_ddsp.training.data import AudioDataset

    with pytest.raises(AudioError, match=r"3 recording\(s\) in .* could not be preprocessed \(first: .*\.wav.*\); fix or remove"):
        AudioDataset(data / "train", load_config(config), whole_audio=False, augment=True)
    (speaker / "corrupt.wav").unlink()
    (speaker / "empty.wav").unlink()
    (speaker / "no_samples.wav").unlink()
    assert preprocess(load_config(config), workers=1, progress=False).ok
    assert json.loads((data / "train" / MANIFEST_NAME).read_text())["failed"] == {}  # forgotten once gone


def test_rerun_recomputes_nothing_and_notices_changed_audio(data, config):
    cfg = load_config(config)
    preprocess(cfg, workers=1, progress=False)
    stamps = output_stamps(data)
    assert len(stamps) == 3 * sum(len(r) for r in all_rels(data).values())

    again = preprocess(cfg, workers=1, progress=False)
    assert all(not s.processed and s.skipped for s in again.splits)
    assert output_stamps(data) == stamps

    # Same bytes, new mtime (touch, copy): still done. New bytes: recomputed.
    rels = all_rels(data)["train"]
    touched, changed = data / "train" / "audio" / rels[0], data / "train" / "audio" / rels[-1]
    os.utime(touched, ns=(1, 1))
    shutil.copyfile(data / "val" / "audio" / all_rels(data)["val"][0], changed)
    third = preprocess(cfg, workers=1, progress=False)
    assert third.splits[0].processed == [rels[-1]] and len(third.splits[0].skipped) == len(rels) - 1
    n = load_audio(changed, SR).size // 512 + 1
    assert np.load(feature_path(data / "train", "units", rels[-1])).shape == (n, 128)
    changed_outputs = {feature_path(data / "train", kind, rels[-1]) for kind in FEATURE_KINDS}
    now = output_stamps(data)
    assert all(now[p] != stamps[p] for p in changed_outputs)
    assert {p: t for p, t in now.items() if p not in changed_outputs} == {
        p: t for p, t in stamps.items() if p not in changed_outputs
    }


def test_truncated_output_and_crash_leftovers_are_not_taken_as_done(data, config):
    cfg = load_config(config)
    preprocess(cfg, workers=1, progress=False)
    rel = all_rels(data)["val"][0]
    units = feature_path(data / "val", "units", rel)
    units.write_bytes(units.read_bytes()[:100])  # as a crash in a non-atomic writer would leave it
    leftover = units.with_name(f".{units.name}.123.mlflow_ddsp-tmp")
    leftover.write_bytes(b"half")
    report = preprocess(cfg, workers=1, progress=False)
    assert report.splits[1].processed == [rel] and len(report.splits[1].skipped) == 3
    assert np.load(units).shape[1] == 128 and not leftover.exists()


def test_changing_a_feature_setting_recomputes_everything(data, config, tmp_path):
    preprocess(load_config(config), workers=1, progress=False)
    cfg = load_config(config, ["data.block_size=256"])
    report = preprocess(cfg, workers=1, progress=False)
    assert all(s.settings_changed and not s.skipped for s in report.splits)
    assert sum(len(s.processed) for s in report.splits) == sum(len(r) for r in all_rels(data).values())
    rel = all_rels(data)["val"][0]
    n = load_audio(data / "val" / "audio" / rel, SR).size // 256 + 1
    assert np.load(feature_path(data / "val", "f0", rel)).shape == (n,)
    # Settings that do not shape the features (training ones) change nothing.
    same = preprocess(load_config(config, ["data.block_size=256", "train.lr=0.001"]), workers=1, progress=False)
    assert not any(s.processed for s in same.splits)


def test_two_workers_give_the_same_arrays_as_one(template, tmp_path):
    roots = {}
    for workers in (1, 2):
        root = tmp_path / f"w{workers}"
        shutil.copytree(template / "val", root / "val")  # small: 4 clips
        shutil.copytree(template / "val", root / "train")
        report = preprocess(
            load_config(write_config(tmp_path / f"{workers}.yaml", root)), workers=workers, progress=False
        )
        assert report.ok and report.workers == workers
        roots[workers] = root
    rels = list_audio(roots[1] / "train", ["wav"])
    for split in ("train", "val"):
        for rel in rels:
            for kind in FEATURE_KINDS:
                a = np.load(feature_path(roots[1] / split, kind, rel))
                b = np.load(feature_path(roots[2] / split, kind, rel))
                np.testing.assert_array_equal(a, b)


def test_config_problems_stop_before_any_work(data, tmp_path):
    missing_val = write_config(tmp_path / "a.yaml", data, valid_path=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="data.valid_path"):
        preprocess(load_config(missing_val), progress=False)
    needs_weights = write_config(tmp_path / "b.yaml", data, encoder="hubertsoft", encoder_out_channels=256)
    result = CliRunner().invoke(main, ["preprocess", "-c", str(needs_weights)])
    assert result.exit_code == 1 and "data.encoder_ckpt" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert not (data / "train" / "f0").exists()


def test_a_recording_that_breaks_later_loses_its_stale_features(data, config):
    cfg = load_config(config)
    preprocess(cfg, workers=1, progress=False)
    rel = all_rels(data)["val"][1]
    (data / "val" / "audio" / rel).write_bytes(b"garbage")
    report = preprocess(cfg, workers=1, progress=False)
    assert [r for r, _ in report.failed] == [rel] and "cannot read audio" in report.failed[0][1]
    # The trainer must not pair this name with features of audio that is gone.
    assert not any(feature_path(data / "val", kind, rel).exists() for kind in FEATURE_KINDS)
    assert rel not in json.loads((data / "val" / MANIFEST_NAME).read_text())["files"]


def test_a_second_run_on_the_same_folder_is_refused(data, config):
    fcntl = pytest.importorskip("fcntl")
    with open(data / "val" / ".mlflow_ddsp_preprocess.lock", "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running preprocess holds it
        with pytest.raises(MlflowDdspError, match="another mlflow-ddsp preprocess"):
            preprocess(load_config(config), workers=1, progress=False)
    assert not (data / "train" / "f0").exists()


def _small(template, root):
    """Two clips per split (one per speaker)."""
    for split in ("val", "train"):
        shutil.copytree(template / "val", root / split, ignore=shutil.ignore_patterns("val_01.wav"))
    return root


@pytest.mark.slow
def test_rmvpe_reads_data_f0_ckpt_and_replacing_it_recomputes(template, tmp_path):
    import torch

    from mlflow_ddsp.features.rmvpe import Rmvpe, RmvpeDims

    root = _small(template, tmp_path / "data")
    ckpt = tmp_path / "rmvpe.pt"

    def write_weights(seed):
        torch.manual_seed(seed)
        net = Rmvpe(RmvpeDims(n_blocks=1, n_stages=2, n_inters=1, base_channels=4, gru_hidden=8))
        torch.save({"model": net.state_dict()}, ckpt)

    write_weights(0)
    config = write_config(tmp_path / "c.yaml", root, f0_extractor="rmvpe", f0_ckpt=str(ckpt))
    report = preprocess(load_config(config), workers=1, progress=False)
    assert report.ok and sum(len(s.processed) for s in report.splits) == 4
    rel = all_rels(root)["val"][0]
    n = load_audio(root / "val" / "audio" / rel, SR).size // 512 + 1
    assert np.load(feature_path(root / "val", "f0", rel)).shape == (n,)
    write_weights(1)  # new weights in place: the f0 changes, so everything is recomputed
    again = preprocess(load_config(config), workers=1, progress=False)
    assert all(s.settings_changed for s in again.splits)
    # The manifest names the f0 network by its bytes (role f0; logmel needs no encoder file) ...
    recorded = json.loads((root / "val" / MANIFEST_NAME).read_text())["dependencies"]
    assert [(d["role"], d["sha256"]) for d in recorded] == [("f0", hashlib.sha256(ckpt.read_bytes()).hexdigest())]
    # ... so a touched file of the same bytes recomputes nothing (its size and mtime were the key before).
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = preprocess(load_config(config), workers=1, progress=False)
    assert all(not s.processed and not s.settings_changed for s in touched.splits)

    ckpt.unlink()
    result = CliRunner().invoke(main, ["preprocess", "-c", str(config)])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert f"data.f0_ckpt: '{ckpt}' does not exist" in result.stderr


@pytest.mark.slow
def test_fcpe_features(template, tmp_path):
    import importlib.util

    if importlib.util.find_spec("torchfcpe") is None and os.environ.get("CI") != "true":
        pytest.skip("torchfcpe is not installed (pip install 'mlflow-ddsp[f0]' && pip install --no-deps torchfcpe)")
    root = _small(template, tmp_path / "data")
    report = preprocess(load_config(write_config(tmp_path / "c.yaml", root, f0_extractor="fcpe")), workers=1, progress=False)
    assert report.ok and sum(len(s.processed) for s in report.splits) == 4
    from mlflow_ddsp.features import get_f0_extractor

    parselmouth = get_f0_extractor("parselmouth", sample_rate=SR, hop_size=512)
    for rel in all_rels(root)["val"]:
        ours = np.load(feature_path(root / "val", "f0", rel))
        ref = parselmouth.extract(load_audio(root / "val" / "audio" / rel, SR)).f0
        assert ours.shape == ref.shape
        assert np.median(np.abs(1200 * np.log2(ours / ref))) < 20  # two trackers agree on clean singing


def test_features_are_extracted_with_subnormals_flushed_on_every_compute_thread(data, config, monkeypatch):
    """f0 networks and content encoders compute with torch: on the CPU, flushed as training and conversion are."""
    from mlflow_ddsp import preprocess as preprocess_module
    from mlflow_ddsp.subnormals import subnormals_flushed

    seen = []
    real = preprocess_module._Extractor.features

    def recording(self, *args, **kwargs):
        seen.append(subnormals_flushed())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(preprocess_module._Extractor, "features", recording)
    assert preprocess(load_config(config), workers=1, progress=False).ok
    assert seen and all(seen), seen
    assert not subnormals_flushed(), "the calling thread's mode is restored after"
