"""End-to-end audio of the cascade models through the real NSF-HiFiGAN, against upstream.

The golden file ``tests/data/end_to_end_upstream_golden.pt`` was written by
``tests/upstream_golden/make_end_to_end_golden.py --upstream-master PATH --upstream-61 PATH
--out FILE`` from *upstream's own code*: ``reflow/vocoder.py`` ``Unit2Wav`` (6.0, master
88f157c03dfea4855e9b7101897bac174fd9b53d), the same file of branch ``6.1``
(f1f8383c29bc78508c3116a28a6e2ef1ed646172; its LYNXNet ``Unit2Wav``) and
``diffusion/vocoder.py`` ``Unit2WavFast`` (5.0, master), each called with
``return_wav=True`` and upstream's own ``Vocoder('nsf-hifigan', ...)`` of the same file
(torch 2.13.0+cpu, float32, 2 CPU threads). The models run at upstream's default sizes
(44.1 kHz, block 512, win 2048, 768 units, 128 mels, 6 x 512 velocity / denoiser
networks; 6.1 with aux 3 x 256, ``use_norm`` and ``use_attention`` on, 2 speakers; 6.0
2 speakers; 5.0 1 speaker; pitch augmentation on). The vocoder is the openvpi 44.1 kHz
layout (hop 512, 128 mels, rates [8, 8, 2, 2, 2], resblock "1") narrowed to
``upsample_initial_channel`` 32 (:data:`VOCODER_CONFIG`) so the file stays small and the
test fast. Model weights: ``recipe_state_dict`` (the 5.0 diffusion schedule kept, see
``test_diffusion_model.diffusion_recipe``); vocoder weights: :func:`vocoder_weights`
(``recipe_state_dict`` of the generator with the ``conv_pre`` / ``ups`` gains tripled, so
the audio depends on the mel and not only on the harmonic source), saved as
``{'generator': ...}`` beside a ``config.json``.

Per case of :data:`CASES` (``torch.manual_seed(seed)`` right before the model call; the
DDSP noise, the sampler's noise and the vocoder's sine phases and noise all come from the
global RNG, in that order) the file holds what the model handed the vocoder and what came
back: ``ddsp_mel`` (``vocoder.extract`` of the DDSP audio, after ``silence_front``),
``mel`` and ``f0`` (the arguments of ``vocoder.infer``) and ``audio``. Upstream's vocoder
loads its weights at the first ``infer`` and that load draws from the global RNG, so the
recipe calls it once before the first seed; this side does no such warm-up (ours does not
draw when it loads, which the first case therefore checks).

Measured when the file was written (same machine, 2 threads; ``pytest -s`` prints them),
max abs diff ours vs upstream (largest |reference| in brackets):

===================== ================ ================ ================
case                  ddsp_mel         mel              audio
===================== ================ ================ ================
reflow60_euler        6.7e-6 (6.8)     9.5e-6 (18.8)    7.6e-7 (0.44)
reflow60_rk4_silence  5.7e-6 (6.7)     1.5e-5 (26.5)    1.1e-6 (0.65)
reflow61_euler        8.1e-6 (8.0)     6.7e-6 (13.4)    9.5e-7 (0.47)
diffusion_dpm         5.7e-6 (6.4)     4.3e-6 (7.8)     3.3e-7 (0.33)
diffusion_ddim        9.5e-6 (6.5)     9.5e-6 (8.4)     3.4e-7 (0.30)
===================== ================ ================ ================

f0 handed to the vocoder: identical. The mel differences are the per-model tests' float32
rounding (about 1e-6 relative); the vocoder carries them into the audio at about 1e-6
abs. Tolerances: mels ``MEL_RTOL`` of the reference's largest magnitude (as the
per-model tests), f0 exactly, audio ``AUDIO_ATOL`` = 1e-4 absolute.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlflow_ddsp.models.diffusion_svc import DiffusionUnit2WavFast
from mlflow_ddsp.models.reflow_svc import ReflowUnit2Wav
from mlflow_ddsp.models.reflow_svc61 import LynxReflowUnit2Wav
from mlflow_ddsp.vocoder import NsfHifiGanGenerator, VocoderConfig, load_vocoder, write_vocoder_config
from test_diffusion_model import diffusion_recipe
from test_upstream_parity import RECIPE_SEED, checksums, recipe_state_dict

GOLDEN = Path(__file__).parent / "data" / "end_to_end_upstream_golden.pt"
UPSTREAM_COMMITS = {
    "master": "88f157c03dfea4855e9b7101897bac174fd9b53d",
    "6.1": "f1f8383c29bc78508c3116a28a6e2ef1ed646172",
}
FRAMES, N_UNIT = 12, 768
MEL_RTOL = 1e-5  # of the largest |value| of the reference mel
AUDIO_ATOL = 1e-4

#: openvpi's 44.1 kHz NSF-HiFiGAN config with 32 instead of 512 initial channels
VOCODER_CONFIG = {
    "sampling_rate": 44100, "num_mels": 128, "n_fft": 2048, "win_size": 2048, "hop_size": 512,
    "fmin": 40, "fmax": 16000, "upsample_rates": [8, 8, 2, 2, 2], "upsample_kernel_sizes": [16, 16, 4, 4, 4],
    "upsample_initial_channel": 32, "resblock": "1", "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
}  # fmt: skip
VOCODER_GAIN = 3.0  # see vocoder_weights

_SHARED = {"sampling_rate": 44100, "block_size": 512, "win_length": 2048, "n_unit": N_UNIT, "use_pitch_aug": True,
           "out_dims": 128, "n_layers": 6, "n_chans": 512}  # fmt: skip
#: family -> (upstream branch, keyword arguments of both our class and upstream's, upstream default sizes)
FAMILIES = {
    "6.0": ("master", {**_SHARED, "n_spk": 2}),
    "6.1": ("6.1", {**_SHARED, "n_spk": 2, "n_aux_layers": 3, "n_aux_chans": 256, "use_norm": True,
                    "use_attention": True}),  # fmt: skip
    "5.0": ("master", {**_SHARED, "n_spk": 1}),
}
OUR_CLASSES = {"6.0": ReflowUnit2Wav, "6.1": LynxReflowUnit2Wav, "5.0": DiffusionUnit2WavFast}

#: case -> family, batch rows, speakers ("ids": row i speaks id i+1, "mix": 0.3/0.7), sampler options, seed
CASES = {
    "reflow60_euler": {"family": "6.0", "batch": [0, 1], "speaker": "ids", "method": "euler", "infer_step": 3,
                       "t_start": 0.7, "seed": 601},  # fmt: skip
    "reflow60_rk4_silence": {"family": "6.0", "batch": [1], "speaker": "mix", "method": "rk4", "infer_step": 2,
                             "t_start": 0.4, "silence_front": 0.05, "seed": 602},  # fmt: skip
    "reflow61_euler": {"family": "6.1", "batch": [0, 1], "speaker": "ids", "method": "euler", "infer_step": 3,
                       "t_start": 0.7, "seed": 611},  # fmt: skip
    "diffusion_dpm": {"family": "5.0", "batch": [0], "method": "dpm-solver", "k_step": 20, "infer_speedup": 5,
                      "seed": 501},  # fmt: skip
    "diffusion_ddim": {"family": "5.0", "batch": [0, 1], "method": "ddim", "k_step": 20, "infer_speedup": 5,
                       "seed": 502},  # fmt: skip
}


def make_inputs() -> dict[str, torch.Tensor]:
    """``units [2, 12, 768]``, ``f0 [2, 12, 1]`` (vibrato near 220 Hz; glide 110 -> 600 Hz),
    ``volume [2, 12, 1]``, ``aug_shift [2, 1, 1]`` (+2 and -3 semitones)."""
    gen = torch.Generator().manual_seed(2026)
    t = torch.arange(FRAMES, dtype=torch.float32)
    f0 = torch.stack([220 * 2 ** (0.3 * torch.sin(t / 2)), torch.linspace(110, 600, FRAMES)]).unsqueeze(-1)
    return {
        "units": torch.randn(2, FRAMES, N_UNIT, generator=gen),
        "f0": f0,
        "volume": 0.05 + 0.3 * torch.rand(2, FRAMES, 1, generator=gen),
        "aug_shift": torch.tensor([[[2.0]], [[-3.0]]]),
    }


def vocoder_weights(template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`recipe_state_dict` of the generator, the ``conv_pre`` and ``ups.*`` weight-norm gains times
    :data:`VOCODER_GAIN`.

    With the plain recipe gains (0.2 - 0.6) the mel's share shrinks at each of the five
    upsamplings while the harmonic source is added afresh, so the audio is nearly all source:
    a change of 1e-2 on every mel bin moved it by 7e-6 (max |audio| 0.15). With the gains
    tripled the same change moves it by 5.5e-3 and a zero mel by 0.44 (max |audio| 0.46,
    nothing near the tanh's limits), so the audio checks the mel path too.
    """
    weights = recipe_state_dict(template, seed=RECIPE_SEED)
    for key in weights:
        if key.endswith("weight_g") and key.startswith(("conv_pre.", "ups.")):
            weights[key] = weights[key] * VOCODER_GAIN
    return weights


def model_weights(family: str, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The recipe weights of a family's model (5.0 keeps its diffusion schedule buffers)."""
    return diffusion_recipe(template) if family == "5.0" else recipe_state_dict(template, seed=RECIPE_SEED)


class RecordingVocoder:
    """Passes ``extract`` / ``infer`` to a vocoder and keeps what went through them.

    ``seen``: ``ddsp_mel`` (what ``extract`` returned), ``mel`` and ``f0`` (what ``infer``
    was given); the audio is the model's return value.
    """

    def __init__(self, vocoder: object) -> None:
        self.vocoder = vocoder
        self.seen: dict[str, torch.Tensor] = {}

    def extract(self, audio: torch.Tensor, sample_rate: int = 0, keyshift: float = 0) -> torch.Tensor:
        mel = self.vocoder.extract(audio, sample_rate, keyshift)
        self.seen["ddsp_mel"] = mel.detach().clone()
        return mel

    def infer(self, mel: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        self.seen["mel"], self.seen["f0"] = mel.detach().clone(), f0.detach().clone()
        return self.vocoder.infer(mel, f0)


def case_call(inputs: dict[str, torch.Tensor], case: dict) -> tuple[tuple, dict]:
    """Positional and keyword arguments of the model call (upstream's names, ``return_wav=True``)."""
    rows = torch.tensor(case["batch"])
    args = tuple(inputs[name][rows] for name in ("units", "f0", "volume"))
    kwargs: dict = {"aug_shift": inputs["aug_shift"][rows], "infer": True, "return_wav": True, "use_tqdm": False,
                    "method": case["method"]}  # fmt: skip
    if case.get("speaker") == "ids":
        kwargs["spk_id"] = (rows + 1).reshape(-1, 1)
    elif case.get("speaker") == "mix":
        kwargs["spk_mix_dict"] = {1: 0.3, 2: 0.7}
    if case["family"] == "5.0":
        kwargs.update(k_step=case["k_step"], infer_speedup=case["infer_speedup"])
    else:
        kwargs.update(infer_step=case["infer_step"], t_start=case["t_start"],
                      silence_front=case.get("silence_front", 0))  # fmt: skip
    return args, kwargs


def run_case(model: torch.nn.Module, vocoder: object, inputs: dict, case: dict) -> dict[str, torch.Tensor]:
    """One seeded ``return_wav`` call; the audio flattened to ``[B, N]`` (upstream returns ``[B, 1, N]``)."""
    args, kwargs = case_call(inputs, case)
    recording = RecordingVocoder(vocoder)
    model.eval()
    torch.manual_seed(case["seed"])
    with torch.no_grad():
        audio = model(*args, vocoder=recording, **kwargs)
    return {**recording.seen, "audio": audio.reshape(audio.shape[0], -1), "audio_shape": torch.tensor(audio.shape)}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def vocoder(tmp_path_factory: pytest.TempPathFactory, golden: dict) -> object:
    """Our vocoder from ``config.json`` + ``model`` with the recipe's generator weights."""
    folder = tmp_path_factory.mktemp("nsf_hifigan_32")
    config = VocoderConfig.from_dict(VOCODER_CONFIG, source="VOCODER_CONFIG")
    write_vocoder_config(folder, config)
    state = vocoder_weights(NsfHifiGanGenerator(config).state_dict())
    assert checksums(state) == golden["vocoder_checksums"], "vocoder recipe drifted from the golden run"
    torch.save({"generator": state}, folder / "model")
    return load_vocoder(folder / "model")


@pytest.fixture(scope="module")
def models(golden: dict) -> dict[str, torch.nn.Module]:
    """family -> our model with the recipe weights loaded strictly (checksums as upstream's)."""
    out = {}
    for family, (_, kwargs) in FAMILIES.items():
        model = OUR_CLASSES[family](**kwargs)
        weights = model_weights(family, model.state_dict())
        expected = golden["model_checksums"][family]
        assert set(weights) == set(expected), f"{family}: state_dict keys differ from upstream's"
        for key, (total, total_abs) in checksums(weights).items():
            rel = 1e-6 if key.endswith("window") else 1e-9
            assert total == pytest.approx(expected[key][0], rel=rel, abs=1e-9), f"{family}: recipe drifted at {key}"
            assert total_abs == pytest.approx(expected[key][1], rel=rel), f"{family}: recipe drifted at {key}"
        model.load_state_dict(weights, strict=True)
        out[family] = model.eval()
    return out


# --------------------------------------------------------------------------- tests


def test_golden_file_describes_this_setup(golden: dict) -> None:
    assert golden["upstream_commits"] == UPSTREAM_COMMITS
    assert golden["recipe_seed"] == RECIPE_SEED
    assert golden["vocoder_config"] == VOCODER_CONFIG
    assert golden["vocoder_gain"] == VOCODER_GAIN
    assert golden["families"] == {family: dict(kwargs) for family, (_, kwargs) in FAMILIES.items()}
    assert golden["cases"] == CASES
    assert GOLDEN.stat().st_size < 1_000_000
    for name, tensor in make_inputs().items():
        torch.testing.assert_close(golden["inputs"][name], tensor, rtol=0, atol=0)


def _max_diff(name: str, got: torch.Tensor, ref: torch.Tensor) -> float:
    assert got.shape == ref.shape, f"{name}: shape {list(got.shape)}, upstream {list(ref.shape)}"
    return (got - ref).abs().max().item()


@pytest.mark.parametrize("case_name", list(CASES))
def test_audio_matches_upstream(case_name: str, models: dict, vocoder: object, golden: dict) -> None:
    """The model's DDSP mel, the mel and f0 it hands the vocoder, and the audio, as upstream's."""
    case = CASES[case_name]
    got = run_case(models[case["family"]], vocoder, golden["inputs"], case)
    ref = golden["outputs"][case_name]
    assert ref["audio"].abs().max() > 0.01, "golden audio is silent: the comparison would prove nothing"
    # upstream returns [B, 1, N]; ours [B, N] (the vocoder's documented deviation)
    assert got["audio_shape"].tolist() == [ref["audio_shape"][0].item(), ref["audio_shape"][2].item()]
    report = []
    for key in ("ddsp_mel", "mel"):
        diff, scale = _max_diff(key, got[key], ref[key]), ref[key].abs().max().item()
        report.append(f"{key} {diff:.3g} (max |ref| {scale:.3g})")
        assert diff <= MEL_RTOL * max(scale, 1.0), f"{case_name}: {key} max abs diff {diff:.3g} (max |ref| {scale:.3g})"
    torch.testing.assert_close(got["f0"], ref["f0"], rtol=0, atol=0)
    diff, scale = _max_diff("audio", got["audio"], ref["audio"]), ref["audio"].abs().max().item()
    report.append(f"audio {diff:.3g} (max |ref| {scale:.3g})")
    print(f"{case_name}: " + ", ".join(report))
    assert diff <= AUDIO_ATOL, f"{case_name}: audio max abs diff {diff:.3g} (max |ref| {scale:.3g})"


def test_audio_depends_on_the_mel(vocoder: object, golden: dict) -> None:
    """Guard on the comparison's power: the vocoder's audio is not the source alone."""
    ref = golden["outputs"]["reflow60_euler"]
    rendered = []
    for mel in (ref["mel"], torch.zeros_like(ref["mel"])):
        torch.manual_seed(CASES["reflow60_euler"]["seed"])
        rendered.append(vocoder.infer(mel, ref["f0"]))
    assert (rendered[0] - rendered[1]).abs().max() > 0.1
