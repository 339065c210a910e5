"""DDSP-SVC 6.1 (RectifiedFlow with LYNXNet): upstream checkpoints load strictly and give upstream's numbers.

The golden file ``tests/data/reflow61_upstream_golden.pt`` was written by
``tests/upstream_golden/make_reflow61_golden.py`` from upstream's own 6.1 code
(branch ``6.1`` at f1f8383c29bc78508c3116a28a6e2ef1ed646172, torch 2.13.0+cpu,
CPU, float32) for two configurations at upstream's default sizes (44.1 kHz,
block 512, n_unit 768, win 2048, 128 mels, LYNXNet 6 x 512, aux 3 x 256,
use_pitch_aug): ``plain`` (n_spk 1, use_norm / use_attention false) and ``attn``
(n_spk 2, both true). It stores upstream's state_dict key names, shapes and
weight checksums (weights from ``recipe_state_dict``), the DDSP stage's audio and
hidden features, inference mels (euler 3 steps from t 0.7, rk4 2 steps from t
0.4), the two training losses (``train()`` mode, t_start 0.7) and one LYNXNet
velocity, with the inputs and seeds.

Measured here (2 threads, as the golden run): LYNXNet velocity and every hidden
feature 0.0; the DDSP audio 6e-8 (our ``complex_gain`` is ``polar(exp(a), b)``
where upstream writes ``exp(a + ib)``); mels 3.8e-6 (euler) and 5.7e-6 (rk4) abs
on values up to 27 (relative 2e-7: the audio's rounding carried through the
log-mel and the flow); losses 2.4e-7 or less. With 1 thread (another reduction
order than the golden's): hidden 1.4e-6, velocity 4e-6, mels 7.6e-6. Tolerances:
1e-5 abs plus 1e-5 relative.
"""

from __future__ import annotations

from pathlib import Path

import librosa
import pytest
import torch
import torch.nn.functional as F

from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.models.combsub_superfast import CombSubSuperFast
from mlflow_ddsp.models.lynxnet import LYNXNet
from mlflow_ddsp.models.naive_v2_diff import NaiveV2Diff
from mlflow_ddsp.models.reflow_svc61 import GENERATION_MARKERS, LynxReflowUnit2Wav, reflow_generation
from test_upstream_parity import RECIPE_SEED, checksums, recipe_state_dict

GOLDEN = Path(__file__).parent / "data" / "reflow61_upstream_golden.pt"
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
CONFIGS = ("plain", "attn")


class UpstreamMel:
    """Stand-in vocoder: ``extract`` is NSF-HiFiGAN's mel (upstream ``nsf_hifigan/nvSTFT.py``, keyshift 0).

    44.1 kHz, n_fft = win 2048, hop 512, 128 bins 40-16000 Hz (librosa filterbank),
    reflect padding of 768 on the left, ``log(clamp(mel, 1e-5))`` of
    ``sqrt(re^2 + im^2 + 1e-9)``.
    """

    def __init__(self) -> None:
        basis = librosa.filters.mel(sr=44100, n_fft=2048, n_mels=128, fmin=40, fmax=16000)
        self.basis = torch.from_numpy(basis).float()
        self.window = torch.hann_window(2048)

    def extract(self, audio: torch.Tensor, sample_rate: int = 0, keyshift: float = 0) -> torch.Tensor:
        pad_left = (2048 - 512) // 2
        pad_right = max((2048 - 512 + 1) // 2, 2048 - audio.shape[-1] - pad_left)
        mode = "reflect" if pad_right < audio.shape[-1] else "constant"
        y = F.pad(audio.unsqueeze(1), (pad_left, pad_right), mode=mode).squeeze(1)
        spec = torch.stft(y, 2048, hop_length=512, win_length=2048, window=self.window, center=False,
                          return_complex=True)  # fmt: skip
        magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
        return torch.log(torch.clamp(torch.matmul(self.basis, magnitude), min=1e-5)).transpose(1, 2)


@pytest.fixture(scope="module")
def mel() -> UpstreamMel:
    return UpstreamMel()


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(GOLDEN, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def models(golden: dict) -> dict[str, tuple[LynxReflowUnit2Wav, dict[str, torch.Tensor]]]:
    """config name -> (our model with the recipe weights loaded strictly, those weights)."""
    out = {}
    for name in CONFIGS:
        model = LynxReflowUnit2Wav(**golden["configs"][name]["kwargs"])
        weights = recipe_state_dict(model.state_dict(), seed=golden["recipe_seed"])
        model.load_state_dict(weights, strict=True)
        out[name] = (model, weights)
    return out


def call_arguments(golden: dict, config: str, case: dict) -> tuple[tuple, dict]:
    """Inputs and keywords of one golden case, as the generator made them."""
    inputs, rows = golden["inputs"], torch.tensor(case["batch"])
    args = tuple(inputs[k][rows, : case["frames"]] for k in ("units", "f0", "volume"))
    kwargs: dict = {"aug_shift": inputs["aug_shift"][rows]}
    if golden["configs"][config]["kwargs"]["n_spk"] > 1:
        if case.get("mix"):
            kwargs["spk_mix_dict"] = {1: 0.3, 2: 0.7}
        else:
            kwargs["spk_id"] = torch.tensor([[1], [2]])[rows]
    return args, kwargs


def test_golden_file_describes_this_setup(golden: dict) -> None:
    assert golden["upstream_branch"] == "6.1"
    assert golden["recipe_seed"] == RECIPE_SEED
    assert GOLDEN.stat().st_size < 1_000_000
    assert set(golden["configs"]) == set(CONFIGS)


def test_stand_in_mel_is_upstreams(golden: dict, mel: UpstreamMel) -> None:
    torch.testing.assert_close(mel.extract(golden["inputs"]["gt_audio"]), golden["gt_spec"], **TOLERANCE)


@pytest.mark.parametrize("config", CONFIGS)
def test_upstream_state_dict_loads_strictly(config: str, golden: dict, models: dict) -> None:
    model, weights = models[config]
    expected = golden["configs"][config]
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected["keys"]
    # the recipe reproduces the weights upstream ran with, so the outputs below compare like with like
    assert set(weights) == set(expected["checksums"])
    for key, (total, total_abs) in checksums(weights).items():
        # float64 sums follow the thread count; ``window`` follows the CPU's vector cos
        rel = 1e-6 if key.endswith(".window") else 1e-9
        assert total == pytest.approx(expected["checksums"][key][0], rel=rel, abs=1e-9), f"recipe drifted at {key}"
        assert total_abs == pytest.approx(expected["checksums"][key][1], rel=rel), f"recipe drifted at {key}"
    assert reflow_generation(weights) == "6.1"
    assert model.hparams == expected["kwargs"]


def test_lynxnet_velocity_matches_upstream(golden: dict, models: dict) -> None:
    model, _ = models["plain"]
    inputs = golden["inputs"]
    with torch.no_grad():
        velocity = model.reflow_model.velocity_fn(
            inputs["velocity_x"], 1000 * inputs["velocity_t"], inputs["velocity_cond"]
        )
    torch.testing.assert_close(velocity, golden["configs"]["plain"]["outputs"]["velocity"]["velocity"], **TOLERANCE)
    # the 3-D form gives the same numbers without the channel axis
    with torch.no_grad():
        flat = model.reflow_model.velocity_fn(
            inputs["velocity_x"][:, 0], 1000 * inputs["velocity_t"], inputs["velocity_cond"]
        )
    torch.testing.assert_close(flat, velocity[:, 0], atol=0, rtol=0)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("case_name", ["ddsp", "ddsp_short"])
def test_ddsp_stage_matches_upstream(config: str, case_name: str, golden: dict, models: dict) -> None:
    model, _ = models[config]
    case = golden["cases"][case_name]
    args, kwargs = call_arguments(golden, config, case)
    model.eval()
    torch.manual_seed(case["seed"])
    with torch.no_grad():
        wav, hidden = model.ddsp_stage(*args, **kwargs)
    expected = golden["configs"][config]["outputs"][case_name]
    torch.testing.assert_close(wav, expected["ddsp_wav"], **TOLERANCE)
    torch.testing.assert_close(hidden, expected["hidden"], **TOLERANCE)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("case_name", ["euler", "rk4"])
def test_inference_mel_matches_upstream(
    config: str, case_name: str, golden: dict, models: dict, mel: UpstreamMel
) -> None:
    model, _ = models[config]
    case = golden["cases"][case_name]
    args, kwargs = call_arguments(golden, config, case)
    model.eval()
    torch.manual_seed(case["seed"])
    with torch.no_grad():
        out = model(*args, vocoder=mel, infer=True, infer_step=case["infer_step"], method=case["method"],
                    t_start=case["t_start"], **kwargs)  # fmt: skip
    torch.testing.assert_close(out, golden["configs"][config]["outputs"][case_name]["mel"], **TOLERANCE)


@pytest.mark.parametrize("config", CONFIGS)
def test_training_losses_match_upstream(config: str, golden: dict, models: dict, mel: UpstreamMel) -> None:
    model, _ = models[config]
    case = golden["cases"]["train"]
    args, kwargs = call_arguments(golden, config, case)
    gt_spec = golden["gt_spec"][torch.tensor(case["batch"]), : case["frames"]]
    model.train()  # attention dropout draws from the global RNG, in upstream's order
    try:
        torch.manual_seed(case["seed"])
        ddsp_loss, reflow_loss = model(*args, vocoder=mel, gt_spec=gt_spec, infer=False,
                                       t_start=case["t_start"], **kwargs)  # fmt: skip
    finally:
        model.eval()
    expected = golden["configs"][config]["outputs"]["train"]
    torch.testing.assert_close(ddsp_loss.detach(), expected["ddsp_loss"], **TOLERANCE)
    torch.testing.assert_close(reflow_loss.detach(), expected["reflow_loss"], **TOLERANCE)
    assert ddsp_loss.requires_grad and reflow_loss.requires_grad


# --- behaviour on small models (fast) ---

SMALL = {"sampling_rate": 16000, "block_size": 64, "win_length": 256, "n_unit": 16, "n_spk": 2, "use_pitch_aug": True,
         "out_dims": 8, "n_layers": 2, "n_chans": 16, "n_aux_layers": 1, "n_aux_chans": 16}  # fmt: skip


class FrameVocoder:
    """Tiny vocoder stand-in: ``extract`` is a log frame energy repeated over ``bins``; ``infer`` records its input."""

    def __init__(self, bins: int, block: int) -> None:
        self.bins, self.block, self.calls = bins, block, []

    def extract(self, audio: torch.Tensor, sample_rate: int = 0, keyshift: float = 0) -> torch.Tensor:
        energy = audio.unfold(1, self.block, self.block).pow(2).mean(-1, keepdim=True)
        return torch.log(energy + 1e-5).expand(-1, -1, self.bins)

    def infer(self, mel: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        self.calls.append((mel, f0))
        return torch.zeros(mel.shape[0], mel.shape[1] * self.block)


def small_inputs(frames: int = 6, batch: int = 2) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(3)
    units = torch.randn(batch, frames, SMALL["n_unit"], generator=gen)
    f0 = torch.full((batch, frames, 1), 200.0)
    volume = torch.full((batch, frames, 1), 0.1)
    return units, f0, volume


@pytest.mark.parametrize("attention", [False, True])
def test_hparams_rebuild_the_same_architecture(attention: bool) -> None:
    model = LynxReflowUnit2Wav(**SMALL, use_norm=attention, use_attention=attention)
    rebuilt = LynxReflowUnit2Wav(**model.hparams)
    assert rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert model.model_type == "RectifiedFlow" and model.upstream_version == "6.1"
    assert (model.sampling_rate_hz, model.block, model.out_dims) == (16000, 64, 8)
    assert model.ddsp_model.model_type == "CombSubSuperFast"


def test_ddsp_only_training_returns_a_zero_reflow_loss() -> None:
    model = LynxReflowUnit2Wav(**SMALL)
    vocoder = FrameVocoder(SMALL["out_dims"], SMALL["block_size"])
    units, f0, volume = small_inputs()
    gt_spec = torch.zeros(2, 6, SMALL["out_dims"])
    ddsp_loss, reflow_loss = model(units, f0, volume, spk_id=torch.tensor([[1], [2]]), vocoder=vocoder,
                                   gt_spec=gt_spec, infer=False, t_start=1.0)  # fmt: skip
    assert ddsp_loss.requires_grad
    assert reflow_loss.shape == () and float(reflow_loss) == 0.0 and reflow_loss.dtype == ddsp_loss.dtype


def test_t_start_one_returns_the_ddsp_mel_and_return_wav_passes_the_f0_tail() -> None:
    model = LynxReflowUnit2Wav(**SMALL).eval()
    vocoder = FrameVocoder(SMALL["out_dims"], SMALL["block_size"])
    units, f0, volume = small_inputs(batch=1)
    f0 = f0 + torch.arange(6.0).reshape(1, 6, 1)
    with torch.no_grad():
        torch.manual_seed(0)
        mel = model(units, f0, volume, spk_id=1, vocoder=vocoder, t_start=1.0)
        torch.manual_seed(0)
        wav, _ = model.ddsp_stage(units, f0, volume, spk_id=1)
        torch.testing.assert_close(mel, vocoder.extract(wav), atol=0, rtol=0)
        # silence_front drops whole frames from the mel, then the vocoder gets f0's last frames
        audio = model(units, f0, volume, spk_id=1, vocoder=vocoder, return_wav=True, infer_step=1,
                      silence_front=2 * 64 / 16000)  # fmt: skip
    mel_in, f0_in = vocoder.calls[-1]
    assert mel_in.shape == (1, 4, SMALL["out_dims"]) and audio.shape == (1, 4 * 64)
    torch.testing.assert_close(f0_in, f0[:, 2:])


def test_missing_vocoder_or_target_is_an_error() -> None:
    model = LynxReflowUnit2Wav(**SMALL)
    units, f0, volume = small_inputs()
    with pytest.raises(ValueError, match="needs a vocoder"):
        model(units, f0, volume, spk_id=1, infer=False, gt_spec=torch.zeros(2, 6, 8))
    with pytest.raises(ValueError, match="inference needs a vocoder"):
        model(units, f0, volume, spk_id=1)
    # without a vocoder, gt_spec stands in for the DDSP mel (upstream's behaviour)
    with torch.no_grad():
        mel = model(units, f0, volume, spk_id=1, gt_spec=torch.zeros(2, 6, 8), infer_step=1, t_start=0.5)
    assert mel.shape == (2, 6, 8)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_aux_layers": -1}, "model.n_aux_layers=-1"),
        ({"n_aux_chans": 0}, "model.n_aux_chans=0"),
        ({"n_aux_chans": 12, "use_attention": True}, "multiple of the 8 attention heads"),
        ({"use_norm": 1}, "model.use_norm=1"),
        ({"use_attention": "yes"}, "model.use_attention='yes'"),
        ({"n_chans": 15}, "model.n_chans=15"),
        ({"n_layers": 0}, "model.n_layers=0"),
        ({"win_length": 64}, "model.win_length=64"),
        ({"n_spk": 0}, "model.n_spk=0"),
        ({"use_pitch_aug": None}, "model.use_pitch_aug=None"),
    ],
)
def test_bad_config_values_name_the_key(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        LynxReflowUnit2Wav(**{**SMALL, **change})


def _prefixed(prefix: str, module: torch.nn.Module) -> dict:
    return {prefix + k: v for k, v in module.state_dict().items()}


def test_reflow_generation_tells_6_0_from_6_1(golden: dict) -> None:
    keys_61 = dict.fromkeys(golden["configs"]["attn"]["keys"])
    ddsp_60 = _prefixed("ddsp_model.", CombSubSuperFast(sampling_rate=16000, block_size=64, win_length=256, n_unit=16))
    flow_60 = _prefixed("reflow_model.velocity_fn.", NaiveV2Diff(mel_channels=8, dim=16, num_layers=2, condition_dim=8))
    flow_61 = _prefixed("reflow_model.velocity_fn.", LYNXNet(in_dims=8, dim_cond=8, n_layers=2, n_chans=16))
    ddsp_61 = {k: None for k in keys_61 if k.startswith("ddsp_model.")}
    assert reflow_generation(keys_61) == "6.1"
    assert reflow_generation({**ddsp_60, **flow_60}) == "6.0"
    assert reflow_generation({**ddsp_61, **flow_60}) is None  # a mix fits neither
    assert reflow_generation({**ddsp_60, **flow_61}) is None
    assert reflow_generation(ddsp_61) is None
    assert reflow_generation({}) is None
    assert set(GENERATION_MARKERS) == {"6.0", "6.1"}
    # and a 6.0 checkpoint does not load into the 6.1 model
    model = LynxReflowUnit2Wav(**SMALL)
    with pytest.raises(RuntimeError, match="stack2"):
        model.load_state_dict({**ddsp_60, **flow_60}, strict=True)
