"""Bad configs, as a table: every one is refused in one line naming the problem, before any work.

Each case is a config file (or a folder) given to ``mlflow-ddsp train -c`` and
``preprocess -c``: the command exits non-zero with one ``error:`` line that names
the key (or the file), prints no traceback, and leaves nothing behind (no store,
no run, no feature files). A second table checks every typed key of every section
against a wrong type, so a key added later is covered without a new row.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlflow_ddsp.cli import main
from mlflow_ddsp.config import LIMITS, MAX_CONFIG_BYTES, SECTIONS, parse_config
from mlflow_ddsp.errors import ConfigError

BILLION_LAUGHS = "data: {sampling_rate: 44100}\ninfer:\n  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)
)

# (case id, file bytes or None for a folder, text the one line must contain)
CASES: list[tuple[str, bytes | None, str]] = [
    ("empty file", b"", "is empty"),
    ("only a comment", b"# nothing\n", "is empty"),
    ("a folder", None, "is a directory"),
    ("yaml syntax error", b"data:\n  sampling_rate: [44100\n", "not valid YAML"),
    ("tab indentation", b"data:\n\tsampling_rate: 44100\n", "not valid YAML"),
    ("a list, not a mapping", b"- data\n- model\n", "mapping of config sections"),
    ("a scalar", b"hello\n", "mapping of config sections"),
    ("section is a list", b"data: [1, 2]\n", "data must be a mapping"),
    ("unknown section", b"dta:\n  sampling_rate: 44100\n", "'dta'"),
    ("unknown key with suggestion", b"train:\n  batchsize: 8\n", "did you mean 'train.batch_size'"),
    ("latin-1 bytes", "data:\n  encoder: 'caf\xe9'\n".encode("latin-1"), "not UTF-8"),
    ("NUL byte", b"data:\n  encoder: a\x00b\n", "not UTF-8"),
    ("billion laughs in a pass-through section", BILLION_LAUGHS.encode(), "anchors and aliases expand"),
    ("larger than the bound", b"infer:\n  pad: '" + b"x" * MAX_CONFIG_BYTES + b"'\n", "bytes"),
    ("lr NaN", b"train:\n  lr: .nan\n", "train.lr=nan must be a finite number"),
    ("lr inf", b"train:\n  lr: .inf\n", "train.lr=inf must be a finite number"),
    ("weight_decay -inf", b"train:\n  weight_decay: -.inf\n", "train.weight_decay"),
    ("weight_decay NaN as text", b"train:\n  weight_decay: nan\n", "train.weight_decay"),
    ("lr zero", b"train:\n  lr: 0\n", "train.lr=0.0 must be > 0"),
    ("lr text", b"train:\n  lr: fast\n", "train.lr='fast' must be a number"),
    ("batch_size fraction", b"train:\n  batch_size: 2.5\n", "train.batch_size=2.5 must be a whole number"),
    ("batch_size boolean", b"train:\n  batch_size: true\n", "train.batch_size=True must be a number"),
    ("n_spk 1e9", b"model:\n  n_spk: 1e9\n", "model.n_spk=1000000000 is too large"),
    ("n_spk zero", b"model:\n  n_spk: 0\n", "model.n_spk=0 must be >= 1"),
    ("encoder_out_channels 1e8", b"data:\n  encoder_out_channels: 1e8\n", "data.encoder_out_channels"),
    ("sampling_rate 1e12", b"data:\n  sampling_rate: 1e12\n", "data.sampling_rate"),
    ("block_size 1e9", b"data:\n  block_size: 1e9\n", "data.block_size"),
    ("block_size negative", b"data:\n  block_size: -512\n", "data.block_size=-512 must be > 0"),
    ("duration huge", b"data:\n  duration: 1e9\n", "data.duration"),
    ("f0_max below f0_min", b"data:\n  f0_min: 500\n  f0_max: 100\n", "data.f0_max"),
    ("fft sizes swapped", b"loss:\n  fft_min: 4096\n  fft_max: 256\n", "loss.fft_min"),
    ("fft_max huge", b"loss:\n  fft_max: 1e9\n", "loss.fft_max"),
    ("validation fft size huge", b"loss:\n  validation_fft_sizes: [1e9]\n", "loss.validation_fft_sizes[0]"),
    ("empty extension", b"data:\n  extensions: ['']\n", "data.extensions[0]=''"),
    ("extension with a path", b"data:\n  extensions: ['../wav']\n", "data.extensions[0]"),
    ("no extensions", b"data:\n  extensions: []\n", "data.extensions"),
    ("amp_dtype unknown", b"train:\n  amp_dtype: fp8\n", "train.amp_dtype='fp8'"),
    ("device unknown", b"device: tpu\n", "device='tpu'"),
    ("interval_val zero", b"train:\n  interval_val: 0\n", "train.interval_val"),
    ("keep_last zero", b"train:\n  keep_last: 0\n", "keep_last"),
    ("best_mode unknown", b"train:\n  best_mode: biggest\n", "best_mode"),
    ("alias reserved", b"mlflow:\n  alias: latest\n", "latest"),
    ("alias with a path", b"mlflow:\n  alias: a/b\n", "a/b"),
    ("registered model with a slash", b"mlflow:\n  registered_model: team/voice\n", "mlflow.registered_model"),
    ("experiment name empty", b"mlflow:\n  experiment: ''\n", "mlflow.experiment"),
    ("audio_clips huge", b"mlflow:\n  audio_clips: 100000\n", "mlflow.audio_clips"),
]


def _write_case(root: Path, content: bytes | None) -> Path:
    path = root / "config.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("command", ["train", "preprocess"])
@pytest.mark.parametrize(("content", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_is_one_line_before_any_work(tmp_path, command, content, expected):
    path = _write_case(tmp_path, content)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, [command, "-c", str(path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception  # handled, not a crash
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    assert expected in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no store, no mlruns, nothing partial


def _typed_keys() -> list[tuple[str, type]]:
    keys = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            keys.append((f"{section}.{f.name}", typing.get_type_hints(cls)[f.name]))
    return keys


@pytest.mark.parametrize(("key", "annotation"), _typed_keys(), ids=[k for k, _ in _typed_keys()])
def test_every_key_refuses_a_wrong_type_by_name(key, annotation):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=rf"^{section}\.{name}(\[0\])?="):
        parse_config({section: {name: {"not": "a value"}}})


@pytest.mark.parametrize("key", sorted(LIMITS))
def test_every_bounded_size_names_its_limit(key):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=rf"^{key}=.* is too large \(at most "):
        parse_config({section: {name: LIMITS[key] * 2}})


def test_utf16_config_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes("train:\n  lr: 0.001\ndevice: cpu\n".encode("utf-16"))
    from mlflow_ddsp.config import load_config

    assert load_config(path).train.lr == 0.001


def test_a_few_aliases_still_load(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("data:\n  f0_min: &low 65\ntrain:\n  lr: 0.001\nenhancer:\n  floor: *low\n")
    from mlflow_ddsp.config import load_config

    assert load_config(path).extra["enhancer"] == {"floor": 65}


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("MLFLOW_DDSP_CLOSE_TIMEOUT", "abc", "MLFLOW_DDSP_CLOSE_TIMEOUT='abc' must be a number of seconds >= 0"),
    ("MLFLOW_DDSP_CLOSE_TIMEOUT", "-1", "MLFLOW_DDSP_CLOSE_TIMEOUT='-1' must be"),
    ("MLFLOW_DDSP_CLOSE_TIMEOUT", "nan", "MLFLOW_DDSP_CLOSE_TIMEOUT='nan' must be"),
    ("MLFLOW_DDSP_SPOOL_DIR", "a-file", "MLFLOW_DDSP_SPOOL_DIR"),
    ("MLFLOW_DDSP_SPOOL_DIR", "a-file/below", "MLFLOW_DDSP_SPOOL_DIR"),
], ids=["timeout text", "timeout negative", "timeout nan", "spool dir a file", "spool dir below a file"])  # fmt: skip
def test_bad_environment_is_one_line_before_any_work(tmp_path, monkeypatch, variable, value, expected):
    from conftest import tiny_config

    (tmp_path / "a-file").write_text("not a folder")
    path = tiny_config(tmp_path / "no-data", tmp_path / "config.yaml", "env")
    monkeypatch.setenv(variable, str(tmp_path / value) if variable.endswith("_DIR") else value)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, ["train", "-c", str(path)])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no store, no run, nothing partial
