"""DDSP-SVC 5.0 (DiffusionFast): Gaussian diffusion and DiffusionUnit2WavFast against upstream.

The golden file ``tests/data/diffusion_upstream_golden.pt`` holds numbers computed by
*upstream's own code* (master 88f157c03dfea4855e9b7101897bac174fd9b53d,
``diffusion/vocoder.py`` Unit2WavFast with ``diffusion/diffusion.py`` and its vendored
DPM-Solver/UniPC) at upstream's default sizes (44.1 kHz, block 512, win 2048, 768
units, 1 speaker, pitch aug on, 128 mels, 6 layers x 512 channels), with weights from
:func:`diffusion_recipe`; its recipe is
``tests/upstream_golden/make_diffusion_golden.py --upstream PATH --out FILE``
(torch 2.13.0+cpu, float32). It stores upstream's state_dict layout (key, shape,
dtype), the values of the diffusion buffers, weight checksums, the inputs, and per
case the outputs of one seeded call (``torch.manual_seed`` right before it):

- samplers on the diffusion alone (B = 1, 12 frames, shallow start from a mel):
  dpm-solver, unipc, ddim, pndm with k_step 20 / speedup 5, plus longer runs (k_step
  100 / speedup 10: second order to the end; pndm k_step 40: all four Adams-Bashforth
  orders; ddim k_step 23: a stride that does not divide k), DDPM (speedup 1), and
  dpm-solver from pure noise (no k_step: the 1000-step schedule);
- the diffusion's training loss and the full model's ``(ddsp_loss, diff_loss)``
  (B = 2, k_step 100), and the full model's inference mel (dpm-solver, k 20, speedup 5).

The vocoder is :class:`StandInVocoder` (a fixed random projection of each hop of
audio, then log), shared by the recipe and these tests; the real NSF-HiFiGAN mel is
not needed to test the cascade.

The sampler cases run on a narrow denoiser (:data:`SMALL_DENOISER`, 64 channels,
2 layers) whose output is bit-identical to upstream's, so they compare the samplers'
own arithmetic; the default-size network differs from upstream's by float32 rounding
(about 1e-6 on outputs of magnitude 4-17, memory-layout dependent reductions).

Measured at generation (2-core CPU host, torch 2.13.0+cpu), max abs diff: buffers
0.0 (bit-identical); samplers (log-mel units, outputs of magnitude 13-34) 0.0 for
every case of dpm-solver, unipc, ddim, pndm and ddpm, and for the pure-noise
dpm-solver case (magnitude 1.5e5: random weights blow up from step 1000); diffusion
training loss 0.0; full-model ``(ddsp_loss, diff_loss)`` 0.0 and 0.0; full-model
inference mel 3.8e-6 (the default-size network's rounding, magnitude 7.9). Batch of
2 versus B = 1 (not in upstream for pndm): <= 1.9e-6. Tests allow 1e-5 absolute.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.models.diffusion_svc import DiffusionUnit2WavFast
from mlflow_ddsp.models.gaussian_diffusion import METHODS, DiscreteVPSchedule, GaussianDiffusion
from mlflow_ddsp.models.naive_v2_diff import NaiveV2Diff
from test_upstream_parity import RECIPE_SEED, checksums, recipe_state_dict

GOLDEN = Path(__file__).parent / "data" / "diffusion_upstream_golden.pt"
UPSTREAM_COMMIT = "88f157c03dfea4855e9b7101897bac174fd9b53d"
MODEL_KWARGS = {
    "sampling_rate": 44100,
    "block_size": 512,
    "win_length": 2048,
    "n_unit": 768,
    "n_spk": 1,
    "use_pitch_aug": True,
    "out_dims": 128,
    "n_layers": 6,
    "n_chans": 512,
}
FRAMES = 12
TOLERANCE = 1e-5

#: sampler cases on ``diff_model`` alone: (method, k_step, infer_speedup, seed); k_step
#: None starts from pure noise (no reference mel)
SAMPLER_CASES = {
    "dpm-solver_k20_s5": ("dpm-solver", 20, 5, 11),
    "dpm-solver_k100_s10": ("dpm-solver", 100, 10, 12),
    "dpm-solver_noise_s100": ("dpm-solver", None, 100, 13),
    "unipc_k20_s5": ("unipc", 20, 5, 21),
    "unipc_k100_s10": ("unipc", 100, 10, 22),
    "ddim_k20_s5": ("ddim", 20, 5, 31),
    "ddim_k23_s5": ("ddim", 23, 5, 32),
    "pndm_k20_s5": ("pndm", 20, 5, 41),
    "pndm_k40_s5": ("pndm", 40, 5, 42),
    "ddpm_k6_s1": ("dpm-solver", 6, 1, 51),
}
DIFF_TRAIN_SEED, MODEL_TRAIN_SEED, MODEL_INFER_SEED = 61, 62, 63
TRAIN_K_STEP = 100
#: the sampler cases run on this narrow denoiser (cheap, and bit-exact against upstream's
#: network, so the samplers' own arithmetic is what is compared)
SMALL_DENOISER = {"mel_channels": 128, "dim": 64, "num_layers": 2, "condition_dim": 128, "use_mlp": False}
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "spec_min", "spec_max",
)


class StandInVocoder:
    """A deterministic mel stand-in: ``log(sqrt((hop frames @ W)^2 + 1e-3))``, ``W [hop, M]`` fixed.

    ``extract([B, T*hop]) -> [B, T, M]``; ``infer(mel [B, T, M], f0) -> [B, T*hop]``
    (``mel @ W^T`` flattened; f0 unused). Also records what ``infer`` was given. The
    floor keeps the log's slope below 16, so float32 rounding in the DDSP audio stays
    at rounding level in the mel.
    """

    def __init__(self, hop: int = 512, n_mels: int = 128, seed: int = 5) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.hop = hop
        self.weight = torch.randn(hop, n_mels, generator=gen) / math.sqrt(hop)
        self.infer_calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def extract(self, audio: torch.Tensor, sample_rate: int = 0, keyshift: float = 0) -> torch.Tensor:
        frames = audio.reshape(audio.shape[0], -1, self.hop)
        return torch.log(torch.sqrt((frames @ self.weight) ** 2 + 1e-3))

    def infer(self, mel: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        self.infer_calls.append((mel, f0))
        return (mel @ self.weight.T).flatten(1)


def diffusion_recipe(template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`recipe_state_dict` for the weights; the diffusion schedule buffers are kept.

    The schedule (``[diff_model.]<buffer>`` outside ``denoise_fn``) is part of the model's
    definition, not a weight: replacing it by noise would make the sampler meaningless.
    """
    weights = recipe_state_dict(template)
    for key, value in template.items():
        if "denoise_fn." not in key and key.split(".")[-1] in SCHEDULE_BUFFERS:
            weights[key] = value.clone()
    return weights


def small_diffusion() -> GaussianDiffusion:
    """The sampler cases' diffusion: a narrow NaiveV2Diff (:data:`SMALL_DENOISER`), recipe weights."""
    diffusion = GaussianDiffusion(NaiveV2Diff(**SMALL_DENOISER), out_dims=128).eval()
    diffusion.load_state_dict(diffusion_recipe(diffusion.state_dict()), strict=True)
    return diffusion


def make_inputs() -> dict[str, torch.Tensor]:
    """Shared inputs: units ``[2, 12, 768]``, f0/volume ``[2, 12, 1]``, aug_shift ``[2, 1, 1]``,
    mel-like ``gt_spec``/``cond`` ``[2, 12, 128]`` (natural-log scale, around -5)."""
    gen = torch.Generator().manual_seed(8)
    t = torch.arange(FRAMES, dtype=torch.float32)
    f0 = torch.stack([220 * 2 ** (0.3 * torch.sin(t / 2)), torch.linspace(110, 600, FRAMES)]).unsqueeze(-1)
    return {
        "units": torch.randn(2, FRAMES, 768, generator=gen),
        "f0": f0,
        "volume": 0.05 + 0.3 * torch.rand(2, FRAMES, 1, generator=gen),
        "aug_shift": torch.tensor([[[2.0]], [[-3.0]]]),
        "gt_spec": -5 + 2 * torch.randn(2, FRAMES, 128, generator=gen),
        "cond": -5 + 2 * torch.randn(2, FRAMES, 128, generator=gen),
    }


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def model(golden: dict) -> DiffusionUnit2WavFast:
    """Ours at upstream's default sizes, with the recipe weights loaded strictly."""
    model = DiffusionUnit2WavFast(**MODEL_KWARGS).eval()
    weights = diffusion_recipe(model.state_dict())
    model.load_state_dict(weights, strict=True)
    return model


@pytest.fixture(scope="module")
def small() -> GaussianDiffusion:
    return small_diffusion()


def _assert_close(name: str, ours: torch.Tensor, expected: torch.Tensor) -> None:
    assert ours.shape == expected.shape, name
    assert ours.dtype == expected.dtype, name
    diff = (ours - expected).abs().max().item()
    assert diff <= TOLERANCE, f"{name}: max abs diff {diff:.3g} > {TOLERANCE}"


# -- golden parity ----------------------------------------------------------------------


def test_golden_file_describes_this_setup(golden: dict) -> None:
    assert golden["upstream_commit"] == UPSTREAM_COMMIT
    assert golden["recipe_seed"] == RECIPE_SEED
    assert golden["model_kwargs"] == MODEL_KWARGS
    assert set(golden["samplers"]) == set(SAMPLER_CASES)
    for name, tensor in make_inputs().items():
        torch.testing.assert_close(golden["inputs"][name], tensor, rtol=0, atol=0)


def test_upstream_state_dict_layout_and_buffers_match(model: DiffusionUnit2WavFast, golden: dict, tmp_path) -> None:
    ours = model.state_dict()
    layout = golden["layout"]
    assert list(ours) == list(layout), "state_dict keys (or their order) differ from upstream's"
    for key, value in ours.items():
        shape, dtype = layout[key]
        assert tuple(value.shape) == tuple(shape), key
        assert str(value.dtype) == dtype, key
    for key, expected in golden["buffers"].items():
        torch.testing.assert_close(ours[key], expected, rtol=0, atol=0, msg=key)
    # an upstream-style checkpoint of the recipe weights loads strictly
    weights = diffusion_recipe(DiffusionUnit2WavFast(**MODEL_KWARGS).state_dict())
    for key, (total, total_abs) in checksums(weights).items():
        rel = 1e-6 if key.split(".")[-1] == "window" else 1e-9
        assert total == pytest.approx(golden["checksums"][key][0], rel=rel, abs=1e-9), key
        assert total_abs == pytest.approx(golden["checksums"][key][1], rel=rel), key
    torch.save({"global_step": 0, "model": weights}, tmp_path / "model_0.pt")
    fresh = DiffusionUnit2WavFast(**MODEL_KWARGS)
    fresh.load_state_dict(torch.load(tmp_path / "model_0.pt", weights_only=True)["model"], strict=True)


@pytest.mark.parametrize("case", sorted(SAMPLER_CASES))
def test_sampler_matches_upstream(case: str, small: GaussianDiffusion, golden: dict) -> None:
    method, k_step, speedup, seed = SAMPLER_CASES[case]
    inputs = golden["inputs"]
    cond, start = inputs["cond"][:1], inputs["gt_spec"][:1]
    torch.manual_seed(seed)
    with torch.no_grad():
        mel = small(
            cond, gt_spec=None if k_step is None else start, infer=True,
            infer_speedup=speedup, method=method, k_step=k_step,
        )
    expected = golden["samplers"][case]
    assert (expected - start).abs().max() > 0.1, "golden output equals its start: the check would prove nothing"
    _assert_close(case, mel, expected)


def test_training_losses_match_upstream(model: DiffusionUnit2WavFast, golden: dict) -> None:
    inputs = golden["inputs"]
    torch.manual_seed(DIFF_TRAIN_SEED)
    diff_loss = model.diff_model(inputs["cond"], gt_spec=inputs["gt_spec"], infer=False, k_step=TRAIN_K_STEP)
    _assert_close("diffusion loss", diff_loss.detach(), golden["diff_train_loss"])

    torch.manual_seed(MODEL_TRAIN_SEED)
    ddsp_loss, diff_loss = model(
        inputs["units"], inputs["f0"], inputs["volume"], aug_shift=inputs["aug_shift"],
        vocoder=StandInVocoder(), gt_spec=inputs["gt_spec"], infer=False, k_step=TRAIN_K_STEP,
    )
    expected_ddsp, expected_diff = golden["model_train_losses"]
    _assert_close("ddsp_loss", ddsp_loss.detach(), expected_ddsp)
    _assert_close("diff_loss", diff_loss.detach(), expected_diff)
    # the condition is not detached: the diffusion loss trains the DDSP stage too
    diff_loss.backward()
    grad = model.ddsp_model.unit2ctrl.dense_out.weight_v.grad
    assert grad is not None and grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_full_model_inference_matches_upstream(model: DiffusionUnit2WavFast, golden: dict) -> None:
    inputs = golden["inputs"]
    vocoder = StandInVocoder()
    torch.manual_seed(MODEL_INFER_SEED)
    with torch.no_grad():
        wav = model(
            inputs["units"][:1], inputs["f0"][:1], inputs["volume"][:1], aug_shift=inputs["aug_shift"][:1],
            vocoder=vocoder, infer=True, return_wav=True, infer_speedup=5, method="dpm-solver", k_step=20,
        )
    mel, f0 = vocoder.infer_calls[-1]
    _assert_close("model mel", mel, golden["model_infer_mel"])
    assert f0 is inputs["f0"][:1] or torch.equal(f0, inputs["f0"][:1])  # the diffusion model passes f0 as is
    torch.testing.assert_close(wav, vocoder.infer(mel, f0))


# -- behaviour without upstream ----------------------------------------------------------


class _TinyDenoiser(torch.nn.Module):
    """eps = tanh(a x + b cond + c step/100): cheap and deterministic."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3))
        self.b = torch.nn.Parameter(torch.tensor(0.1))
        self.c = torch.nn.Parameter(torch.tensor(0.2))
        self.steps: list[torch.Tensor] = []

    def forward(self, x, step, cond):
        self.steps.append(step)
        return torch.tanh(self.a * x + self.b * cond[:, None] + self.c * step.float().reshape(-1, 1, 1, 1) / 100)


def test_batch_items_are_independent(small: GaussianDiffusion, golden: dict) -> None:
    """Item 0 of a batch of 2 is the B = 1 result (upstream's PNDM cannot run a batch at all)."""
    inputs = golden["inputs"]
    for case in ("dpm-solver_k20_s5", "unipc_k20_s5", "pndm_k20_s5"):
        method, k_step, speedup, seed = SAMPLER_CASES[case]
        torch.manual_seed(seed)  # randn_like([2, ...]) starts with the B = 1 draw
        with torch.no_grad():
            mel = small(
                inputs["cond"], gt_spec=inputs["gt_spec"], infer=True,
                infer_speedup=speedup, method=method, k_step=k_step,
            )
        _assert_close(case + " item 0 of 2", mel[:1], golden["samplers"][case])


def test_buffers_and_hparams() -> None:
    diffusion = GaussianDiffusion(_TinyDenoiser(), out_dims=4)
    assert diffusion.betas.dtype == torch.float32 and diffusion.betas.shape == (1000,)
    assert diffusion.betas[0].item() == pytest.approx(1e-4) and diffusion.betas[-1].item() == pytest.approx(0.02)
    assert diffusion.spec_min.shape == (1, 1, 1) and diffusion.spec_max.item() == 2.0
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(diffusion.denorm_spec(diffusion.norm_spec(x)), x)
    small = DiffusionUnit2WavFast(sampling_rate=16000, block_size=160, win_length=512, n_unit=8, n_layers=1, n_chans=16)
    assert small.model_type == "DiffusionFast" and small.upstream_version == "5.0"
    assert small.sampling_rate_hz == 16000 and small.block == 160 and small.out_dims == 128
    rebuilt = DiffusionUnit2WavFast(**small.hparams)
    assert list(rebuilt.state_dict()) == list(small.state_dict())


def test_solver_schedule_interpolates_the_discrete_steps() -> None:
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64).float()[:20]
    sched = DiscreteVPSchedule(betas)
    abar = torch.cumprod(1 - betas.double(), 0)
    knots = torch.arange(1, 21, dtype=torch.float32) / 20
    torch.testing.assert_close(sched.alpha(knots).double() ** 2, abar, rtol=1e-5, atol=0)
    assert sched.network_step(knots).round().tolist() == list(range(20))
    grid = sched.time_grid(4)
    assert grid[0].item() == 1.0 and grid[-1].item() == pytest.approx(0.05)


@pytest.mark.parametrize("method", METHODS)
def test_each_sampler_calls_the_network_as_upstream(method: str) -> None:
    net = _TinyDenoiser()
    diffusion = GaussianDiffusion(net, out_dims=4)
    cond, start = torch.randn(1, 6, 4), torch.randn(1, 6, 4)
    with torch.no_grad():
        out = diffusion(cond, gt_spec=start, infer=True, infer_speedup=5, method=method, k_step=20)
    assert out.shape == (1, 6, 4) and torch.isfinite(out).all()
    steps = [s.tolist() for s in net.steps]
    if method in ("ddim", "pndm"):
        expected = [[15], [10], [5], [0]]
        if method == "pndm":  # the first step evaluates the network twice
            expected = [[15], [10]] + expected[1:]
        assert steps == expected
        assert all(not s.is_floating_point() for s in net.steps)
    else:  # 4 time-uniform steps over t in [1/20, 1]: network steps 19, 14.25, 9.5, 4.75
        assert len(steps) == 4
        torch.testing.assert_close(torch.tensor(steps).flatten(), torch.tensor([19.0, 14.25, 9.5, 4.75]))


def test_training_draws_steps_below_k_step() -> None:
    net = _TinyDenoiser()
    diffusion = GaussianDiffusion(net, out_dims=4)
    cond, spec = torch.randn(64, 3, 4), torch.randn(64, 3, 4)
    loss = diffusion(cond, gt_spec=spec, infer=False, k_step=7)
    assert loss.dim() == 0
    steps = net.steps[-1]
    assert steps.dtype == torch.long and 0 <= steps.min() and steps.max() < 7
    diffusion(cond, gt_spec=spec, infer=False)  # k_step None: the constructor's 1000
    assert net.steps[-1].max() >= 7


def test_invalid_sampler_arguments_are_refused() -> None:
    diffusion = GaussianDiffusion(_TinyDenoiser(), out_dims=4)
    cond = torch.randn(1, 3, 4)
    with pytest.raises(ValueError, match="dpm-solver, unipc, ddim, pndm"):
        diffusion(cond, gt_spec=cond, method="euler", k_step=20)
    with pytest.raises(ValueError, match="k_step=1001"):
        diffusion(cond, gt_spec=cond, k_step=1001)
    with pytest.raises(ValueError, match="at least 2 steps"):
        diffusion(cond, gt_spec=cond, method="dpm-solver", k_step=10, infer_speedup=10)
    with pytest.raises(ValueError, match="infer_speedup"):
        diffusion(cond, gt_spec=cond, k_step=10, infer_speedup=0)
    with pytest.raises(ValueError, match="gt_spec"):
        diffusion(cond, infer=False)


def test_model_argument_errors() -> None:
    with pytest.raises(ConfigError, match="model.n_layers"):
        DiffusionUnit2WavFast(sampling_rate=16000, block_size=160, win_length=512, n_layers=0)
    with pytest.raises(ConfigError, match="model.n_chans"):
        DiffusionUnit2WavFast(sampling_rate=16000, block_size=160, win_length=512, n_chans=15)
    small = DiffusionUnit2WavFast(sampling_rate=16000, block_size=160, win_length=512, n_unit=8, n_layers=1, n_chans=16)
    units, f0, volume = torch.randn(1, 4, 8), torch.full((1, 4, 1), 200.0), torch.full((1, 4, 1), 0.1)
    with pytest.raises(ValueError, match="k_step is required"):
        small(units, f0, volume, gt_spec=torch.randn(1, 4, 128))
    with pytest.raises(ValueError, match="vocoder"):
        small(units, f0, volume, gt_spec=torch.randn(1, 4, 128), infer=False)
    # k_step 0: the DDSP mel (here gt_spec, no vocoder) comes back unchanged
    mel = torch.randn(1, 4, 128)
    assert torch.equal(small(units, f0, volume, gt_spec=mel, k_step=0), mel)
