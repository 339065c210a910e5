"""DDSP-SVC 6.0 (rectified flow) parity: upstream's layout loads strictly and computes the same numbers.

The golden file ``tests/data/reflow_upstream_golden.pt`` holds the output of
*upstream's own code* (``reflow/vocoder.py`` ``Unit2Wav``, ``reflow/reflow.py``,
``reflow/naive_v2_diff.py``, ``ddsp/vocoder.py`` and the mel of
``nsf_hifigan/nvSTFT.py``; commit 88f157c03dfea4855e9b7101897bac174fd9b53d, master
of github yxlllc/DDSP-SVC; torch 2.13.0+cpu, float32) for the cases of
:func:`make_cases`, at upstream's default sizes (44.1 kHz, block 512,
win_length 2048, n_unit 768, n_spk 2, use_pitch_aug true, 128 mels, 6 layers x 512):

- ``layouts``: upstream's ``state_dict`` keys, shapes and dtypes for n_spk 1 and 2,
  with the values of its integer buffers;
- ``checksums``: fingerprints of the recipe weights (:func:`recipe_state_dict` of
  ``tests/test_upstream_parity.py``, seed :data:`RECIPE_SEED`) the outputs were
  computed with, loaded strictly into upstream's model;
- ``outputs``: per case, with ``torch.manual_seed(seed)`` right before the call
  (upstream draws the DDSP noise, t and the flow noise from the global RNG):
  inference mels (Euler and RK4, 3 steps, t_start 0.7, 0.0 and -0.5, which both
  clamp to 0; t_start 1.0 returns the DDSP mel), speaker id and speaker mix,
  ``aug_shift``, ``silence_front`` with ``return_wav`` through a stand-in vocoder, and
  the training pair ``(ddsp_loss, reflow_loss)`` with the gradient fingerprints of
  ``reflow_loss`` on every ``ddsp_model`` parameter (the condition is not detached).

Upstream's side used upstream's own ``nvSTFT.STFT.get_mel`` as the vocoder's
``extract``; this side uses :class:`StandInVocoder`, this module's re-expression of
that mel recipe, so the comparison also checks the stand-in. Recipe to regenerate:
``python tests/upstream_golden/make_reflow_golden.py --upstream /tmp/up-master --out
tests/data/reflow_upstream_golden.pt`` with ``/tmp/up-master`` a ``git archive`` of
upstream master (see that script for the import stubs it needs).

Measured against the golden file (torch 2.13.0+cpu, float32, same machine): the
training losses agree bit for bit (train_t07) or to 1.4e-7 relative (train_t0_mix
reflow_loss); the mels differ by at most 3.4e-5 absolute on outputs whose largest
magnitude is 65-68 (the t_start 0 cases, integrated from pure noise through
random recipe weights), 1e-5 or less on the t_start 0.7 cases (largest magnitude
17-19) and 7.6e-6 on the DDSP mel alone: float32 rounding of the re-expressed
convolutions (``F.linear`` / channels-last depthwise instead of ``conv1d``) and of
the stand-in mel, about 5e-7 relative. The tests allow ``MEL_RTOL`` = 1e-5 of the
reference's largest magnitude on mels, ``LOSS_RTOL`` = 1e-5 on losses and
``GRAD_RTOL`` = 1e-4 on per-parameter gradient sums (run with ``-s`` to print the
measured differences).
"""

from __future__ import annotations

from pathlib import Path

import librosa
import pytest
import torch
import torch.nn.functional as F

from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.models.naive_v2_diff import NaiveV2Diff
from mlflow_ddsp.models.rectified_flow import RectifiedFlow, logit_normal_weight
from mlflow_ddsp.models.reflow_svc import ReflowUnit2Wav
from test_upstream_parity import RECIPE_SEED, checksums, recipe_state_dict

GOLDEN = Path(__file__).parent / "data" / "reflow_upstream_golden.pt"
UPSTREAM_COMMIT = "88f157c03dfea4855e9b7101897bac174fd9b53d"
SAMPLING_RATE, BLOCK_SIZE, N_UNIT, N_SPK = 44100, 512, 768, 2
MODEL_KWARGS = {"sampling_rate": SAMPLING_RATE, "block_size": BLOCK_SIZE, "n_unit": N_UNIT, "use_pitch_aug": True}
FRAMES = 12
MEL_RTOL = 1e-5  # of the largest |value| of the reference output
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4


class StandInVocoder:
    """The recommended NSF-HiFiGAN's mel (44.1 kHz, hop 512, 128 bins) and a transparent ``infer``.

    ``extract``: log-mel as upstream ``nsf_hifigan/nvSTFT.py`` ``STFT.get_mel`` computes it
    (no key shift): reflect-pad ``(win - hop) // 2`` left and at least ``(win - hop + 1) // 2``
    right, non-centred STFT with a periodic Hann window, ``sqrt(re^2 + im^2 + 1e-9)``,
    librosa's slaney mel bank, ``log(max(x, 1e-5))``; ``[B, N] -> [B, frames, 128]``.
    ``infer`` returns ``cat(mel.flatten(1), f0.flatten(1))`` so a test sees what it was given.
    """

    def __init__(self, sampling_rate: int = 44100, n_fft: int = 2048, hop: int = 512, n_mels: int = 128,
                 fmin: float = 40, fmax: float = 16000) -> None:  # fmt: skip
        self.n_fft, self.hop = n_fft, hop
        bank = librosa.filters.mel(sr=sampling_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
        self.mel_basis = torch.from_numpy(bank).float()
        self.window = torch.hann_window(n_fft)

    def extract(self, audio: torch.Tensor, sample_rate: int = 0, keyshift: float = 0) -> torch.Tensor:
        assert sample_rate in (0, 44100) and keyshift == 0, "the stand-in only covers the model's own call"
        left = (self.n_fft - self.hop) // 2
        right = max((self.n_fft - self.hop + 1) // 2, self.n_fft - audio.shape[-1] - left)
        mode = "reflect" if right < audio.shape[-1] else "constant"
        padded = F.pad(audio.unsqueeze(1), (left, right), mode=mode).squeeze(1)
        spec = torch.stft(padded, self.n_fft, hop_length=self.hop, window=self.window, center=False,
                          return_complex=True)  # fmt: skip
        magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
        return torch.log(torch.clamp(self.mel_basis @ magnitude, min=1e-5)).transpose(1, 2)

    def infer(self, mel: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        return torch.cat([mel.flatten(1), f0.flatten(1)], dim=1)


def make_inputs() -> dict[str, torch.Tensor]:
    """``units [2, 12, 768]``, ``f0 [2, 12, 1]`` (vibrato near 220 Hz; glide 110 -> 600 Hz),
    ``volume [2, 12, 1]``, ``gt_spec [2, 12, 128]`` (a plausible log-mel range)."""
    gen = torch.Generator().manual_seed(60)
    t = torch.arange(FRAMES, dtype=torch.float32)
    f0 = torch.stack([220 * 2 ** (0.3 * torch.sin(t / 2)), torch.linspace(110, 600, FRAMES)]).unsqueeze(-1)
    return {
        "units": torch.randn(2, FRAMES, N_UNIT, generator=gen),
        "f0": f0,
        "volume": 0.05 + 0.3 * torch.rand(2, FRAMES, 1, generator=gen),
        "gt_spec": -6 + 2 * torch.randn(2, FRAMES, 128, generator=gen),
    }


def make_cases() -> dict[str, dict]:
    """Case name -> batch rows, speaker, call options and the seed set right before the call."""
    both = {"batch": [0, 1], "spk_id": [[1], [2]]}
    return {
        "euler_t07": {**both, "infer": True, "method": "euler", "t_start": 0.7, "infer_step": 3, "seed": 101},
        "euler_t0_shift": {"batch": [0, 1], "spk_id": [[2], [1]], "aug_shift": [-3.0, 4.0], "infer": True,
                           "method": "euler", "t_start": 0.0, "infer_step": 3, "seed": 102},  # fmt: skip
        "rk4_t07_mix": {"batch": [1], "spk_mix": {1: 0.3, 2: 0.7}, "infer": True, "method": "rk4",
                        "t_start": 0.7, "infer_step": 3, "seed": 103},  # fmt: skip
        "rk4_tneg_shift": {"batch": [0], "spk_id": [[1]], "aug_shift": [2.5], "infer": True, "method": "rk4",
                           "t_start": -0.5, "infer_step": 3, "seed": 104},  # fmt: skip
        "ddsp_only_t1": {**both, "infer": True, "method": "euler", "t_start": 1.0, "infer_step": 3, "seed": 105},
        "silence_wav": {"batch": [0], "spk_id": [[2]], "infer": True, "method": "euler", "t_start": 0.7,
                        "infer_step": 2, "silence_front": 0.05, "return_wav": True, "seed": 106},  # fmt: skip
        "train_t07": {**both, "aug_shift": [1.0, -2.0], "infer": False, "t_start": 0.7, "seed": 201},
        "train_t0_mix": {"batch": [1], "spk_mix": {1: 0.6, 2: 0.4}, "infer": False, "t_start": 0.0, "seed": 202},
    }


def case_call(inputs: dict[str, torch.Tensor], case: dict, vocoder: object) -> tuple[tuple, dict]:
    """Positional and keyword arguments of a ``Unit2Wav`` call for ``case`` (upstream's names)."""
    index = torch.tensor(case["batch"])
    args = tuple(inputs[name][index] for name in ("units", "f0", "volume"))
    kwargs: dict = {"vocoder": vocoder, "infer": case["infer"], "t_start": case["t_start"], "use_tqdm": False}
    if "spk_mix" in case:
        kwargs["spk_mix_dict"] = dict(case["spk_mix"])
    else:
        kwargs["spk_id"] = torch.tensor(case["spk_id"])
    if "aug_shift" in case:
        kwargs["aug_shift"] = torch.tensor(case["aug_shift"]).reshape(-1, 1, 1)
    if case["infer"]:
        kwargs.update(infer_step=case["infer_step"], method=case["method"])
        kwargs["silence_front"] = case.get("silence_front", 0)
        kwargs["return_wav"] = case.get("return_wav", False)
    else:
        kwargs["gt_spec"] = inputs["gt_spec"][index]
    return args, kwargs


def ddsp_grad_fingerprints(model: torch.nn.Module) -> dict[str, tuple[float, float]]:
    """``(sum, sum |g|)`` in float64 of each ``ddsp_model`` parameter's gradient."""
    return {
        name: (float(p.grad.double().sum()), float(p.grad.double().abs().sum()))
        for name, p in model.named_parameters()
        if name.startswith("ddsp_model.") and p.grad is not None
    }


def run_case(model: torch.nn.Module, inputs: dict, case: dict, vocoder: object) -> dict:
    """Run one case the way the golden script runs upstream; returns the tensors to compare."""
    args, kwargs = case_call(inputs, case, vocoder)
    if case["infer"]:
        model.eval()
        torch.manual_seed(case["seed"])
        with torch.no_grad():
            return {"out": model(*args, **kwargs)}
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(case["seed"])
    ddsp_loss, reflow_loss = model(*args, **kwargs)
    reflow_loss.backward()
    result = {"ddsp_loss": ddsp_loss.detach(), "reflow_loss": reflow_loss.detach(),
              "grads": ddsp_grad_fingerprints(model)}  # fmt: skip
    model.zero_grad(set_to_none=True)
    model.eval()
    return result


def layout(state_dict: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...], str]]:
    return [(key, tuple(value.shape), str(value.dtype)) for key, value in state_dict.items()]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def model(golden: dict) -> ReflowUnit2Wav:
    torch.manual_seed(0)
    net = ReflowUnit2Wav(**MODEL_KWARGS, n_spk=N_SPK).eval()
    weights = recipe_state_dict(net.state_dict(), seed=RECIPE_SEED)
    expected = golden["checksums"]
    assert set(weights) == set(expected)
    for key, (total, total_abs) in checksums(weights).items():
        rel = 1e-6 if key.endswith("window") else 1e-9
        assert total == pytest.approx(expected[key][0], rel=rel, abs=1e-9), f"recipe drifted at {key}"
        assert total_abs == pytest.approx(expected[key][1], rel=rel), f"recipe drifted at {key}"
    net.load_state_dict(weights, strict=True)
    return net


# --------------------------------------------------------------------------- tests


def test_golden_file_describes_this_setup(golden: dict) -> None:
    assert golden["upstream_commit"] == UPSTREAM_COMMIT
    assert golden["recipe_seed"] == RECIPE_SEED
    assert golden["cases"] == make_cases()
    for name, tensor in make_inputs().items():
        torch.testing.assert_close(golden["inputs"][name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("n_spk", [1, 2])
def test_upstream_layout_loads_strictly(n_spk: int, golden: dict) -> None:
    """Keys, shapes and dtypes equal upstream's; a state_dict of that layout loads strictly."""
    ours = ReflowUnit2Wav(**MODEL_KWARGS, n_spk=n_spk)
    expected = golden["layouts"][n_spk]
    assert layout(ours.state_dict()) == [(k, tuple(s), d) for k, s, d in expected["layout"]]
    dtypes = {str(t): t for t in (torch.float32, torch.int64)}
    upstream_like = {
        key: expected["int_buffers"].get(key, torch.full(tuple(shape), 0.5, dtype=dtypes[dtype]))
        for key, shape, dtype in expected["layout"]
    }
    result = ours.load_state_dict(upstream_like, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in ours.reflow_model.parameters()) == 13_858_944


@pytest.mark.parametrize("case_name", list(make_cases()))
def test_matches_upstream(case_name: str, model: ReflowUnit2Wav, golden: dict) -> None:
    case = make_cases()[case_name]
    got = run_case(model, golden["inputs"], case, StandInVocoder())
    expected = golden["outputs"][case_name]
    if case["infer"]:
        out, ref = got["out"], expected["out"]
        assert out.shape == ref.shape
        assert ref.abs().max() > 1.0, "golden output is flat: the comparison would prove nothing"
        diff, scale = (out - ref).abs().max().item(), ref.abs().max().item()
        print(f"{case_name}: max abs diff {diff:.3g} (max |ref| {scale:.3g})")
        assert diff <= MEL_RTOL * max(scale, 1.0), f"{case_name}: max abs diff {diff:.3g} (max |ref| {scale:.3g})"
        return
    for name in ("ddsp_loss", "reflow_loss"):
        print(f"{case_name}/{name}: ours {got[name].item():.9g} upstream {expected[name].item():.9g}")
        assert got[name].item() == pytest.approx(expected[name].item(), rel=LOSS_RTOL)
    grads = got["grads"]
    assert set(grads) == set(expected["grads"])
    assert any(abs(total_abs) > 0 for _, total_abs in grads.values()), "no gradient reached ddsp_model"
    scale = max(abs_sum for _, abs_sum in expected["grads"].values())
    for key, (total, total_abs) in grads.items():
        ref_total, ref_abs = expected["grads"][key]
        assert total_abs == pytest.approx(ref_abs, rel=GRAD_RTOL, abs=1e-6 * scale), key
        assert total == pytest.approx(ref_total, rel=GRAD_RTOL, abs=GRAD_RTOL * max(ref_abs, 1e-6 * scale)), key


def _small_model() -> tuple[ReflowUnit2Wav, tuple[torch.Tensor, ...], torch.Tensor]:
    """A narrow 6.0 model (128 mels for the stand-in vocoder) with non-zero output weights, and inputs."""
    torch.manual_seed(2)
    model = ReflowUnit2Wav(sampling_rate=SAMPLING_RATE, block_size=BLOCK_SIZE, n_unit=16, n_spk=2, n_layers=1,
                           n_chans=16)  # fmt: skip
    torch.nn.init.normal_(model.reflow_model.velocity_fn.output_projection.weight, std=0.1)
    inputs = make_inputs()
    args = (inputs["units"][..., :16], inputs["f0"], inputs["volume"])
    return model.eval(), args, inputs["gt_spec"]


def test_t_start_one_returns_the_ddsp_mel() -> None:
    model, args, _ = _small_model()
    vocoder = StandInVocoder()
    with torch.no_grad():
        torch.manual_seed(5)
        wav, hidden = model.ddsp_stage(*args, spk_id=torch.tensor([[1], [2]]))
        torch.manual_seed(5)
        mel = model(*args, spk_id=torch.tensor([[1], [2]]), vocoder=vocoder, t_start=1.0)
        torch.manual_seed(5)
        refined = model(*args, spk_id=torch.tensor([[1], [2]]), vocoder=vocoder, t_start=0.7, infer_step=2)
    assert wav.shape == (2, FRAMES * BLOCK_SIZE) and hidden.shape == (2, FRAMES, 256)
    torch.testing.assert_close(mel, vocoder.extract(wav), rtol=0, atol=0)
    assert (refined - mel).abs().max() > 1e-3  # below 1 the flow does change the mel


def test_condition_is_not_detached() -> None:
    """The flow loss alone trains the DDSP stage: its condition is the DDSP mel, with grad."""
    model, args, gt_spec = _small_model()
    torch.manual_seed(3)
    _, reflow_loss = model(*args, spk_id=1, vocoder=StandInVocoder(), gt_spec=gt_spec, infer=False, t_start=0.7)
    reflow_loss.backward()
    grad = model.ddsp_model.unit2ctrl.dense_out.weight_v.grad
    assert grad is not None and grad.abs().max() > 0


def test_return_wav_passes_the_last_f0_frames() -> None:
    model, args, _ = _small_model()
    args = tuple(a[:1] for a in args)
    options = {"spk_id": 1, "vocoder": StandInVocoder(), "t_start": 0.7, "infer_step": 2, "silence_front": 0.05}
    with torch.no_grad():
        torch.manual_seed(8)
        mel = model(*args, **options)
        torch.manual_seed(8)
        audio = model(*args, **options, return_wav=True)
    frames = mel.shape[1]
    assert frames == FRAMES - 4  # int(0.05 * 44100 / 512) = 4 frames dropped
    torch.testing.assert_close(audio, torch.cat([mel.flatten(1), args[1][:, -frames:].flatten(1)], 1))
    with pytest.raises(ValueError, match="needs a vocoder"):
        model(*args, spk_id=1, return_wav=True)


def test_hparams_rebuild_and_validation() -> None:
    model = ReflowUnit2Wav(sampling_rate=44100, block_size=512, n_unit=16, n_layers=1, n_chans=8, out_dims=16)
    rebuilt = ReflowUnit2Wav(**model.hparams)
    assert layout(rebuilt.state_dict()) == layout(model.state_dict())
    assert model.model_type == "RectifiedFlow" and model.upstream_version == "6.0"
    assert (model.sampling_rate_hz, model.block, model.out_dims) == (44100, 512, 16)
    with pytest.raises(ConfigError, match="model.n_layers"):
        ReflowUnit2Wav(sampling_rate=44100, block_size=512, n_layers=0)
    with pytest.raises(ConfigError, match="model.use_pitch_aug"):
        ReflowUnit2Wav(sampling_rate=44100, block_size=512, use_pitch_aug=1)
    with pytest.raises(ValueError, match=r"training .* needs a vocoder .*and gt_spec"):
        model(torch.zeros(1, 4, 16), torch.full((1, 4, 1), 200.0), torch.ones(1, 4, 1), infer=False)


# --------------------------------------------------------------------------- RectifiedFlow alone (small nets)


def _small_flow() -> RectifiedFlow:
    torch.manual_seed(1)
    net = NaiveV2Diff(mel_channels=8, dim=16, num_layers=2, condition_dim=8)
    torch.nn.init.normal_(net.output_projection.weight, std=0.1)
    return RectifiedFlow(net, out_dims=8)


def test_flow_training_draws_t_then_x0_like_upstream() -> None:
    flow = _small_flow()
    cond, target = torch.randn(3, 5, 8), torch.randn(3, 5, 8) - 4
    torch.manual_seed(9)
    loss = flow(cond, gt_spec=target, infer=False, t_start=0.7)
    torch.manual_seed(9)
    t = (0.7 + 0.3 * torch.rand(3)).clip(1e-7, 1 - 1e-7)
    x_1 = ((target + 12) / 14 * 2 - 1).transpose(1, 2)[:, None]
    # randn_like on the transposed (non-contiguous) x_1 draws other numbers than a
    # contiguous torch.randn of the same shape: upstream's exact call is the contract
    x_0 = torch.randn_like(x_1)
    assert not x_1.is_contiguous()
    v = flow.velocity_fn(x_0 + t[:, None, None, None] * (x_1 - x_0), 1000 * t, cond.transpose(1, 2))
    weight = 0.398942 / t / (1 - t) * torch.exp(-0.5 * torch.log(t / (1 - t)) ** 2)
    expected = (weight[:, None, None, None] * (x_1 - x_0 - v) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(logit_normal_weight(torch.tensor([0.5])), torch.tensor([4 * 0.398942]))


def test_flow_zero_velocity_keeps_the_start_and_t_accumulates_in_float32() -> None:
    flow = _small_flow()
    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def forward(self, x: torch.Tensor, step: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            seen.append(step.clone())
            return torch.zeros_like(x)

    flow.velocity_fn = Recorder()
    mel = torch.randn(1, 4, 8) - 5
    out = flow(mel, gt_spec=mel, infer=True, infer_step=3, method="rk4", t_start=1.0)
    torch.testing.assert_close(out, mel, rtol=0, atol=1e-5)  # no noise mixed in at t_start = 1
    seen.clear()
    flow(mel, gt_spec=mel, infer=True, infer_step=3, method="euler", t_start=0.1)
    t, expected = torch.full((1,), 0.1), []
    for _ in range(3):
        expected.append(1000 * t)
        t = t + 0.3  # float32 accumulation, as upstream's ``t += dt``
    assert [s.dtype for s in seen] == [torch.float32] * 3
    torch.testing.assert_close(torch.cat(seen), torch.cat(expected), rtol=0, atol=0)
    with pytest.raises(ValueError, match="infer.method"):
        flow(mel, gt_spec=mel, method="heun")
