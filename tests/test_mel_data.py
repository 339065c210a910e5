"""Mel features of RectifiedFlow / DiffusionFast models: preprocess outputs and training items.

Upstream DDSP-SVC (branch master) ``preprocess.py`` writes ``mel/``, ``aug_mel/``,
``aug_vol/`` and the key shifts; ``reflow/data_loaders.py`` builds the items. These
tests run our preprocess on synthetic singing (``demo_data``) with a random-weight-free
vocoder (only its ``config.json`` exists) and check the files against
``Vocoder.extract`` of the same audio, the augmentation draws against their documented
seed, the refusals, the recompute rules and the items of the training data.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from mlflow_ddsp.audio import load_audio
from mlflow_ddsp.config import load_config
from mlflow_ddsp.corpus import FEATURE_KINDS, MEL_FEATURE_KINDS, feature_path, list_audio
from mlflow_ddsp.demo_data import make_demo_dataset
from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.features import extract_volume
from mlflow_ddsp.preprocess import MANIFEST_NAME, FeatureSettings, aug_rng, preprocess
from mlflow_ddsp.training import data as data_module
from mlflow_ddsp.training.data import AudioDataset, make_loaders
from mlflow_ddsp.vocoder import default_vocoder_config, load_vocoder, write_vocoder_config

SR, HOP = 44100, 512


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Demo data made once: a training and a validation clip of ~3 s per speaker."""
    root = make_demo_dataset(tmp_path_factory.mktemp("tpl") / "data", seconds_per_speaker=3, progress=False).root
    for extra in (root / "val" / "audio").rglob("val_01.wav"):
        extra.unlink()
    return root


def write_config(path, root, *, model_type="RectifiedFlow", vocoder_dir=None, seed=0, pitch_aug=True, **train):
    doc = {
        "data": {
            "f0_extractor": "parselmouth", "encoder": "logmel", "encoder_out_channels": 128, "duration": 0.5,
            "train_path": str(root / "train"), "valid_path": str(root / "val"),
        },
        "model": {"type": model_type, "n_spk": 2, "use_pitch_aug": pitch_aug},
        "vocoder": {"ckpt": str((vocoder_dir or root / "vocoder") / "model")},
        "train": {"seed": seed, "batch_size": 2, "num_workers": 0, "cache_fp16": False, **train},
        "device": "cpu",
    }  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)


@pytest.fixture
def data(template, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(template, root)
    write_vocoder_config(root / "vocoder", default_vocoder_config())
    return root


@pytest.fixture
def processed(prepared, tmp_path):
    """A copy of ``prepared`` (features and manifests included) that a test may change."""
    root = tmp_path / "data"
    shutil.copytree(prepared, root)
    return root


@pytest.fixture(scope="module")
def prepared(template, tmp_path_factory):
    """A mel-model dataset preprocessed once (use_pitch_aug, seed 0); tests only read it."""
    root = tmp_path_factory.mktemp("prepared") / "data"
    shutil.copytree(template, root)
    write_vocoder_config(root / "vocoder", default_vocoder_config())
    cfg = write_config(root / "c.yaml", root)
    assert preprocess(cfg, workers=1, progress=False).ok
    return root


def rels_of(root, split):
    return list_audio(root / split, ["wav"])


def feature_files(root):
    return {p for split in ("train", "val") for p in (root / split).rglob("*.npy")}


# -- preprocess ---------------------------------------------------------------


def test_mel_outputs_are_the_vocoders_mels_of_the_audio_and_its_seeded_augmentation(prepared):
    cfg = load_config(prepared / "c.yaml")
    vocoder = load_vocoder(prepared / "vocoder" / "model")
    shifts = []
    for split in ("train", "val"):
        root = prepared / split
        for rel in rels_of(prepared, split):
            audio = load_audio(root / "audio" / rel, SR)
            n = audio.size // HOP + 1
            mel, aug_mel, aug_vol, shift = (np.load(feature_path(root, k, rel)) for k in MEL_FEATURE_KINDS)
            assert mel.shape == aug_mel.shape == (n - 1, 128) and mel.dtype == aug_mel.dtype == np.float32
            assert aug_vol.shape == (n,) and aug_vol.dtype == np.float32
            assert shift.shape == (1,) and -5 <= shift[0] <= 5
            x = torch.from_numpy(audio).unsqueeze(0)
            np.testing.assert_array_equal(mel, vocoder.extract(x, SR)[0].numpy())
            # The documented draws: u then k from aug_rng(train.seed, rel), as upstream orders them.
            rng = aug_rng(cfg.train.seed, rel)
            u = rng.uniform(-1, min(1, math.log10(1 / (float(np.abs(audio).max()) + 1e-5))))
            k = rng.uniform(-5, 5)
            assert shift[0] == k
            np.testing.assert_array_equal(aug_mel, vocoder.extract(x * 10**u, SR, keyshift=k)[0].numpy())
            np.testing.assert_array_equal(aug_vol, extract_volume(audio * 10**u, HOP))
            shifts.append(k)
        entry = json.loads((root / MANIFEST_NAME).read_text())["files"][rels_of(prepared, split)[0]]
        assert set(entry["outputs"]) == set(FEATURE_KINDS + MEL_FEATURE_KINDS)
    assert len(set(shifts)) == len(shifts)  # a draw per recording, not one for all


def test_augmentation_is_reproducible_for_a_seed_and_changes_with_it(prepared, data, tmp_path):
    other = data
    preprocess(write_config(tmp_path / "b.yaml", other), workers=1, progress=False)
    data = prepared
    rel = rels_of(data, "train")[0]
    for kind in MEL_FEATURE_KINDS:
        a, b = (np.load(feature_path(r / "train", kind, rel)) for r in (data, other))
        assert np.array_equal(a, b), kind

    report = preprocess(write_config(tmp_path / "b.yaml", other, seed=7), workers=1, progress=False)
    assert report.splits[0].settings_changed and report.splits[0].processed
    assert np.array_equal(*(np.load(feature_path(r / "train", "mel", rel)) for r in (data, other)))
    for kind in ("aug_mel", "aug_shift"):
        assert not np.array_equal(*(np.load(feature_path(r / "train", kind, rel)) for r in (data, other))), kind


def test_without_pitch_aug_the_copy_is_only_gained(data, tmp_path):
    shutil.rmtree(data / "val" / "audio")
    (data / "val" / "audio").mkdir()  # the training folder is enough here
    preprocess(write_config(tmp_path / "c.yaml", data, pitch_aug=False), workers=1, progress=False)
    for rel in rels_of(data, "train"):
        assert np.load(feature_path(data / "train", "aug_shift", rel))[0] == 0.0
        mel, aug_mel = (np.load(feature_path(data / "train", k, rel)) for k in ("mel", "aug_mel"))
        # A gain only shifts the log-mel by log(gain) where the clamp does not bite.
        diff = (aug_mel - mel)[mel > -5]
        assert np.ptp(diff) < 1e-3 and abs(diff.mean()) > 1e-3


def _vocoder_variant(**changes):
    return replace(default_vocoder_config(), **changes)


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        (dict(sampling_rate=24000),
         r"sampling_rate=24000, hop_size=512 differ from data.sampling_rate=44100, data.block_size=512"),
        (dict(hop_size=256, upsample_rates=(8, 8, 2, 2)),
         r"sampling_rate=44100, hop_size=256 differ from .*data.block_size=512"),
        (dict(num_mels=80), r"num_mels=80; model.type RectifiedFlow is built for 128 mel bins"),
        (None, r"no .*config.json; .*openvpi's NSF-HiFiGAN release file pretrain/nsf_hifigan/model and its config.json "
               r"\(only config.json is needed to train\)"),
    ],
)  # fmt: skip
def test_an_unfit_or_missing_vocoder_config_is_refused_in_one_line_before_any_work(data, tmp_path, variant, expected):
    shutil.rmtree(data / "vocoder")
    if variant is not None:
        if "upsample_rates" in variant:
            variant["upsample_kernel_sizes"] = (16, 16, 4, 4)
        write_vocoder_config(data / "vocoder", _vocoder_variant(**variant))
    cfg = write_config(tmp_path / "c.yaml", data)
    with pytest.raises(ConfigError, match=expected) as info:
        preprocess(cfg, workers=1, progress=False)
    message = str(info.value)
    assert "\n" not in message and str(data / "vocoder" / "config.json") in message
    assert not feature_files(data)
    assert not any((data / split / MANIFEST_NAME).exists() for split in ("train", "val"))


def test_a_changed_vocoder_config_or_pitch_aug_recomputes_and_a_rerun_does_not(processed, tmp_path):
    data = processed
    cfg = write_config(tmp_path / "c.yaml", data)
    again = preprocess(cfg, workers=1, progress=False)
    assert all(not s.processed and s.skipped for s in again.splits)

    rel = rels_of(data, "train")[0]
    before = np.load(feature_path(data / "train", "mel", rel))
    write_vocoder_config(data / "vocoder", _vocoder_variant(fmax=8000))
    report = preprocess(cfg, workers=1, progress=False)
    assert all(s.settings_changed and len(s.processed) == len(rels_of(data, s.name)) for s in report.splits)
    assert not np.array_equal(before, np.load(feature_path(data / "train", "mel", rel)))

    digests = {
        FeatureSettings.from_config(write_config(tmp_path / "d.yaml", data, **change)).digest()
        for change in ({}, {"pitch_aug": False}, {"seed": 1}, {"model_type": "DiffusionFast"})
    }
    assert len(digests) == 3  # use_pitch_aug and train.seed shape the files; 5.0 and 6.0 share them


def test_a_lost_mel_output_is_recomputed_and_only_that_recording(processed, tmp_path):
    data = processed
    cfg = write_config(tmp_path / "c.yaml", data)
    rels = rels_of(data, "train")
    feature_path(data / "train", "aug_mel", rels[0]).unlink()
    (data / "train" / "mel" / ".leftover.npy.123.mlflow_ddsp-tmp").write_bytes(b"partial")
    report = preprocess(cfg, workers=1, progress=False)
    assert report.splits[0].processed == [rels[0]] and sorted(report.splits[0].skipped) == rels[1:]
    assert feature_path(data / "train", "aug_mel", rels[0]).is_file()
    assert not list((data / "train").rglob("*.mlflow_ddsp-tmp"))


def test_a_pure_ddsp_config_writes_no_mels_and_keeps_its_digest(data, tmp_path):
    shutil.rmtree(data / "vocoder")  # not needed: nothing reads it
    cfg = write_config(tmp_path / "c.yaml", data, model_type="CombSubSuperFast")
    settings = FeatureSettings.from_config(cfg)
    described = settings.describe()
    assert set(described) == {
        "sampling_rate", "block_size", "f0_extractor", "f0_min", "f0_max", "encoder", "encoder_ckpt",
        "encoder_ckpt_stat", "encoder_sample_rate", "encoder_hop_size", "encoder_out_channels", "feature_format",
    }  # fmt: skip
    assert settings.digest() == hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
    assert preprocess(cfg, workers=1, progress=False).ok
    assert not any((data / split / kind).exists() for split in ("train", "val") for kind in MEL_FEATURE_KINDS)
    entry = json.loads((data / "train" / MANIFEST_NAME).read_text())["files"][rels_of(data, "train")[0]]
    assert set(entry["outputs"]) == set(FEATURE_KINDS)
    item = make_loaders(cfg)[0].dataset[(0, 1)]
    assert set(item) == {"audio", "units", "f0", "volume", "spk_id", "name"}

    # The same folder for a mel model: training refuses it, naming the fix.
    write_vocoder_config(data / "vocoder", default_vocoder_config())
    refused = r"have no mel features .*RectifiedFlow.*run `mlflow-ddsp preprocess -c CONFIG`"
    with pytest.raises(ConfigError, match=refused) as info:
        make_loaders(write_config(tmp_path / "m.yaml", data))
    assert "\n" not in str(info.value)


# -- training data --------------------------------------------------------------


def test_training_items_have_upstreams_keys_shapes_and_values(prepared, monkeypatch):
    def no_audio(*args, **kwargs):
        raise AssertionError("training items of mel models must not read audio")

    monkeypatch.setattr(data_module, "load_audio", no_audio)
    cfg = load_config(prepared / "c.yaml")
    for cache in (True, False):
        train = AudioDataset(cfg.data.train_path, cfg, whole_audio=False, augment=True, cache=cache)
        seen = set()
        for seed in range(12):
            item = train[(0, seed)]
            t = int(cfg.data.duration / (HOP / SR))
            assert set(item) == {"mel", "units", "f0", "volume", "spk_id", "aug_shift", "name"}
            assert item["mel"].shape == (t, 128) and item["units"].shape == (t, 128)
            assert item["f0"].shape == item["volume"].shape == (t, 1)
            assert item["aug_shift"].shape == (1, 1) and item["spk_id"].shape == (1,)
            assert all(item[k].dtype == torch.float32 for k in ("mel", "units", "f0", "volume", "aug_shift"))
            assert item["spk_id"].dtype == torch.long

            # Upstream's draws from the item's generator: the crop start, then the coin.
            rng = random.Random(seed)
            duration = train.records[0].duration
            start = int(rng.uniform(0, duration - cfg.data.duration - 0.1) / (HOP / SR))
            augmented = rng.choice([True, False])
            seen.add(augmented)
            root, rel = train.root, item["name"]
            rows = slice(start, start + t)
            shift = float(np.load(feature_path(root, "aug_shift", rel))[0]) if augmented else 0.0
            mel = np.load(feature_path(root, "aug_mel" if augmented else "mel", rel))[rows]
            volume = np.load(feature_path(root, "aug_vol" if augmented else "volume", rel))[rows]
            f0 = np.load(feature_path(root, "f0", rel))[rows]
            assert np.array_equal(item["mel"].numpy(), mel)
            assert np.array_equal(item["units"].numpy(), np.load(feature_path(root, "units", rel))[rows])
            assert np.array_equal(item["volume"][:, 0].numpy(), volume)
            assert item["aug_shift"].item() == pytest.approx(shift, abs=1e-6)
            assert torch.equal(item["f0"][:, 0], 2 ** (shift / 12) * torch.from_numpy(f0))
        assert seen == {True, False}


def test_the_augmented_share_is_one_half_and_a_function_of_the_seed(prepared):
    cfg = load_config(prepared / "c.yaml")
    loader = make_loaders(cfg)[0]
    train, sampler = loader.dataset, loader.sampler
    flags = []
    for epoch in range(150):
        sampler.set_epoch(epoch)
        for key in sampler:
            item = train[key]
            flags.append(item["aug_shift"].item() != 0.0)
            again = train[key]
            assert all(torch.equal(item[k], again[k]) for k in ("mel", "f0", "volume", "aug_shift"))
    share = sum(flags) / len(flags)
    assert 0.42 < share < 0.58, share  # 300 items: about 5 standard deviations

    no_aug = AudioDataset(cfg.data.train_path, cfg, whole_audio=False, augment=False)
    assert all(no_aug[(0, seed)]["aug_shift"].item() == 0.0 for seed in range(20))


def test_cache_fp16_rounds_the_training_mel_not_the_validation_set(prepared, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", prepared, cache_all_data=True, cache_fp16=True)
    train, valid = (loader.dataset for loader in make_loaders(cfg))
    record = train.records[0]
    assert record.mel.dtype == record.aug_mel.dtype == record.units.dtype == torch.float16
    assert record.audio is None  # no audio in memory for training
    item = train[(0, 3)]
    kind = "aug_mel" if item["aug_shift"].item() else "mel"
    full = torch.from_numpy(np.load(feature_path(train.root, kind, record.rel)))
    rows = [i for i in range(full.shape[0] - item["mel"].shape[0] + 1)
            if torch.equal(full[i : i + item["mel"].shape[0]].half().float(), item["mel"])]  # fmt: skip
    assert len(rows) == 1
    first = valid.records[0]
    assert first.mel.dtype == first.units.dtype == first.audio.dtype == torch.float32 and first.aug_mel is None


@pytest.mark.parametrize("cache", [True, False])
def test_validation_items_are_whole_unaugmented_and_carry_the_audio(prepared, cache):
    cfg = load_config(prepared / "c.yaml")
    valid = AudioDataset(cfg.data.valid_path, cfg, whole_audio=True, augment=False, cache=cache, fp16=False)
    for index, rel in enumerate(rels_of(prepared, "val")):
        item = valid[index]
        root = valid.root
        mel = np.load(feature_path(root, "mel", rel))
        t = mel.shape[0]  # one frame fewer than units, f0 and volume
        assert np.load(feature_path(root, "f0", rel)).shape == (t + 1,)
        assert item["mel"].shape == (t, 128) and np.array_equal(item["mel"].numpy(), mel)
        assert item["units"].shape == (t, 128) and item["f0"].shape == item["volume"].shape == (t, 1)
        assert item["aug_shift"].item() == 0.0
        assert np.array_equal(item["volume"][:, 0].numpy(), np.load(feature_path(root, "volume", rel))[:t])
        audio = load_audio(root / "audio" / rel, SR)
        assert item["audio"].shape == (t * HOP,) and item["audio"].dtype == torch.float32
        assert np.array_equal(item["audio"].numpy(), audio[: t * HOP])
    batch = next(iter(make_loaders(cfg)[1]))
    assert batch["audio"].shape[0] == 1 and batch["audio"].shape[1] == batch["mel"].shape[1] * HOP

