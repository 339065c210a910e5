"""Our models expose exactly upstream DDSP-SVC's state_dict: keys, shapes, dtypes, sizes.

``tests/data/ddsp_svc_state_dict_keys.json`` is a copy of
``shared/reference/ddsp_svc_state_dict_keys.json``, measured from upstream's
classes (44.1 kHz, block 512, upstream default sizes) for every model type,
unit width 256/768 and 1/2 speakers. Matching it is what makes upstream
``model_<N>.pt`` files load with ``strict=True``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mlflow_ddsp.models import build_model

REFERENCE = json.loads((Path(__file__).parent / "data" / "ddsp_svc_state_dict_keys.json").read_text())
UPSTREAM_DEFAULTS = {
    "CombSubFast": {},
    "CombSubSuperFast": {"win_length": 2048},
    "Sins": {"n_harmonics": 128, "n_mag_allpass": 256, "n_mag_noise": 256},
    "CombSub": {"n_mag_allpass": 256, "n_mag_harmonic": 512, "n_mag_noise": 256},
}


def _build(entry_name: str) -> torch.nn.Module:
    model_type, unit_part, spk_part = entry_name.split("/")
    return build_model(
        model_type,
        sampling_rate=44100,
        block_size=512,
        n_unit=int(unit_part.split("=")[1]),
        n_spk=int(spk_part.split("=")[1]),
        **UPSTREAM_DEFAULTS[model_type],
    )


def test_reference_covers_every_model_type_and_variant() -> None:
    assert len(REFERENCE) == 16
    assert {name.split("/")[0] for name in REFERENCE} == set(UPSTREAM_DEFAULTS)


@pytest.mark.parametrize("entry_name", sorted(REFERENCE))
def test_state_dict_matches_upstream(entry_name: str) -> None:
    expected = REFERENCE[entry_name]
    model = _build(entry_name)
    state = model.state_dict()

    assert set(state) == set(expected["state_dict"]), (
        f"missing {sorted(set(expected['state_dict']) - set(state))}, "
        f"unexpected {sorted(set(state) - set(expected['state_dict']))}"
    )
    for key, (shape, dtype) in expected["state_dict"].items():
        assert list(state[key].shape) == shape, key
        assert str(state[key].dtype) == f"torch.{dtype}", key
    assert sum(p.numel() for p in model.parameters()) == expected["params"]

    # a checkpoint with exactly these entries (fresh values) loads strictly
    checkpoint = {}
    for key, (shape, dtype) in expected["state_dict"].items():
        if dtype == "int64":  # hyperparameter buffers must carry the model's values
            checkpoint[key] = state[key].clone()
        else:
            checkpoint[key] = torch.randn(shape, dtype=getattr(torch, dtype))
    result = model.load_state_dict(checkpoint, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    key = "unit2ctrl.dense_out.weight_v"
    assert torch.equal(model.state_dict()[key], checkpoint[key])


@pytest.mark.parametrize(
    ("model_type", "window"),
    [
        ("CombSubFast", torch.sqrt(torch.hann_window(1024))),
        ("CombSubSuperFast", torch.hann_window(2048)),
    ],
)
def test_buffers_hold_upstream_values(model_type: str, window: torch.Tensor) -> None:
    model = build_model(model_type, sampling_rate=44100, block_size=512, n_unit=256)
    state = model.state_dict()
    assert int(state["sampling_rate"]) == 44100 and int(state["block_size"]) == 512
    torch.testing.assert_close(state["window"], window, rtol=0, atol=0)


def test_checkpoint_with_other_sampling_rate_is_rejected() -> None:
    model = build_model("CombSubFast", sampling_rate=44100, block_size=512, n_unit=256)
    state = model.state_dict()
    state["sampling_rate"] = torch.tensor(22050)
    with pytest.raises(RuntimeError, match=r"data\.sampling_rate=22050.*built with 44100"):
        model.load_state_dict(state)
    assert int(model.sampling_rate) == 44100  # nothing half-loaded into the buffer check


def test_checkpoint_with_other_window_is_rejected() -> None:
    # upstream issue #111: a 1024-sample window file into a 2048 model
    small = build_model("CombSubSuperFast", sampling_rate=44100, block_size=512, win_length=1024, n_unit=256)
    large = build_model("CombSubSuperFast", sampling_rate=44100, block_size=512, win_length=2048, n_unit=256)
    with pytest.raises(RuntimeError, match="window"):
        large.load_state_dict(small.state_dict())


def test_pitch_augmentation_adds_its_upstream_key() -> None:
    model = build_model("CombSubFast", sampling_rate=44100, block_size=512, n_unit=256, use_pitch_aug=True)
    state = model.state_dict()
    assert list(state["unit2ctrl.aug_shift_embed.weight"].shape) == [256, 1]
    assert "unit2ctrl.aug_shift_embed.bias" not in state
