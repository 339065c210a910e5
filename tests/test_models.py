"""Model behaviour: shapes, training autograd, noise injection, speakers, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.loss import FixedScaleSpectralLoss
from mlflow_ddsp.models import MODEL_TYPES, CombSubFast, build_model
from mlflow_ddsp.dsp import complex_gain
from mlflow_ddsp.dsp.underflow import EXP_FLOOR, exp_floored
from mlflow_ddsp.models.pcmer import (
    ConformerConvModule,
    FastAttention,
    favor_attention,
    gaussian_orthogonal_random_matrix,
    linear_attention,
    softmax_kernel_features,
)

SR, BLOCK, N_UNIT = 8000, 32, 16
TINY = {  # small sizes keep each forward pass to milliseconds
    "CombSubFast": {},
    "CombSubSuperFast": {"win_length": 128},
    "Sins": {"n_harmonics": 8, "n_mag_allpass": 16, "n_mag_noise": 16},
    "CombSub": {"n_mag_allpass": 16, "n_mag_harmonic": 32, "n_mag_noise": 16},
}


def _model(model_type: str, n_spk: int = 1, **extra):
    torch.manual_seed(0)
    sizes = {**TINY[model_type], **extra}
    return build_model(model_type, sampling_rate=SR, block_size=BLOCK, n_unit=N_UNIT, n_spk=n_spk, **sizes)


def _inputs(batch: int = 2, frames: int = 10):
    gen = torch.Generator().manual_seed(1)
    units = torch.randn(batch, frames, N_UNIT, generator=gen)
    f0 = 120 + 200 * torch.rand(batch, 1, 1, generator=gen) + 10 * torch.rand(batch, frames, 1, generator=gen)
    volume = 0.2 * torch.rand(batch, frames, 1, generator=gen)
    return units, f0, volume


def test_model_types_are_the_upstream_names() -> None:
    assert set(MODEL_TYPES) == {"CombSub", "CombSubFast", "CombSubSuperFast", "Sins", "RectifiedFlow", "DiffusionFast"}
    assert all(cls.model_type == name for name, cls in MODEL_TYPES.items())


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_forward_returns_audio_of_frames_times_block(model_type: str) -> None:
    model = _model(model_type).eval()
    units, f0, volume = _inputs()
    with torch.no_grad():
        audio = model(units, f0, volume)
    assert audio.shape == (2, 10 * BLOCK)
    assert audio.dtype == torch.float32 and torch.isfinite(audio).all() and audio.abs().max() > 0


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_training_step_backpropagates_to_every_used_parameter(model_type: str) -> None:
    model = _model(model_type).train()
    units, f0, volume = _inputs()
    audio = model(units, f0, volume, infer=False)
    loss = FixedScaleSpectralLoss([64, 128])(audio, torch.randn_like(audio))
    loss.backward()
    no_grad = sorted(name for name, p in model.named_parameters() if p.grad is None)
    if model_type == "CombSubSuperFast":
        # the per-layer LayerNorms exist only for checkpoint compatibility
        layer_norms = [f"unit2ctrl.decoder.encoder_layers.{i}.norm.{w}" for i in range(3) for w in ("bias", "weight")]
        assert no_grad == layer_norms
    else:
        assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_noise_source_is_injectable_and_seedable(model_type: str) -> None:
    model = _model(model_type).eval()
    units, f0, volume = _inputs()
    with torch.no_grad():
        a = model(units, f0, volume, generator=torch.Generator().manual_seed(3))
        b = model(units, f0, volume, generator=torch.Generator().manual_seed(3))
        c = model(units, f0, volume, generator=torch.Generator().manual_seed(4))
        torch.manual_seed(3)
        from_global = model(units, f0, volume)
        silent = model(units, f0, volume, noise=torch.zeros(2, 10 * BLOCK))
        silent_again = model(units, f0, volume, noise=torch.zeros(2, 10 * BLOCK))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, from_global)  # a seeded global RNG gives upstream's draw
    assert torch.equal(silent, silent_again) and not torch.allclose(silent, a)
    with pytest.raises(ValueError, match="noise must be"):
        model(units, f0, volume, noise=torch.zeros(2, 5))


@pytest.mark.parametrize("model_type", ["Sins", "CombSub"])
def test_parts_add_up_to_audio(model_type: str) -> None:
    model = _model(model_type).eval()
    with torch.no_grad():
        out = model.synthesize(*_inputs())
    torch.testing.assert_close(out.harmonic + out.noise, out.audio)
    assert out.hidden.shape == (2, 10, 256)


def test_train_and_eval_mode_compute_the_same_function() -> None:
    model = _model("CombSubFast")
    units, f0, volume = _inputs()
    noise = torch.rand(2, 10 * BLOCK) * 2 - 1
    with torch.no_grad():
        train_out = model.train()(units, f0, volume, noise=noise)
        eval_out = model.eval()(units, f0, volume, noise=noise)
    assert torch.equal(train_out, eval_out)  # upstream declares dropout but never applies it


def test_initial_phase_of_a_full_turn_changes_nothing() -> None:
    model = _model("CombSubFast").eval()
    units, f0, volume = _inputs()
    noise = torch.zeros(2, 10 * BLOCK)
    with torch.no_grad():
        base = model(units, f0, volume, noise=noise)
        turned = model(units, f0, volume, noise=noise, initial_phase=torch.full((2, 1, 1), 2 * math.pi))
        shifted = model(units, f0, volume, noise=noise, initial_phase=torch.full((2, 1, 1), math.pi))
    torch.testing.assert_close(turned, base, atol=1e-4, rtol=0)
    assert not torch.allclose(shifted, base, atol=1e-3)


def test_speakers_by_id_and_by_mix() -> None:
    model = _model("CombSubFast", n_spk=3).eval()
    units, f0, volume = _inputs(batch=1)
    noise = torch.zeros(1, 10 * BLOCK)
    with torch.no_grad():
        by_tensor = model(units, f0, volume, torch.tensor([[2]]), noise=noise)
        by_int = model(units, f0, volume, 2, noise=noise)
        by_mix = model(units, f0, volume, spk_mix_dict={2: 1.0}, noise=noise)
        other = model(units, f0, volume, 3, noise=noise)
        half = model(units, f0, volume, spk_mix_dict={2: 0.5, 3: 0.5}, noise=noise)
    assert torch.equal(by_tensor, by_int)
    torch.testing.assert_close(by_mix, by_tensor)
    assert not torch.allclose(other, by_tensor)
    assert not torch.allclose(half, by_tensor) and not torch.allclose(half, other)


def test_single_speaker_model_ignores_speaker_id() -> None:
    model = _model("CombSubFast").eval()
    units, f0, volume = _inputs()
    noise = torch.zeros(2, 10 * BLOCK)
    with torch.no_grad():
        assert torch.equal(model(units, f0, volume, noise=noise), model(units, f0, volume, 5, noise=noise))


@pytest.mark.parametrize(
    ("spk_id", "spk_mix_dict", "match"),
    [
        (None, None, r"spk_id is required: this model has n_spk=2"),
        (3, None, r"ids are 1\.\.2"),
        (0, None, r"ids are 1\.\.2"),
        (None, {3: 1.0}, r"ids are 1\.\.2"),
        (None, {}, "spk_mix_dict is empty"),
        (torch.ones(2, 2, dtype=torch.long), None, r"spk_id must be an int, \[B\] or \[B, 1\]"),
    ],
)
def test_bad_speaker_arguments_are_clear_errors(spk_id, spk_mix_dict, match: str) -> None:
    model = _model("CombSubFast", n_spk=2)
    with pytest.raises(ValueError, match=match):
        model(*_inputs(), spk_id, spk_mix_dict)


def test_input_shapes_are_checked() -> None:
    model = _model("CombSubFast")
    units, f0, volume = _inputs()
    with pytest.raises(ValueError, match=r"units must be \[B, T, 16\]"):
        model(torch.zeros(2, 10, 15), f0, volume)
    with pytest.raises(ValueError, match=r"f0 must be \[B, T, 1\]"):
        model(units, f0[:, :9], volume)
    with pytest.raises(ValueError, match=r"volume must be \[B, T, 1\]"):
        model(units, f0, volume.squeeze(-1))


def test_pitch_shift_embedding_changes_output() -> None:
    model = _model("CombSubFast", use_pitch_aug=True).eval()
    units, f0, volume = _inputs()
    noise = torch.zeros(2, 10 * BLOCK)
    with torch.no_grad():
        plain = model(units, f0, volume, noise=noise)
        shifted = model(units, f0, volume, noise=noise, aug_shift=torch.full((2, 1, 1), 3.0))
    assert not torch.allclose(plain, shifted)


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_hparams_rebuild_the_same_architecture(model_type: str) -> None:
    model = _model(model_type, n_spk=2)
    rebuilt = build_model(model_type, **model.hparams)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.hparams == model.hparams


def test_unknown_model_type_names_key_value_and_allowed() -> None:
    with pytest.raises(ConfigError, match=r"model\.type='CombSubUltra'.*CombSub, CombSubFast, CombSubSuperFast, DiffusionFast, RectifiedFlow, Sins"):
        build_model("CombSubUltra", sampling_rate=SR, block_size=BLOCK)


def test_encoder_out_channels_is_an_alias_of_n_unit() -> None:
    model = build_model("CombSubFast", sampling_rate=SR, block_size=BLOCK, encoder_out_channels=24)
    assert model.n_unit == 24 and model.unit2ctrl.stack[0].in_channels == 24
    with pytest.raises(ConfigError, match="not both"):
        build_model("CombSubFast", sampling_rate=SR, block_size=BLOCK, encoder_out_channels=24, n_unit=24)


def test_unknown_and_missing_keywords_are_named() -> None:
    with pytest.raises(ConfigError, match=r"'CombSubFast' does not take win_length; allowed: sampling_rate"):
        build_model("CombSubFast", sampling_rate=SR, block_size=BLOCK, win_length=2048)
    with pytest.raises(ConfigError, match=r"'Sins' needs block_size"):
        build_model("Sins", sampling_rate=SR)


@pytest.mark.parametrize(
    ("model_type", "kwargs", "match"),
    [
        ("CombSubFast", {"sampling_rate": 0}, r"data\.sampling_rate=0: must be an integer >= 1"),
        ("CombSubFast", {"sampling_rate": 44100.0}, r"data\.sampling_rate=44100\.0"),
        ("CombSubFast", {"block_size": -512}, r"data\.block_size=-512"),
        ("CombSubFast", {"n_unit": 0}, r"data\.encoder_out_channels=0"),
        ("CombSubFast", {"n_spk": 0}, r"model\.n_spk=0: must be an integer >= 1"),
        ("CombSubFast", {"n_spk": True}, r"model\.n_spk=True"),
        ("CombSubFast", {"use_pitch_aug": "yes"}, r"model\.use_pitch_aug='yes': must be true or false"),
        ("CombSubSuperFast", {"win_length": 32}, r"model\.win_length=32: must be greater than data\.block_size=32"),
        ("Sins", {"n_harmonics": 0}, r"model\.n_harmonics=0"),
        ("Sins", {"n_mag_noise": 1}, r"model\.n_mag_noise=1: must be an integer >= 2"),
        ("CombSub", {"n_mag_harmonic": 1}, r"model\.n_mag_harmonic=1"),
    ],
)
def test_out_of_range_values_raise_config_error(model_type: str, kwargs: dict, match: str) -> None:
    args = {"sampling_rate": SR, "block_size": BLOCK, "n_unit": N_UNIT, **TINY[model_type], **kwargs}
    with pytest.raises(ConfigError, match=match):
        build_model(model_type, **args)
    assert issubclass(ConfigError, ValueError)


def test_constructor_arguments_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        CombSubFast(SR, BLOCK)  # type: ignore[misc]


def test_random_features_are_orthogonal_blocks() -> None:
    matrix = gaussian_orthogonal_random_matrix(266, 64, generator=torch.Generator().manual_seed(0))
    assert matrix.shape == (266, 64)
    directions = matrix / matrix.norm(dim=1, keepdim=True)
    for start, stop in ((0, 64), (192, 256), (256, 266)):  # full blocks and the 10-row remainder
        gram = directions[start:stop] @ directions[start:stop].T
        torch.testing.assert_close(gram, torch.eye(stop - start), atol=1e-5, rtol=0)


def test_fast_attention_approximates_softmax_attention() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    q, k = (0.5 * torch.randn(1, 2, 20, 16, generator=gen) for _ in range(2))
    v = torch.randn(1, 2, 20, 16, generator=gen)
    exact = torch.softmax(q @ k.transpose(-1, -2) / 4, dim=-1) @ v  # 1/sqrt(E), E = 16
    approx = FastAttention(16, n_features=4096)(q, k, v)
    assert (approx - exact).abs().max() < 0.1 * exact.abs().max()


def _reference_attention(q, k, v, projection):
    """Upstream's FAVOR+ written as the two reference functions (autograd does the backward)."""
    return linear_attention(softmax_kernel_features(q, projection, True), softmax_kernel_features(k, projection, False), v)


@pytest.mark.parametrize("scale", [1.0, 8.0], ids=["usual", "exponents-below-the-floor"])
def test_fused_attention_matches_the_reference_forward_and_backward(scale: float) -> None:
    """The hand-written backward (and the one-matmul forward) against autograd through upstream's formula.

    ``scale`` 8 puts most key exponents far below EXP_FLOOR (-|k|^2 / 16 of about -500), where
    the reference underflows to subnormals and zeros and ours floors: still the same numbers.
    """
    gen = torch.Generator().manual_seed(0)
    projection = gaussian_orthogonal_random_matrix(266, 64, generator=gen).double()
    q, k, v = (scale * torch.randn(2, 3, 11, 64, generator=gen, dtype=torch.float64) for _ in range(3))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    expected = _reference_attention(q, k, v, projection)
    got = favor_attention(q, k, v, projection)
    if scale > 1:
        assert (softmax_kernel_features(k, projection, False) < math.exp(EXP_FLOOR)).float().mean() > 0.5
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    grad = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    for a, b, name in zip(torch.autograd.grad(got, (q, k, v), grad), torch.autograd.grad(expected, (q, k, v), grad), "qkv"):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=f"d{name}")


def test_fused_attention_passes_gradcheck_including_the_query_maximum() -> None:
    gen = torch.Generator().manual_seed(1)
    projection = gaussian_orthogonal_random_matrix(20, 8, generator=gen).double()
    inputs = tuple(torch.randn(1, 2, 5, 8, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: favor_attention(q, k, v, projection), inputs)


@pytest.mark.parametrize("variant", ["pcmer", "conv_only"])
def test_conformer_module_computes_its_layers_in_order(variant: str) -> None:
    """The channels-last forward is the Sequential of upstream's layers (what the state_dict keys name)."""
    torch.manual_seed(0)
    module = ConformerConvModule(32, kernel_size=7, variant=variant).double()
    x = torch.randn(2, 13, 32, dtype=torch.float64, requires_grad=True)
    got, expected = module(x), module.net(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    params = [x, *module.parameters()]
    for a, b in zip(torch.autograd.grad(got.sum(), params), torch.autograd.grad(expected.sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_complex_gain_is_upstreams_complex_exp() -> None:
    gen = torch.Generator().manual_seed(0)
    log_magnitude, phase = (torch.randn(3, 5, 9, generator=gen) for _ in range(2))
    torch.testing.assert_close(complex_gain(log_magnitude, phase), torch.exp(torch.complex(log_magnitude, phase)))
    torch.testing.assert_close(complex_gain(None, phase), torch.exp(1j * phase))


def test_floored_exp_is_exp_to_within_the_smallest_normal_float() -> None:
    x = torch.tensor([-200.0, -104.0, -90.0, -87.5, -87.0, -10.0, 0.0, 5.0])
    got, exact = exp_floored(x), torch.exp(x)
    assert torch.equal(got[x >= EXP_FLOOR], exact[x >= EXP_FLOOR])
    assert (got - exact).abs().max() < 1.7e-38 and (got > 0).all()
