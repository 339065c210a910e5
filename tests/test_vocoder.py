"""NSF-HiFiGAN vocoder and its log-mel: the same numbers as upstream DDSP-SVC, and one-line errors.

The golden file ``tests/data/vocoder_upstream_golden.pt`` was written by
``tests/upstream_golden/make_vocoder_golden.py`` (read its docstring for the recipe), which
runs *upstream's own code* (master 88f157c03dfea4855e9b7101897bac174fd9b53d:
``nsf_hifigan/nvSTFT.py`` ``STFT.get_mel``, ``nsf_hifigan/models.py`` ``Generator`` through
``reflow/vocoder.py`` ``Vocoder``) on torch 2.13.0+cpu, float32. It holds:

- a fixed synthetic clip ``[1, 44100]`` and upstream's mels of it for the default (openvpi
  44.1 kHz) config at key shifts 0, 2 and -3.5, for a 1000-sample prefix (zero-padding
  branch) and for a small config (22.05 kHz, 80 mels, n_fft 1024, win 800, fmax null) at 1.5;
- upstream's generator output for the default config (batch of two, one with unvoiced
  frames, f0 longer than the mel), the ``nsf-hifigan-log10`` type, and a small resblock "2"
  config, with weights from ``recipe_state_dict`` and ``torch.manual_seed`` before the call;
- upstream's state_dict key -> shape lists for both configs, and checksums of the weights.

Measured when the golden file was written: every mel and every generator output matched
upstream bit for bit (max abs diff 0.0), and the filterbank equals librosa's exactly; the
tests allow 1e-5 (mels, audio) for other torch builds and CPUs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mlflow_ddsp.errors import ConfigError, StateDictMismatchError
from mlflow_ddsp.vocoder import (
    MelExtractor,
    NsfHifiGanGenerator,
    Vocoder,
    VocoderConfig,
    default_vocoder_config,
    load_vocoder,
    mel_filterbank,
    write_vocoder_config,
)
from test_upstream_parity import RECIPE_SEED, checksums, recipe_state_dict

GOLDEN = Path(__file__).parent / "data" / "vocoder_upstream_golden.pt"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def configs(golden: dict) -> dict[str, VocoderConfig]:
    return {name: VocoderConfig.from_dict(data, source=name) for name, data in golden["configs"].items()}


@pytest.fixture(scope="module")
def weights_folder(tmp_path_factory: pytest.TempPathFactory, configs: dict[str, VocoderConfig]) -> Path:
    """``<config name>/model`` + ``config.json`` with the recipe's weights, as the golden file used."""
    root = tmp_path_factory.mktemp("nsf_hifigan")
    for name, config in configs.items():
        folder = root / name
        write_vocoder_config(folder, config)
        state = recipe_state_dict(NsfHifiGanGenerator(config).state_dict(), RECIPE_SEED)
        torch.save({"generator": state}, folder / "model")
    return root


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"{list(a.shape)} vs {list(b.shape)}"
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------- config


def test_golden_file_describes_this_setup(golden: dict, configs: dict[str, VocoderConfig]) -> None:
    assert golden["upstream_commit"] == "88f157c03dfea4855e9b7101897bac174fd9b53d"
    assert golden["recipe_seed"] == RECIPE_SEED
    assert configs["default"] == default_vocoder_config()


def test_config_round_trips_through_config_json(tmp_path: Path) -> None:
    config = default_vocoder_config()
    path = write_vocoder_config(tmp_path, config)
    assert path == tmp_path / "config.json"
    assert VocoderConfig.from_json(path) == config
    data = json.loads(path.read_text())
    assert data["resblock_dilation_sizes"] == [[1, 3, 5]] * 3 and data["upsample_rates"] == [8, 8, 2, 2, 2]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"hop_size": None}, "missing key 'hop_size'"),
        ({"resblock": 1}, "resblock=1"),
        ({"hop_size": 256}, "hop_size=256 is not the product of upsample_rates"),
        ({"upsample_kernel_sizes": [16, 16]}, "upsample_kernel_sizes has 2 entries"),
        ({"resblock_dilation_sizes": [[1, 3, 5]]}, "resblock_dilation_sizes has 1 entries"),
        ({"win_size": 4096}, "win_size=4096"),
        ({"fmax": 30}, "fmax=30"),
        ({"num_mels": "128"}, "num_mels='128'"),
    ],
)
def test_config_refuses_bad_values_naming_file_and_key(tmp_path: Path, change: dict, match: str) -> None:
    data = default_vocoder_config().to_dict()
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=match) as info:
        VocoderConfig.from_json(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text", [None, "{not json", "[1, 2]"])
def test_missing_or_garbled_config_json_is_one_line(tmp_path: Path, text: str | None) -> None:
    path = tmp_path / "config.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        VocoderConfig.from_json(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_load_vocoder_without_config_json_names_the_expected_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config.json not found") as info:
        load_vocoder(tmp_path / "model")
    assert str(tmp_path / "config.json") in str(info.value)


def test_unknown_vocoder_type(tmp_path: Path) -> None:
    write_vocoder_config(tmp_path, default_vocoder_config())
    with pytest.raises(ConfigError, match="vocoder.type='hifigan'"):
        load_vocoder(tmp_path / "model", vocoder_type="hifigan")


# --------------------------------------------------------------------------- mel


def test_filterbank_equals_librosa() -> None:
    librosa = pytest.importorskip("librosa")
    cases = [(44100, 2048, 128, 40, 16000), (22050, 1024, 80, 0, None), (16000, 512, 40, 55.5, 7600)]
    for sr, n_fft, n_mels, fmin, fmax in cases:
        ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
        theirs = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        assert abs(ours - theirs).max() <= 1e-7 * abs(theirs).max()


@pytest.mark.parametrize(
    "case", ["default_k0", "default_k2", "default_k-3.5", "default_short", "small_k1.5"]
)
def test_mel_matches_upstream(golden: dict, configs: dict[str, VocoderConfig], case: str) -> None:
    spec = golden["mel_cases"][case]
    extractor = MelExtractor(configs[spec["config"]])
    audio = golden["audio"][:, : spec["samples"]]
    mel = extractor(audio, keyshift=spec["keyshift"])
    assert mel.shape[1] == extractor.num_frames(spec["samples"], spec["keyshift"])
    assert max_diff(mel, golden["mels"][case]) <= TOLERANCE


def test_mel_frames_follow_upstreams_formula() -> None:
    config = default_vocoder_config()
    extractor = MelExtractor(config)
    for n in (2048, 5000, 44100):
        expected = (n + (config.win_size - config.hop_size) - config.win_size) // config.hop_size + 1
        assert extractor(torch.zeros(1, n)).shape == (1, expected, 128)


def test_mel_extraction_is_differentiable() -> None:
    audio = (0.1 * torch.randn(2, 4096, generator=torch.Generator().manual_seed(0))).requires_grad_()
    mel = MelExtractor(default_vocoder_config())(audio, keyshift=1.0)
    mel.sum().backward()
    assert audio.grad is not None and torch.isfinite(audio.grad).all() and audio.grad.abs().sum() > 0


def test_extract_resamples_other_rates_with_soxr(tmp_path: Path, golden: dict) -> None:
    write_vocoder_config(tmp_path, default_vocoder_config())
    vocoder = load_vocoder(tmp_path / "model")
    audio = golden["audio"]
    assert torch.equal(vocoder.extract(audio, sample_rate=44100), vocoder.extract(audio))
    half = audio[:, ::2].contiguous()  # same content at 22.05 kHz (aliasing aside)
    mel = vocoder.extract(half, sample_rate=22050)
    assert mel.shape == golden["mels"]["default_k0"].shape


# --------------------------------------------------------------------------- generator


@pytest.mark.parametrize("name", ["default", "small"])
def test_state_dict_keys_and_shapes_equal_upstreams(golden: dict, configs: dict[str, VocoderConfig], name: str) -> None:
    ours = [(key, list(value.shape)) for key, value in NsfHifiGanGenerator(configs[name]).state_dict().items()]
    assert ours == [(key, list(shape)) for key, shape in golden["state_dict_shapes"][name]]


@pytest.mark.parametrize("name", ["default", "small"])
def test_recipe_reproduces_the_golden_weights(golden: dict, weights_folder: Path, name: str) -> None:
    state = torch.load(weights_folder / name / "model", weights_only=True)["generator"]
    expected = golden["checksums"][name]
    assert set(state) == set(expected)
    for key, (total, total_abs) in checksums(state).items():
        assert total == pytest.approx(expected[key][0], rel=1e-9, abs=1e-9), key
        assert total_abs == pytest.approx(expected[key][1], rel=1e-9), key


@pytest.mark.parametrize("case", ["default_batch2", "default_log10", "small_resblock2"])
def test_generator_matches_upstream(golden: dict, weights_folder: Path, case: str) -> None:
    spec = golden["generator_cases"][case]
    vocoder = load_vocoder(weights_folder / spec["config"] / "model", vocoder_type=spec["type"])
    index = torch.tensor(spec["batch"])
    mel = golden["inputs"][f"{spec['config']}_mel"][index]
    f0 = golden["inputs"][f"{spec['config']}_f0"][index]
    torch.manual_seed(spec["seed"])
    audio = vocoder.infer(mel, f0)
    expected = golden["outputs"][case].squeeze(1)  # upstream keeps a channel axis
    assert audio.shape == (len(spec["batch"]), mel.shape[1] * vocoder.hop_size)
    assert expected.abs().max() > 0.05, "golden output is silent: the comparison would prove nothing"
    assert max_diff(audio, expected) <= TOLERANCE


def test_seed_and_generator_argument_draw_the_same(golden: dict, weights_folder: Path) -> None:
    vocoder = load_vocoder(weights_folder / "small" / "model")
    mel, f0 = golden["inputs"]["small_mel"], golden["inputs"]["small_f0"]
    torch.manual_seed(3)
    first = vocoder.infer(mel, f0)  # loads the weights lazily without consuming the global RNG
    torch.manual_seed(3)
    assert torch.equal(vocoder.infer(mel, f0), first)
    assert torch.equal(vocoder.infer(mel, f0, generator=torch.Generator().manual_seed(3)), first)
    assert not torch.equal(vocoder.infer(mel, f0), first)  # the noise is random


def test_vocoder_attributes_and_lazy_weights(tmp_path: Path) -> None:
    write_vocoder_config(tmp_path, default_vocoder_config())
    vocoder = load_vocoder(tmp_path / "model", vocoder_type="nsf-hifigan-log10")
    assert (vocoder.vocoder_type, vocoder.path, vocoder.sampling_rate, vocoder.hop_size, vocoder.dimension) == (
        "nsf-hifigan-log10", tmp_path / "model", 44100, 512, 128,
    )  # fmt: skip
    assert not vocoder.has_weights and vocoder.model is None
    assert vocoder.extract(torch.zeros(1, 4096)).shape == (1, 8, 128)  # mels need only config.json
    assert vocoder.to("cpu") is vocoder
    given = Vocoder("nsf-hifigan", tmp_path / "elsewhere" / "model", config=default_vocoder_config())
    assert given.config == vocoder.config and not given.has_weights  # no config.json read


# --------------------------------------------------------------------------- weights errors


def test_missing_weights_say_what_the_file_is(tmp_path: Path) -> None:
    write_vocoder_config(tmp_path, default_vocoder_config())
    vocoder = load_vocoder(tmp_path / "model")
    with pytest.raises(ConfigError) as info:
        vocoder.infer(torch.zeros(1, 2, 128), torch.zeros(1, 2, 1))
    message = str(info.value)
    assert str(tmp_path / "model") in message and "openvpi" in message and "pretrain/nsf_hifigan/model" in message
    assert "\n" not in message


def test_weights_of_another_config_name_the_mismatches(tmp_path: Path, weights_folder: Path) -> None:
    write_vocoder_config(tmp_path, default_vocoder_config())
    (tmp_path / "model").write_bytes((weights_folder / "small" / "model").read_bytes())
    with pytest.raises(StateDictMismatchError) as info:
        load_vocoder(tmp_path / "model").load()
    message = str(info.value)
    assert "shape mismatch" in message and "missing key" in message and "unexpected key" in message
    assert "noise_convs.0.weight: checkpoint [32, 1, 64] vs model [256, 1, 128]" in message
    assert "\n" not in message


@pytest.mark.parametrize("content", ["not_a_dict", "no_generator", "garbage"])
def test_a_file_that_is_no_generator_is_one_line(tmp_path: Path, content: str) -> None:
    write_vocoder_config(tmp_path, default_vocoder_config())
    path = tmp_path / "model"
    if content == "garbage":
        path.write_bytes(b"\x00 not a torch file")
    else:
        torch.save(torch.zeros(3) if content == "not_a_dict" else {"model": {}}, path)
    with pytest.raises(ConfigError) as info:  # StateDictMismatchError is a ConfigError
        load_vocoder(path).load()
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_parametrization_key_names_load(
    tmp_path: Path, configs: dict[str, VocoderConfig], weights_folder: Path
) -> None:
    state = torch.load(weights_folder / "small" / "model", weights_only=True)["generator"]
    renamed = {
        key.replace(".weight_g", ".parametrizations.weight.original0").replace(
            ".weight_v", ".parametrizations.weight.original1"
        ): value
        for key, value in state.items()
    }
    write_vocoder_config(tmp_path, configs["small"])
    torch.save({"generator": renamed}, tmp_path / "model")
    loaded = load_vocoder(tmp_path / "model").load().state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
