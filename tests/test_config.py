"""Config loading and validation: upstream yaml accepted, errors name key, value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlflow_ddsp.config import Config, apply_overrides, load_config, parse_config
from mlflow_ddsp.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# Upstream DDSP-SVC's configs/combsub.yaml (master 88f157c), verbatim in content.
UPSTREAM_COMBSUB = """
data:
  f0_extractor: 'rmvpe' # 'parselmouth', 'dio', 'harvest', 'crepe', 'rmvpe' or 'fcpe'
  f0_min: 65 # about C2
  f0_max: 800 # about G5
  sampling_rate: 44100
  block_size: 512 # Equal to hop_length
  duration: 2
  encoder: 'contentvec768l12'
  cnhubertsoft_gate: 10
  encoder_sample_rate: 16000
  encoder_hop_size: 320
  encoder_out_channels: 768 # 256 if using 'hubertsoft'
  encoder_ckpt: pretrain/contentvec/checkpoint_best_legacy_500.pt
  train_path: data/train
  valid_path: data/val
  extensions:
    - wav
model:
  type: 'CombSubSuperFast'
  win_length: 2048
  n_spk: 1
enhancer:
    type: 'nsf-hifigan'
    ckpt: 'pretrain/nsf_hifigan/model'
loss:
  fft_min: 256
  fft_max: 2048
  n_scale: 4
device: cuda
env:
  expdir: exp/combsub-test
  gpu_id: 0
train:
  num_workers: 2
  batch_size: 24
  cache_all_data: true
  cache_device: 'cpu'
  cache_fp16: true
  epochs: 100000
  interval_log: 10
  interval_val: 2000
  lr: 0.0005
  weight_decay: 0
  save_opt: false
"""


def test_upstream_yaml_loads_unchanged(tmp_path):
    path = tmp_path / "combsub.yaml"
    path.write_text(UPSTREAM_COMBSUB)
    cfg = load_config(path)
    assert cfg.model.type == "CombSubSuperFast" and cfg.model.win_length == 2048
    assert cfg.train.interval_force_save is None  # upstream's combsub.yaml has none: keep only the newest
    assert cfg.f0_extractor == "rmvpe" and cfg.data.f0_ckpt is None  # upstream's pretrain/rmvpe/model.pt
    assert cfg.registered_model == "combsub-test"
    assert cfg.extra["enhancer"] == {"type": "nsf-hifigan", "ckpt": "pretrain/nsf_hifigan/model"}
    # The stored yaml round-trips, enhancer included.
    again = parse_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg and again.digest() == cfg.digest()


@pytest.mark.parametrize("name", ["combsub", "superfast", "sins", "demo"])
def test_shipped_project_configs_are_valid(name):
    cfg = load_config(ROOT / "projects" / name / "config.yaml")
    assert cfg.train.interval_force_save is None or cfg.train.interval_force_save % cfg.train.interval_val == 0


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"lrr": 1}}, r"unknown config key 'train.lrr' \(did you mean 'train.lr'\?\); allowed in train: .*max_steps"),
        ({"trian": {}}, r"unknown config section 'trian' \(did you mean 'train'\?\)"),
        ({"train": {"batch_size": "big"}}, r"train.batch_size='big' must be a number"),
        ({"train": {"batch_size": 2.5}}, r"train.batch_size=2.5 must be a whole number"),
        ({"train": {"batch_size": 0}}, r"train.batch_size=0 must be > 0"),
        ({"train": {"save_opt": "yes"}}, r"train.save_opt='yes' must be true or false"),
        ({"train": {"interval_val": 2000, "interval_force_save": 3000}},
         r"train.interval_force_save=3000 must be a positive multiple of train.interval_val=2000"),
        ({"train": {"amp_dtype": "fp8"}}, r"train.amp_dtype='fp8' must be one of fp32, fp16, bf16"),
        ({"train": {"num_threads": 0}}, r"train.num_threads=0 must be > 0"),
        ({"train": {"num_threads": 1.5}}, r"train.num_threads=1.5 must be a whole number"),
        ({"data": {"f0_min": 900}}, r"data.f0_max=800.0 must be above data.f0_min=900.0"),
        ({"data": {"f0_extractor": "yin"}},
         r"data.f0_extractor='yin' is not an f0 extractor; allowed: parselmouth, dio, harvest, fcpe, crepe, crepe-tiny, rmvpe"),
        ({"data": {"extensions": []}}, r"data.extensions must list at least one"),
        ({"loss": {"fft_min": 4096}}, r"loss.fft_min=4096 must be > 0 and below loss.fft_max=2048"),
        ({"mlflow": {"alias": "latest"}}, r"alias='latest' is reserved by MLflow"),
        ({"mlflow": {"registered_model": "a/b"}}, r"mlflow.registered_model: registered_model='a/b'"),
        ({"device": "tpu"}, r"device='tpu' must be auto, cpu, cuda, cuda:N or mps"),
        ({"model": "CombSubFast"}, r"model must be a mapping of keys"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_numbers_yaml_reads_as_strings_are_accepted():
    # YAML 1.1 reads `1e-4` as a string; for numeric keys we take it as meant.
    cfg = parse_config(yaml.safe_load("train:\n  lr: 1e-4\n  interval_val: '100'\n  interval_force_save: 500"))
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.train.interval_val == 100


def test_overrides_parse_values_as_yaml_and_name_bad_input():
    raw = apply_overrides({}, ["train.lr=1e-4", "train.max_steps=50", "data.extensions=[wav, flac]", "mlflow.registered_model=v"])
    cfg = parse_config(raw)
    assert cfg.train.max_steps == 50 and cfg.data.extensions == ["wav", "flac"] and cfg.registered_model == "v"
    with pytest.raises(ConfigError, match=r"--set 'train.lr' must look like section.key=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match=r"--set train.lr.x: 'lr' is not a section"):
        apply_overrides({"train": {"lr": 1}}, ["train.lr.x=1"])


def test_missing_and_broken_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nope.yaml' not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML"):
        load_config(bad)


def test_flat_params_cover_every_key():
    flat = Config().flat()
    assert flat["train.interval_val"] == 2000 and flat["data.encoder"] == "contentvec768l12"
    assert flat["mlflow.alias"] == "rolling" and flat["device"] == "auto"
