"""VoiceConverter and `mlflow-ddsp infer`: upstream main.py's semantics on a tiny random model.

The model is a CombSubFast with random weights on the weights-free ``logmel``
encoder (128 units, 2 speakers); nothing is downloaded. A spy on the model's
forward records what the model is given (f0, speaker) and what it returns, so
tests check the pipeline around it rather than the untrained sound.
"""

from __future__ import annotations

import dataclasses
import platform

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.audio import resample, save_wav
from mlflow_ddsp.cli import main
from mlflow_ddsp.config import parse_config
from mlflow_ddsp.errors import AudioError, ConfigError
from mlflow_ddsp.inference import VoiceConverter, output_mask, parse_speaker_mix
from mlflow_ddsp.models import build_model_from_config
from mlflow_ddsp.subnormals import subnormals_flushed
from mlflow_ddsp.training.session import intra_op_threads

SR = 44100
BLOCK = 512


def tiny_config(**model):
    return parse_config(
        {
            "data": {"encoder": "logmel", "encoder_out_channels": 128, "sampling_rate": SR, "block_size": BLOCK},
            "model": {"type": "CombSubFast", "n_spk": 2, **model},
            "device": "cpu",
        }
    )


@pytest.fixture(scope="module")
def cfg():
    return tiny_config()


@pytest.fixture(scope="module")
def model(cfg):
    torch.manual_seed(0)
    return build_model_from_config(cfg).eval()


@pytest.fixture(scope="module")
def converter(model, cfg):
    return VoiceConverter(model, cfg)


class Spy:
    """Wraps ``model.forward`` for one test: records inputs and outputs per call."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self._forward = model.forward

    def __enter__(self):
        def forward(units, f0, volume, spk_id=None, spk_mix_dict=None, **kwargs):
            out = self._forward(units, f0, volume, spk_id=spk_id, spk_mix_dict=spk_mix_dict, **kwargs)
            self.calls.append({"units": units.clone(), "f0": f0.clone(), "spk_id": spk_id, "mix": spk_mix_dict, "out": out.clone()})
            return out

        self.model.forward = forward  # an instance attribute shadows the class method
        return self

    def __exit__(self, *exc):
        del self.model.forward


def sung(seconds, f0=220.0, level=0.3, sr=SR):
    """A voiced tone with harmonics (parselmouth tracks it reliably)."""
    t = np.arange(int(round(seconds * sr))) / sr
    x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3))
    return (level * x / 1.8).astype(np.float32)


def pause(seconds, level=1e-4, seed=0, sr=SR):
    """-80 dB noise: silent to the slicer (-40 dB) and the mask (-60 dB)."""
    return (level * np.random.default_rng(seed).standard_normal(int(round(seconds * sr)))).astype(np.float32)


# ---------------------------------------------------------------- lengths, rates, f0


def test_output_is_at_the_model_rate_with_the_input_duration(converter):
    audio = sung(2.0, sr=48000)
    out = converter.convert(audio, 48000, seed=0)
    assert out.dtype == np.float32
    assert out.shape == resample(audio, 48000, SR).shape == (88200,)
    assert abs(out.shape[0] - 2.0 * SR) <= BLOCK
    assert np.isfinite(out).all() and np.abs(out).max() > 0


@pytest.mark.parametrize("n", [1, 100, BLOCK - 1, BLOCK, BLOCK + 1])
def test_very_short_inputs_keep_their_length(converter, n):
    out = converter.convert(sung(1.0)[:n], SR, seed=0)
    assert out.shape == (n,)


def test_seed_makes_the_output_reproducible(converter):
    audio = sung(1.0)
    a, b = converter.convert(audio, SR, seed=3), converter.convert(audio, SR, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, converter.convert(audio, SR, seed=4))


@pytest.mark.parametrize("key", [12.0, -12.0, 7.0, -3.5])
def test_key_shift_scales_the_f0_the_model_sees(converter, model, key):
    audio = sung(1.0, f0=220.0)
    with Spy(model) as plain:
        converter.convert(audio, SR, key=0.0, seed=0)
    with Spy(model) as shifted:
        converter.convert(audio, SR, key=key, seed=0)
    f0, f0_shifted = plain.calls[0]["f0"], shifted.calls[0]["f0"]
    assert f0.shape == f0_shifted.shape == (1, SR // BLOCK + 1, 1)
    torch.testing.assert_close(f0_shifted, f0 * 2 ** (key / 12), rtol=1e-5, atol=1e-4)
    assert abs(float(f0[0, 20:-20].median()) - 220.0) < 3.0  # the tracker found the tone


def test_unvoiced_f0_is_raised_to_the_extractor_floor(converter, model):
    with Spy(model) as spy:
        converter.convert(pause(1.0), SR, seed=0)
    assert torch.all(spy.calls[0]["f0"] == converter.f0_range[0])


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64", reason="FTZ/DAZ: Linux x86-64")
def test_cpu_conversion_runs_with_subnormals_flushed_on_every_thread_and_restores_after(converter, model):
    seen = []
    forward = model.forward

    def recording(*args, **kwargs):
        seen.append(subnormals_flushed())
        return forward(*args, **kwargs)

    model.forward = recording
    try:
        with intra_op_threads(2):
            torch.full((1 << 20,), 1.0).mul_(2)  # this process's second OpenMP worker exists before the conversion
            assert not subnormals_flushed()
            converter.convert(sung(0.5), SR, seed=0)
            assert seen == [True]  # a trained model's synthesis makes subnormals (mlflow_ddsp.subnormals)
            assert not subnormals_flushed()
    finally:
        del model.forward


# ---------------------------------------------------------------- speakers


def test_speaker_id_and_mix_reach_the_model(converter, model):
    audio = sung(0.5)
    with Spy(model) as spy:
        converter.convert(audio, SR, spk_id=2, seed=0)
        converter.convert(audio, SR, spk_mix={1: 0.25, 2: 0.75}, seed=0)
    assert spy.calls[0]["spk_id"] == 2 and spy.calls[0]["mix"] is None
    assert spy.calls[1]["mix"] == {1: 0.25, 2: 0.75}
    one, two = (converter.convert(audio, SR, spk_id=s, seed=0) for s in (1, 2))
    assert not np.allclose(one, two)  # the embedding changes the sound


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(spk_id=0), "unknown speaker id 0; ids are 1..2"),
        (dict(spk_id=3), "unknown speaker id 3; ids are 1..2"),
        (dict(spk_id=True), "unknown speaker id True"),
        (dict(spk_mix={3: 1.0}), "unknown speaker 3; ids are 1..2"),
        (dict(spk_mix={0: 0.5, 1: 0.5}), "unknown speaker 0"),
        (dict(spk_mix={"1": 1.0}), "unknown speaker '1'"),
        (dict(spk_mix={}), "non-empty"),
        (dict(spk_mix={1: float("nan")}), "must be finite"),
        (dict(spk_mix={1: float("inf"), 2: 0.0}), "must be finite"),
        (dict(spk_mix={1: "lots"}), "not a number"),
        (dict(spk_mix={1: 0.0, 2: 0.0}), "sum to more than 0"),
        (dict(spk_mix={1: -1.0, 2: 0.5}), "sum to more than 0"),
    ],
)
def test_bad_speakers_are_rejected(converter, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        converter.convert(sung(0.2), SR, **kwargs)


def test_one_speaker_model_only_has_speaker_one():
    cfg = tiny_config(n_spk=1)
    converter = VoiceConverter(build_model_from_config(cfg), cfg)
    assert converter.convert(sung(0.2), SR, spk_id=1, seed=0).shape == (int(0.2 * SR),)
    with pytest.raises(ConfigError, match=r"ids are 1 \(the model has one speaker\)"):
        converter.convert(sung(0.2), SR, spk_id=2)


@pytest.mark.parametrize(
    "text, expected",
    [("1:0.5,2:0.5", {1: 0.5, 2: 0.5}), (" 2 : 1 ", {2: 1.0}), ("{1: 0.3, 2: 0.7}", {1: 0.3, 2: 0.7}), ("1:1,", {1: 1.0})],
)
def test_parse_speaker_mix(text, expected):
    assert parse_speaker_mix(text) == expected


@pytest.mark.parametrize("text, match", [("", "is empty"), ("1=0.5", "not SPEAKER_ID:WEIGHT"),
                                         ("a:1", "not SPEAKER_ID:WEIGHT"), ("1:0.5,1:0.5", "appears twice")])  # fmt: skip
def test_parse_speaker_mix_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_speaker_mix(text)


# ---------------------------------------------------------------- mask


def reference_mask(volume, threshold_db, block):
    """main.py's mask, with ddsp.core.upsample (torch linear interpolation, align_corners)."""
    mask = (volume > 10 ** (float(threshold_db) / 20)).astype("float")
    mask = np.pad(mask, (4, 4), constant_values=(mask[0], mask[-1]))
    mask = np.array([np.max(mask[n : n + 9]) for n in range(len(mask) - 8)])
    signal = torch.from_numpy(mask).float()[None, None, :]
    up = torch.nn.functional.interpolate(
        torch.cat((signal, signal[:, :, -1:]), 2), size=signal.shape[-1] * block + 1, mode="linear", align_corners=True
    )
    return up[0, 0, :-1].numpy()


@pytest.mark.parametrize("seed", range(4))
def test_output_mask_matches_upstream(seed):
    rng = np.random.default_rng(seed)
    volume = 10 ** rng.uniform(-5, -1, 200)  # -100..-20 dB, on and off at random
    volume[50:80] = 1e-6  # a long gap: the dilation must not fill it
    np.testing.assert_allclose(output_mask(volume, -60.0, BLOCK), reference_mask(volume, -60.0, BLOCK), atol=1e-5)


def test_mask_silences_the_output_where_the_input_is_silent(converter):
    audio = np.concatenate([sung(1.0), pause(1.0), sung(1.0)])
    out = converter.convert(audio, SR, seed=0)
    # a frame's volume reaches half a block either way, the mask opens 4 frames
    # early and ramps over one more block
    margin = 6 * BLOCK
    assert np.all(out[SR + margin : 2 * SR - margin] == 0)
    assert np.abs(out[: SR - margin]).max() > 0 and np.abs(out[2 * SR + margin :]).max() > 0
    unmasked = converter.convert(audio, SR, seed=0, threshold_db=-200.0)
    assert np.abs(unmasked[SR + margin : 2 * SR - margin]).max() > 0  # the model itself is not silent there


# ---------------------------------------------------------------- long inputs


def test_long_input_is_sliced_and_cross_faded_like_upstream(converter, model):
    phrases = [np.concatenate([sung(5.5, f0=180.0 + 40 * i), pause(0.8, seed=i)]) for i in range(3)]
    audio = np.concatenate([*phrases, sung(25.0 - 3 * 6.3)])
    assert audio.shape == (25 * SR,)
    with Spy(model) as spy:
        # -200 dB: no masking, so the joins are all the model's own output
        result = converter.convert_detailed(audio, SR, seed=0, threshold_db=-200.0)
    out, segments = result.audio, result.segments
    assert out.shape == (25 * SR,)
    assert len(segments) == len(spy.calls) >= 4  # 3 cuts, plus any at the pauses' edges
    assert segments[0][0] == 0 and segments[-1][1] == audio.size // BLOCK
    assert all(a[1] == b[0] for a, b in zip(segments, segments[1:]))

    # upstream's assembly of what the model returned: np.append / cross_fade over one block
    reference = np.zeros(0)
    for (start, _), call in zip(segments, spy.calls):
        piece = call["out"][0].numpy().astype(np.float64)
        if start == 0:
            reference = piece
            continue
        idx, fade = start * BLOCK, reference.shape[0] - start * BLOCK
        assert fade == BLOCK  # consecutive segments overlap by exactly one frame
        k = np.linspace(0, 1, fade)
        reference = np.concatenate([reference[:idx], (1 - k) * reference[idx:] + k * piece[:fade], piece[fade:]])
    np.testing.assert_allclose(out, reference[: audio.size], rtol=1e-5, atol=1e-6)

    # no clicks: across each join the step is bounded by both pieces' own steps plus the fade
    for (start, _), prev, nxt in zip(segments[1:], spy.calls, spy.calls[1:]):
        a = prev["out"][0, -BLOCK:].numpy().astype(np.float64)
        b = nxt["out"][0, :BLOCK].numpy().astype(np.float64)
        bound = max(np.abs(np.diff(a)).max(), np.abs(np.diff(b)).max()) + np.abs(a - b).max() / (BLOCK - 1)
        join = out[start * BLOCK - 1 : start * BLOCK + BLOCK + 1].astype(np.float64)
        assert np.abs(np.diff(join)).max() <= bound * 1.001 + 1e-6


def test_progress_is_reported_per_segment(converter):
    audio = np.concatenate([sung(5.5), pause(1.0), sung(2.0)])
    seen = []
    result = converter.convert_detailed(audio, SR, seed=0, progress=lambda done, total: seen.append((done, total)))
    n = len(result.segments)
    assert n == 2 and seen == [(i, n) for i in range(n + 1)]
    assert set(result.timings) == {"resample", "f0", "volume", "units", "synthesis", "join"}


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "audio, rate, kwargs, error, match",
    [
        (np.zeros(0, np.float32), SR, {}, AudioError, "empty"),
        (np.array([0.1, np.nan, 0.2], np.float32), SR, {}, AudioError, "1 NaN/inf"),
        (np.array([0.1, np.inf], np.float32), SR, {}, AudioError, "NaN/inf"),
        (np.zeros((2, 100), np.float32), SR, {}, AudioError, "mono"),
        (np.zeros(100, np.int16), SR, {}, AudioError, "float samples in"),
        (np.zeros(100, np.float32), 0, {}, AudioError, "positive"),
        (np.zeros(100, np.float32), -8000, {}, AudioError, "positive"),
        (np.zeros(100, np.float32), float("inf"), {}, AudioError, "positive"),
        (np.zeros(100, np.float32), 22050.5, {}, AudioError, "whole number"),
        (np.zeros(1, np.float32), 192000, {}, AudioError, "too short"),
        (np.zeros(100, np.float32), SR, dict(key=40), ConfigError, r"key=40.0 semitones must be within \+-36"),
        (np.zeros(100, np.float32), SR, dict(key=float("nan")), ConfigError, "key=nan"),
        (np.zeros(100, np.float32), SR, dict(threshold_db=6.0), ConfigError, "threshold=6.0 dB"),
        (np.zeros(100, np.float32), SR, dict(f0_extractor="rmvpe"), ConfigError, "data.f0_ckpt: 'pretrain/rmvpe/model.pt' does not exist"),
        (np.zeros(100, np.float32), SR, dict(f0_extractor="yin"), ConfigError, "unknown extractor 'yin'"),
    ],
)
def test_bad_requests_fail_with_one_line(converter, audio, rate, kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        converter.convert(audio, rate, **kwargs)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- from_checkpoint


def test_from_checkpoint_rebuilds_the_same_converter(converter, model, cfg):
    payload = {"global_step": 10, "model": model.state_dict()}
    loaded = VoiceConverter.from_checkpoint(payload, cfg.to_yaml())
    audio = sung(0.5)
    np.testing.assert_array_equal(loaded.convert(audio, SR, seed=1), converter.convert(audio, SR, seed=1))


def test_from_checkpoint_errors(model, cfg):
    payload = {"global_step": 10, "model": model.state_dict()}
    with pytest.raises(ConfigError, match="no config.yaml"):
        VoiceConverter.from_checkpoint(payload, b"")
    with pytest.raises(ConfigError, match="no 'model' state_dict"):
        VoiceConverter.from_checkpoint({"global_step": 10}, cfg)
    with pytest.raises(ConfigError, match=r"^the checkpoint holds weights of model.n_spk=2; its config.yaml has "
                       r"model.n_spk=1: the config.yaml is not the one these weights were trained with$"):
        VoiceConverter.from_checkpoint(payload, tiny_config(n_spk=1))  # no speaker embedding there
    wider = tiny_config(pcmer_norm=True)  # what the tensors cannot show loads: pcmer_norm shapes nothing
    assert VoiceConverter.from_checkpoint(payload, wider).model.hparams["pcmer_norm"] is True
    other = parse_config({"data": {"encoder": "contentvec768l12"}, "model": {"type": "CombSubFast"}})
    weights = {"model": build_model_from_config(other).state_dict()}
    with pytest.raises(ConfigError, match="data.encoder_ckpt"):
        VoiceConverter.from_checkpoint(weights, other)
    with pytest.raises(ConfigError, match="does-not-exist.pt"):
        VoiceConverter.from_checkpoint(weights, other, encoder_ckpt="does-not-exist.pt")


def test_model_and_config_must_agree(model):
    with pytest.raises(ConfigError, match=r"^the model was built with model.n_spk=2; the config has model.n_spk=1: "
                       r"use the model's own config$"):
        VoiceConverter(model, tiny_config(n_spk=1))


# ---------------------------------------------------------------- CLI


@pytest.fixture
def registered(embedded, model_name, model, cfg):
    queue = CheckpointQueue(model_name, 10, None, tracking_uri=embedded.uri, experiment=embedded.experiment, config=cfg.to_yaml())
    try:
        queue.save(10, model).result()
    finally:
        queue.close()
    return embedded, model_name


def test_cli_infer_writes_the_converted_wav(registered, tmp_path):
    backend, name = registered
    source = tmp_path / "in.wav"
    save_wav(source, np.concatenate([sung(1.0, sr=22050), pause(0.5, sr=22050)]), 22050)
    target = tmp_path / "out" / "converted.wav"
    result = CliRunner().invoke(
        main,
        ["--tracking-uri", backend.uri, "infer", "-m", f"models:/{name}@rolling", "-i", str(source), "-o", str(target),
         "-k", "-3", "--spk-mix", "1:0.5,2:0.5"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data, rate = sf.read(target)
    assert rate == SR and data.shape == (int(1.5 * SR),)
    assert np.abs(data).max() > 0
    line = result.stdout.strip()
    assert "\n" not in line
    assert f"{name} v1 (step 10)" in line and "1.50 s in, 1.50 s out at 44100 Hz" in line
    assert line.endswith(("x faster than real time", "x slower than real time"))


@pytest.mark.parametrize(
    "replace, extra, match",
    [
        ({}, ["--spk-id", "5"], "error: spk_id=5: unknown speaker id 5; ids are 1..2"),
        ({}, ["--spk-mix", "1-0.5"], "error: speaker mix '1-0.5'"),
        ({}, ["-k", "48"], "error: key=48.0 semitones"),
        ({"-m": "models:/nobody@rolling"}, [], "error: "),
        ({"-m": "runs:/abc/model"}, [], "error: model URI 'runs:/abc/model' is not supported"),
        ({"-i": "missing.wav"}, [], "error: Invalid value for '-i' / '--input': File 'missing.wav' does not exist"),
    ],
)
def test_cli_infer_errors_are_one_line(registered, tmp_path, replace, extra, match):
    backend, name = registered
    source = tmp_path / "in.wav"
    save_wav(source, sung(0.3), SR)
    options = {"-m": f"models:/{name}/1", "-i": str(source), "-o": str(tmp_path / "out.wav"), **replace}
    argv = ["--tracking-uri", backend.uri, "infer", *[x for kv in options.items() for x in kv], *extra]
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == (2 if "-i" in replace else 1)  # a usage error (checked by click) is 2
    assert result.stderr.strip().startswith(match) and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out.wav").exists()


def test_a_model_whose_f0_extractor_cannot_load_here_converts_with_parselmouth(model, tmp_path, monkeypatch, caplog):
    # Models trained before rmvpe/fcpe/crepe ran here say 'rmvpe' in their config but were
    # trained on parselmouth f0: without the weights file they must still load.
    monkeypatch.chdir(tmp_path)  # no pretrain/rmvpe/model.pt here
    cfg = tiny_config()
    cfg = cfg.replace(data=dataclasses.replace(cfg.data, f0_extractor="rmvpe"))
    with caplog.at_level("WARNING"):
        converter = VoiceConverter(model, cfg)
    assert converter.default_f0_extractor == "parselmouth"
    assert "data.f0_ckpt: 'pretrain/rmvpe/model.pt' does not exist" in caplog.text
    assert converter.convert(sung(0.3), SR).size > 0
    with pytest.raises(ConfigError, match="data.f0_ckpt"):  # asking for it explicitly still fails
        converter.convert(sung(0.3), SR, f0_extractor="rmvpe")


def test_rmvpe_from_data_f0_ckpt_converts(model, tmp_path):
    from mlflow_ddsp.features.rmvpe import Rmvpe, RmvpeDims

    torch.manual_seed(0)
    net = Rmvpe(RmvpeDims(n_blocks=1, n_stages=2, n_inters=1, base_channels=4, gru_hidden=8))
    torch.save({"model": net.state_dict()}, tmp_path / "rmvpe.pt")
    cfg = tiny_config()
    cfg = cfg.replace(data=dataclasses.replace(cfg.data, f0_extractor="rmvpe", f0_ckpt=str(tmp_path / "rmvpe.pt")))
    converter = VoiceConverter(model, cfg)
    assert converter.default_f0_extractor == "rmvpe"
    assert converter.convert(sung(0.3), SR).size > 0
