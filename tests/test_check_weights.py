"""`mlflow-ddsp check-weights -c my.yaml`: which weight files a config needs, present?, sha256, loads?

Small weights are made here the way tests/test_encoders.py, test_rmvpe.py and test_vocoder.py
make them (same networks, tiny sizes); every file is loaded by the product's own loader.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mlflow_ddsp.cli import main
from mlflow_ddsp.vocoder import NsfHifiGanGenerator, default_vocoder_config, write_vocoder_config

from test_encoders import TINY_SOFT, _write_fairseq, _write_hubert_soft
from test_rmvpe import TINY as TINY_RMVPE
from test_rmvpe import _random_state as rmvpe_state

ROOT = Path(__file__).resolve().parents[1]
TINY_FAIRSEQ_CHANNELS = 32  # test_encoders.TINY_FAIRSEQ's encoder_embed_dim


def check(*args: str):
    return CliRunner().invoke(main, ["check-weights", *args], catch_exceptions=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_vocoder(folder: Path, **changes) -> Path:
    """A tiny NSF-HiFiGAN (44.1 kHz, hop 512, 128 bins; 32 initial channels) as `folder/model` + config.json."""
    config = replace(default_vocoder_config(), upsample_initial_channel=32, **changes)
    write_vocoder_config(folder, config)
    torch.manual_seed(0)
    torch.save({"generator": NsfHifiGanGenerator(config).state_dict()}, folder / "model")
    return folder / "model"


@pytest.fixture
def weights(tmp_path) -> dict[str, Path]:
    """Every kind of file, at upstream's default relative paths under the test's folder (the cwd)."""
    contentvec = tmp_path / "pretrain" / "contentvec" / "checkpoint_best_legacy_500.pt"
    contentvec.parent.mkdir(parents=True)
    _write_fairseq(contentvec)
    rmvpe = tmp_path / "pretrain" / "rmvpe" / "model.pt"
    rmvpe.parent.mkdir(parents=True)
    torch.save({"model": rmvpe_state(TINY_RMVPE)}, rmvpe)
    vocoder = write_vocoder(tmp_path / "pretrain" / "nsf_hifigan")
    return {"data.encoder_ckpt": contentvec, "data.f0_ckpt": rmvpe, "vocoder.ckpt": vocoder,
            "config.json": vocoder.parent / "config.json"}  # fmt: skip


REFLOW = str(ROOT / "projects" / "reflow" / "config.yaml")  # contentvec768l12 + rmvpe + NSF-HiFiGAN
TINY_UNITS = f"data.encoder_out_channels={TINY_FAIRSEQ_CHANNELS}"


def test_a_config_without_weights_needs_nothing():
    result = check("-c", str(ROOT / "projects" / "demo" / "config.yaml"))
    assert result.exit_code == 0, result.output
    assert "no weight files needed (data.encoder logmel, data.f0_extractor parselmouth" in result.output


def test_every_file_present_is_listed_with_size_sha256_and_loads(weights):
    """The reflow template with upstream's default paths (relative: resolved from the current folder)."""
    result = check("-c", REFLOW, "--set", TINY_UNITS)
    assert result.exit_code == 0, result.output
    out = result.output
    for key in ("data.encoder_ckpt", "data.f0_ckpt", "vocoder.ckpt", "config.json"):
        path = weights[key]
        assert str(path) in out, key  # absolute
        assert f"sha256 {sha256(path)}" in out, key
    assert re.search(r"^ok +data\.encoder_ckpt +ContentVec", out, re.M)
    assert f"loads: ContentVec (fairseq checkpoint), {TINY_FAIRSEQ_CHANNELS} channels" in out
    assert "loads: RMVPE" in out
    assert "loads: 44100 Hz, hop 512, 128 mel bins" in out  # the config.json, fitted to data.*
    assert re.search(r"loads: NSF-HiFiGAN generator, [0-9.]+ M parameters", out)
    assert "MISSING" not in out and "BROKEN" not in out and "every weight file it needs is here and loads" in out


def test_missing_files_are_one_line_each_naming_key_path_and_source(tmp_path):
    result = CliRunner().invoke(main, ["check-weights", "-c", REFLOW])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4 and len(result.stderr.splitlines()) == 4, result.stderr
    encoder, f0, config_json, vocoder = errors
    assert encoder.startswith(f"error: data.encoder_ckpt: {tmp_path}/pretrain/contentvec/checkpoint_best_legacy_500.pt "
                              "does not exist; get checkpoint_best_legacy_500.pt (about 200 MB) from "
                              "https://ibm.ent.box.com/")  # fmt: skip
    assert f0.startswith(f"error: data.f0_ckpt: {tmp_path}/pretrain/rmvpe/model.pt does not exist; get rmvpe.zip")
    assert "https://github.com/yxlllc/RMVPE/releases/download/230917/rmvpe.zip" in f0
    assert config_json.startswith(f"error: vocoder.ckpt: {tmp_path}/pretrain/nsf_hifigan/config.json does not exist")
    assert vocoder.startswith(f"error: vocoder.ckpt: {tmp_path}/pretrain/nsf_hifigan/model does not exist")
    assert "nsf_hifigan_44.1k_hop512_128bin_2024.02.zip" in vocoder


def test_files_that_do_not_load_are_named_with_the_loaders_reason(weights):
    # The RMVPE file where the encoder belongs; a vocoder config.json for another hop.
    write_vocoder(weights["vocoder.ckpt"].parent, hop_size=256, upsample_rates=(8, 8, 2, 2), upsample_kernel_sizes=(16, 16, 4, 4))
    result = CliRunner().invoke(main, ["check-weights", "-c", REFLOW, "--set", TINY_UNITS,
                                       "--set", f"data.encoder_ckpt={weights['data.f0_ckpt']}"])  # fmt: skip
    assert result.exit_code == 1
    errors = result.stderr.splitlines()
    assert len(errors) == 3, result.stderr  # encoder, vocoder config.json, and the weights it keeps from loading
    assert errors[0].startswith("error: data.encoder_ckpt: does not load: data.encoder_ckpt: ")
    assert str(weights["data.f0_ckpt"]) in errors[0]
    assert errors[1].startswith("error: vocoder.ckpt: does not load: ") and "hop_size=256" in errors[1]
    assert "data.block_size=512" in errors[1]
    assert errors[2].startswith("error: vocoder.ckpt: present (not loaded: its config.json does not load)")
    assert re.search(r"^ok +data\.f0_ckpt", result.stdout, re.M)  # the RMVPE file itself is fine
    assert re.search(r"^BROKEN +data\.encoder_ckpt", result.stdout, re.M)


def test_a_channel_count_that_does_not_fit_the_file(tmp_path):
    soft = tmp_path / "hubert-soft.pt"
    _write_hubert_soft(soft)
    config = ["-c", str(ROOT / "projects" / "demo" / "config.yaml"), "--set", "data.encoder=hubertsoft",
              "--set", f"data.encoder_ckpt={soft}"]  # fmt: skip
    result = CliRunner().invoke(main, ["check-weights", *config, "--set", "data.encoder_out_channels=256"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: data.encoder_ckpt: does not load: data.encoder_out_channels: 256 but encoder 'hubertsoft' gives "
        f"{TINY_SOFT.n_units} channels; set it to {TINY_SOFT.n_units} (the file to use: HuBERT-Soft (bshall), "
        "about 380 MB, from https://github.com/bshall/hubert/releases/download/v0.1/hubert-soft-0d54a1f4.pt)"
    )
    fitted = check(*config, "--set", f"data.encoder_out_channels={TINY_SOFT.n_units}")
    assert fitted.exit_code == 0, fitted.output
    assert f"sha256 {sha256(soft)}" in fitted.output


def test_train_only_lets_the_vocoder_weights_be_missing(weights):
    weights["vocoder.ckpt"].unlink()
    result = CliRunner().invoke(main, ["check-weights", "-c", REFLOW, "--set", TINY_UNITS, "--train-only"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^optional +vocoder\.ckpt .*its weights", result.stdout, re.M)
    without = CliRunner().invoke(main, ["check-weights", "-c", REFLOW, "--set", TINY_UNITS])
    assert without.exit_code == 1
    assert without.stderr.startswith(f"error: vocoder.ckpt: {weights['vocoder.ckpt']} does not exist")


def test_packaged_f0_extractors_are_checked_as_packages(tmp_path):
    """fcpe's weights come with torchfcpe: the check is that it is installed and builds."""
    import importlib.util

    if importlib.util.find_spec("torchfcpe") is None:  # the [f0] extra
        pytest.skip("torchfcpe is not installed")
    result = check("-c", str(ROOT / "projects" / "demo" / "config.yaml"), "--set", "data.f0_extractor=fcpe")
    assert result.exit_code == 0, result.output
    assert re.search(r"^ok +data\.f0_extractor +fcpe \(the torchfcpe wheel's bundled weights\)", result.output, re.M)


def test_a_missing_package_is_one_line_saying_what_to_install():
    import importlib.util

    if importlib.util.find_spec("pyworld") is not None:
        pytest.skip("pyworld is installed here")
    result = CliRunner().invoke(main, ["check-weights", "-c", str(ROOT / "projects" / "demo" / "config.yaml"),
                                       "--set", "data.f0_extractor=dio"])  # fmt: skip
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: data.f0_extractor: does not load: ")
    assert line.endswith("; install: pip install 'mlflow-ddsp[world]'")


def test_no_load_only_looks_and_hashes(weights):
    # A file of another network where the encoder belongs: --no-load does not notice, loading does.
    wrong = ["-c", REFLOW, "--set", TINY_UNITS, "--set", f"data.encoder_ckpt={weights['data.f0_ckpt']}"]
    looked = check(*wrong, "--no-load")
    assert looked.exit_code == 0, looked.output
    assert looked.output.count("present (not loaded)") == 4 and "loads:" not in looked.output
    assert looked.output.count(f"sha256 {sha256(weights['data.f0_ckpt'])}") == 2
    assert looked.output.rstrip().endswith("every weight file it needs is here (not loaded: --no-load)")
    assert CliRunner().invoke(main, ["check-weights", *wrong]).exit_code == 1
