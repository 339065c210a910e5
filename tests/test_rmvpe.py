"""RMVPE: upstream's state-dict layout, loading random weights from files, decoding, errors.

The tests write small randomly initialised checkpoints in upstream's format
(``{'model': state_dict}``, also a bare state dict with a DDP ``module.`` prefix),
load them through ``get_f0_extractor('rmvpe', ckpt=...)`` and check the output
against the network called directly; the full-size layout is checked against a
digest of upstream's ``E2E0(4, 1, (2, 2))`` key names and shapes.
"""

from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest
import torch

from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.features import get_f0_extractor
from mlflow_ddsp.features.f0 import onto_frame_grid
from mlflow_ddsp.features.rmvpe import DEFAULT_RMVPE_CKPT, Rmvpe, RmvpeDims, load_rmvpe, rmvpe_mel_filters

SR, HOP = 44100, 512
TINY = RmvpeDims(n_blocks=1, n_stages=2, n_inters=1, base_channels=4, gru_hidden=8)

# sha256 of repr(sorted((key, shape))) of upstream's E2E0(4, 1, (2, 2)).state_dict()
# (yxlllc/DDSP-SVC 88f157c, encoder/rmvpe/model.py), computed once from upstream's code.
UPSTREAM_E2E0_KEYS = 801
UPSTREAM_E2E0_DIGEST = "b903f524df3b45611e3befe70e054387f4165da36ddb50784475cea36d4b4960"


def _random_state(dims: RmvpeDims, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in Rmvpe(dims).state_dict().items():
        if not value.is_floating_point():
            out[key] = value
        elif key.endswith("running_var"):
            out[key] = torch.rand(value.shape, generator=gen) + 0.5
        else:
            out[key] = torch.randn(value.shape, generator=gen) * 0.3
    return out


def _tone(seconds=0.6, freq=220.0, sr=SR):
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 5))).astype(np.float32)


@pytest.fixture()
def tiny_ckpt(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": _random_state(TINY)}, path)
    return path


def test_full_size_layout_is_upstreams():
    shapes = {k: tuple(v.shape) for k, v in Rmvpe().state_dict().items()}
    assert len(shapes) == UPSTREAM_E2E0_KEYS
    assert hashlib.sha256(repr(sorted(shapes.items())).encode()).hexdigest() == UPSTREAM_E2E0_DIGEST
    assert RmvpeDims.from_state_dict(Rmvpe().state_dict()) == RmvpeDims()


def test_sizes_are_read_from_the_weights():
    assert RmvpeDims.from_state_dict(_random_state(TINY)) == TINY


def test_loads_random_weights_from_a_file_and_runs_on_the_frame_grid(tiny_ckpt):
    extractor = get_f0_extractor("rmvpe", sample_rate=SR, hop_size=HOP, ckpt=str(tiny_ckpt))
    audio = _tone()
    raw = extractor.extract_raw(audio)
    assert raw.shape == (audio.size // HOP + 1,)

    # The same weights called directly, then upstream's 10 ms -> frame-grid rule.
    net = Rmvpe(TINY).eval()
    net.load_state_dict(_random_state(TINY))
    from mlflow_ddsp.audio import resample

    f0 = net.f0(resample(audio, SR, 16000), threshold=0.03)
    assert f0.shape == (int(resample(audio, SR, 16000).size) // 160 + 1,)
    expected = onto_frame_grid(f0, 0.01, raw.size, HOP / SR)
    np.testing.assert_allclose(raw, expected, rtol=1e-5)
    assert (raw > 0).any()  # random weights still give salience above 0.03 somewhere


def test_bare_state_dict_with_module_prefix_loads(tmp_path):
    path = tmp_path / "rmvpe.pt"
    torch.save({f"module.{k}": v for k, v in _random_state(TINY, seed=3).items()}, path)
    model = load_rmvpe(path)
    assert torch.equal(model.cnn.weight, _random_state(TINY, seed=3)["cnn.weight"])


def test_decode_is_the_local_weighted_mean_around_the_peak():
    net = Rmvpe(TINY)
    sal = torch.zeros(1, 4, 360)
    sal[0, 0, 100] = 0.9  # a lone peak: exactly bin 100
    sal[0, 1, [99, 100, 101]] = torch.tensor([0.3, 0.6, 0.3])  # symmetric: still bin 100
    sal[0, 2, [0, 1]] = torch.tensor([0.5, 0.5])  # at the edge: halfway between bins 0 and 1
    sal[0, 3, 200] = 0.02  # below the 0.03 threshold: unvoiced
    f0 = net.decode(sal, threshold=0.03)[0].numpy()
    cents = lambda b: 20 * b + 1997.3794084376191  # noqa: E731
    hz = lambda c: 10 * 2 ** (c / 1200)  # noqa: E731
    np.testing.assert_allclose(f0[:3], [hz(cents(100)), hz(cents(100)), hz(cents(0.5))], rtol=1e-5)
    assert f0[3] == 0


@pytest.mark.skipif(importlib.util.find_spec("librosa") is None, reason="librosa is not installed (extra [f0])")
def test_mel_filters_equal_librosas():
    import librosa

    expected = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=128, fmin=30, fmax=8000, htk=True)
    np.testing.assert_allclose(rmvpe_mel_filters(), expected, rtol=1e-5, atol=1e-8)


def test_mel_frames_follow_the_10ms_grid():
    mel = Rmvpe(TINY).mel(torch.zeros(1, 16000 + 37))
    assert mel.shape == (1, 128, (16000 + 37) // 160 + 1)
    assert torch.allclose(mel, torch.log(torch.tensor(1e-5)))


# ------------------------------------------------------------------ errors


def test_missing_default_file_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        get_f0_extractor("rmvpe", sample_rate=SR, hop_size=HOP)
    message = str(info.value)
    assert message.startswith(f"data.f0_ckpt: '{DEFAULT_RMVPE_CKPT}' does not exist; f0 extractor 'rmvpe' needs its weights")
    assert "\n" not in message


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match=r"data.f0_ckpt: cannot load .*model.pt"):
        get_f0_extractor("rmvpe", sample_rate=SR, hop_size=HOP, ckpt=str(path))


def test_another_networks_weights(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": {"proj.weight": torch.zeros(3, 3)}}, path)
    with pytest.raises(ConfigError, match=r"data.f0_ckpt: .*model.pt is not an RMVPE checkpoint"):
        load_rmvpe(path)


def test_weights_that_do_not_fit(tmp_path):
    sd = _random_state(TINY)
    sd["fc.1.weight"] = torch.zeros(361, 16)  # 361 pitch bins instead of 360
    torch.save({"model": sd}, tmp_path / "a.pt")
    with pytest.raises(ConfigError, match=r"data.f0_ckpt: the weights in .*a.pt do not fit RMVPE \(size mismatch for fc.1.weight"):
        load_rmvpe(tmp_path / "a.pt")
    sd = _random_state(TINY)
    del sd["unet.decoder.layers.0.conv1.0.weight"]
    torch.save({"model": sd}, tmp_path / "b.pt")
    with pytest.raises(ConfigError, match=r"do not fit RMVPE \(1 missing, e.g. 'unet.decoder.layers.0.conv1.0.weight'\)"):
        load_rmvpe(tmp_path / "b.pt")
