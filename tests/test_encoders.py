"""Content encoders: loading real checkpoint formats from files, key parity, outputs, alignment.

The tests write small randomly initialised checkpoints in each real format (a bare
HuBERT-Soft state dict with a DDP ``module.`` prefix; fairseq dicts with ``cfg`` or
legacy ``args``), load them through ``load_units_encoder``, and compare the result
with a reference forward pass computed here, functionally, from the saved tensors.
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.features import units as units_module
from mlflow_ddsp.features.encoders import (
    FairseqHubert,
    FairseqHubertConfig,
    HubertSoft,
    HubertSoftDims,
    LogMel,
)
from mlflow_ddsp.features.encoders.checkpoint import read_checkpoint
from mlflow_ddsp.features.encoders.fairseq_hubert import parse_conv_layers
from mlflow_ddsp.features.units import EncoderSpec, align_units, load_units_encoder, register_encoder

SR, HOP = 44100, 512
TINY_SOFT = HubertSoftDims(
    conv_channels=32,
    d_model=128,
    n_layers=2,
    n_heads=2,
    ffn_dim=96,
    n_units=16,
    pos_kernel=16,
    pos_groups=4,
    n_labels=10,
)
TINY_CONV = "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"
TINY_FAIRSEQ = dict(
    _name="hubert",
    label_rate=50.0,
    extractor_mode="default",
    encoder_layers=12,
    encoder_embed_dim=32,
    encoder_ffn_embed_dim=64,
    encoder_attention_heads=4,
    activation_fn="gelu",
    layer_type="transformer",
    conv_feature_layers=TINY_CONV,
    conv_bias=False,
    conv_pos=16,
    conv_pos_groups=4,
    final_dim=8,
    layer_norm_first=False,
    dropout=0.1,
    mask_prob=0.8,
)


# ---------------------------------------------------------------- helpers


def _audio(seconds: float = 1.0, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A harmonic tone plus a little noise: enough structure for every layer to matter."""
    t = np.arange(int(sr * seconds)) / sr
    rng = np.random.default_rng(seed)
    wave = sum(np.sin(2 * np.pi * 180 * k * t) / k for k in range(1, 5)) * 0.2
    return (wave + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _randomise(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Give every parameter random values (norm gains too), return a detached state dict."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight_g"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.dim() > 1 else 0.1))
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _to16k(audio: np.ndarray) -> torch.Tensor:
    from mlflow_ddsp.audio import resample

    return torch.from_numpy(resample(audio, SR, 16000))[None]


def _weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return g * v / v.norm(dim=(0, 1), keepdim=True)


def _attention(x, q, k, v, heads):
    b, n, d = x.shape
    hd = d // heads
    q = (q * hd**-0.5).view(b, n, heads, hd).transpose(1, 2)
    k = k.view(b, n, heads, hd).transpose(1, 2)
    v = v.view(b, n, heads, hd).transpose(1, 2)
    w = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, n, d)


def _reference_hubert_soft(sd, wav, heads):
    """bshall HuBERT-Soft ``units()``, written out functionally from a state dict."""
    ln = lambda x, p: F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"])  # noqa: E731
    lin = lambda x, p: F.linear(x, sd[p + ".weight"], sd[p + ".bias"])  # noqa: E731
    x = F.pad(wav, (40, 40))[:, None]
    x = F.conv1d(x, sd["feature_extractor.conv0.weight"], stride=5)
    c = x.shape[1]
    x = F.gelu(F.group_norm(x, c, sd["feature_extractor.norm0.weight"], sd["feature_extractor.norm0.bias"]))
    for i in range(1, 7):
        x = F.gelu(F.conv1d(x, sd[f"feature_extractor.conv{i}.weight"], stride=2))
    x = lin(ln(x.transpose(1, 2), "feature_projection.norm"), "feature_projection.projection")
    v, g = sd["positional_embedding.conv.weight_v"], sd["positional_embedding.conv.weight_g"]
    k, groups = v.shape[2], x.shape[2] // v.shape[1]
    y = F.conv1d(
        x.transpose(1, 2),
        _weight_norm(g, v),
        sd["positional_embedding.conv.bias"],
        padding=k // 2,
        groups=groups,
    )
    x = ln(x + F.gelu(y[:, :, :-1]).transpose(1, 2), "norm")
    n_layers = len({key.split(".")[2] for key in sd if key.startswith("encoder.layers.")})
    for i in range(n_layers):
        p = f"encoder.layers.{i}."
        qkv = F.linear(x, sd[p + "self_attn.in_proj_weight"], sd[p + "self_attn.in_proj_bias"])
        a = lin(_attention(x, *qkv.chunk(3, dim=-1), heads), p + "self_attn.out_proj")
        x = ln(x + a, p + "norm1")
        x = ln(x + lin(F.gelu(lin(x, p + "linear1")), p + "linear2"), p + "norm2")
    return lin(x, "proj")


def _reference_fairseq(sd, cfg, wav, layer, proj):
    """fairseq ``HubertModel.extract_features(output_layer=layer)`` (+ final_proj), functionally."""
    ln = lambda x, p: F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"])  # noqa: E731
    lin = lambda x, p: F.linear(x, sd[p + ".weight"], sd[p + ".bias"])  # noqa: E731
    x = wav[:, None]
    for i, (dim, _, stride) in enumerate(parse_conv_layers(cfg["conv_feature_layers"])):
        p = f"feature_extractor.conv_layers.{i}."
        x = F.conv1d(x, sd[p + "0.weight"], sd.get(p + "0.bias"), stride=stride)
        if cfg["extractor_mode"] == "layer_norm":
            x = ln(x.transpose(1, 2), p + "2.1").transpose(1, 2)
        elif i == 0:
            x = F.group_norm(x, dim, sd[p + "2.weight"], sd[p + "2.bias"])
        x = F.gelu(x)
    x = ln(x.transpose(1, 2), "layer_norm")
    if "post_extract_proj.weight" in sd:
        x = lin(x, "post_extract_proj")
    v, g = sd["encoder.pos_conv.0.weight_v"], sd["encoder.pos_conv.0.weight_g"]
    k = v.shape[2]
    y = F.conv1d(
        x.transpose(1, 2),
        _weight_norm(g, v),
        sd["encoder.pos_conv.0.bias"],
        padding=k // 2,
        groups=cfg["conv_pos_groups"],
    )
    if k % 2 == 0:
        y = y[:, :, :-1]
    x = x + F.gelu(y).transpose(1, 2)
    pre = cfg["layer_norm_first"]
    if not pre:
        x = ln(x, "encoder.layer_norm")
    for i in range(layer):
        p = f"encoder.layers.{i}."
        h = ln(x, p + "self_attn_layer_norm") if pre else x
        a = _attention(
            h,
            lin(h, p + "self_attn.q_proj"),
            lin(h, p + "self_attn.k_proj"),
            lin(h, p + "self_attn.v_proj"),
            cfg["encoder_attention_heads"],
        )
        x = x + lin(a, p + "self_attn.out_proj")
        if not pre:
            x = ln(x, p + "self_attn_layer_norm")
        h = ln(x, p + "final_layer_norm") if pre else x
        x = x + lin(F.gelu(lin(h, p + "fc1")), p + "fc2")
        if not pre:
            x = ln(x, p + "final_layer_norm")
    return lin(x, "final_proj") if proj else x


def _write_hubert_soft(path, seed=1):
    torch.manual_seed(seed)
    model = HubertSoft(TINY_SOFT)
    sd = _randomise(model, seed)
    torch.save({"module." + k: v for k, v in sd.items()}, path)  # DDP-prefixed, like the release
    return sd


def _tiny_fairseq_weights(cfg: dict, seed: int, n_labels: int = 5) -> dict[str, torch.Tensor]:
    model = FairseqHubert(
        FairseqHubertConfig.from_mapping(cfg, "test"), final_proj_dim=cfg.get("final_dim") or None
    )
    sd = _randomise(model, seed)
    if "final_dim" in cfg:
        sd["label_embs_concat"] = torch.randn(n_labels, cfg["final_dim"])  # pre-training only
    return sd


def _write_fairseq(path, cfg=None, seed=2, style="cfg"):
    """A fairseq-style checkpoint: weights under 'model', architecture in 'cfg' or legacy 'args'.

    ``style="args"`` also uses torch's pre-1.6 (non-zip) file format, as old fairseq files do.
    """
    cfg = dict(TINY_FAIRSEQ if cfg is None else cfg)
    sd = _tiny_fairseq_weights(cfg, seed)
    state = {
        "model": sd,
        "criterion": None,
        "optimizer_history": [{"criterion_name": "HubertCriterion", "num_updates": 400000}],
        # numpy scalars in training state are outside torch's weights-only allowlist
        "extra_state": {"best": np.float64(2.5), "train_iterator": {"epoch": 3}},
    }
    if style == "cfg":
        state |= {
            "args": None,
            "cfg": {"_name": None, "model": cfg, "task": {"sample_rate": 16000, "normalize": False}},
        }
    else:  # pre-hydra fairseq: an argparse.Namespace, model fields at top level, `arch`
        fields = {k: v for k, v in cfg.items() if k != "_name"}
        state |= {"args": argparse.Namespace(arch="hubert", task="hubert_pretraining", **fields), "cfg": None}
    torch.save(state, path, _use_new_zipfile_serialization=style == "cfg")
    return sd, cfg


@pytest.fixture(scope="module")
def soft_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("soft") / "hubert-soft.pt"
    return path, _write_hubert_soft(path)


@pytest.fixture(scope="module")
def fairseq_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("fairseq") / "checkpoint_best_legacy_500.pt"
    sd, cfg = _write_fairseq(path)
    return path, sd, cfg


# ---------------------------------------------------------------- HuBERT-Soft


def test_hubert_soft_full_size_keys_match_release():
    with torch.device("meta"):
        sd = HubertSoft().state_dict()
    expected = {
        "feature_extractor.norm0.weight": (512,),
        "feature_extractor.norm0.bias": (512,),
        "feature_projection.norm.weight": (512,),
        "feature_projection.norm.bias": (512,),
        "feature_projection.projection.weight": (768, 512),
        "feature_projection.projection.bias": (768,),
        "positional_embedding.conv.bias": (768,),
        "positional_embedding.conv.weight_g": (1, 1, 128),
        "positional_embedding.conv.weight_v": (768, 48, 128),
        "norm.weight": (768,),
        "norm.bias": (768,),
        "proj.weight": (256, 768),
        "proj.bias": (256,),
        "masked_spec_embed": (768,),
        "label_embedding.weight": (100, 256),
    }
    kernels = [10, 3, 3, 3, 3, 2, 2]
    expected |= {
        f"feature_extractor.conv{i}.weight": (512, 1 if i == 0 else 512, k) for i, k in enumerate(kernels)
    }
    per_layer = {
        "self_attn.in_proj_weight": (2304, 768),
        "self_attn.in_proj_bias": (2304,),
        "self_attn.out_proj.weight": (768, 768),
        "self_attn.out_proj.bias": (768,),
        "linear1.weight": (3072, 768),
        "linear1.bias": (3072,),
        "linear2.weight": (768, 3072),
        "linear2.bias": (768,),
        "norm1.weight": (768,),
        "norm1.bias": (768,),
        "norm2.weight": (768,),
        "norm2.bias": (768,),
    }
    expected |= {f"encoder.layers.{i}.{k}": s for i in range(12) for k, s in per_layer.items()}
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


def test_hubert_soft_dims_read_back_from_weights(soft_ckpt):
    _, sd = soft_ckpt
    assert HubertSoftDims.from_state_dict(sd) == TINY_SOFT


def test_hubert_soft_loads_from_file_and_matches_reference(soft_ckpt):
    path, sd = soft_ckpt
    encoder = load_units_encoder("hubertsoft", path, out_channels=16)
    assert encoder.out_channels == 16
    audio = _audio(1.0)
    units = encoder.encode(audio, SR, HOP)
    assert units.shape == (1, SR // HOP + 1, 16) and units.dtype == torch.float32

    wav = _to16k(audio)
    with torch.no_grad():
        raw = _reference_hubert_soft(sd, wav, heads=TINY_SOFT.n_heads)
    assert raw.shape == (1, wav.shape[1] // 320, 16)  # 40-sample pads: T // 320 frames
    ratio = (HOP / SR) / (320 / 16000)
    index = np.minimum(np.round(ratio * np.arange(units.shape[1])).astype(int), raw.shape[1] - 1)
    torch.testing.assert_close(units[0], raw[0, index], rtol=1e-4, atol=1e-4)

    # A differently initialised model gives clearly different units: the file's weights are in use.
    torch.manual_seed(99)
    fresh = HubertSoft(TINY_SOFT).eval()
    _randomise(fresh, 99)
    with torch.no_grad():
        other = fresh(wav)
    assert (other - raw).abs().mean() > 0.1 * raw.abs().mean()


def test_hubert_soft_accepts_parametrized_weight_norm_names(tmp_path, soft_ckpt):
    _, sd = soft_ckpt
    renamed = {
        k.replace("conv.weight_g", "conv.parametrizations.weight.original0").replace(
            "conv.weight_v", "conv.parametrizations.weight.original1"
        ): v
        for k, v in sd.items()
    }
    path = tmp_path / "renamed.pt"
    torch.save(renamed, path)
    original, _ = soft_ckpt
    audio = _audio(0.3)
    torch.testing.assert_close(
        load_units_encoder("hubertsoft", path).encode(audio, SR, HOP),
        load_units_encoder("hubertsoft", original).encode(audio, SR, HOP),
    )


def test_hubert_soft_rejects_a_fairseq_file(fairseq_ckpt):
    path, _, _ = fairseq_ckpt
    with pytest.raises(ConfigError, match=r"data.encoder_ckpt: .* is not a HuBERT-Soft"):
        load_units_encoder("hubertsoft", path)


# ---------------------------------------------------------------- fairseq HuBERT / ContentVec


def test_fairseq_full_size_keys_follow_fairseq_names():
    with torch.device("meta"):
        sd = FairseqHubert(FairseqHubertConfig(), final_proj_dim=256).state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["feature_extractor.conv_layers.0.0.weight"] == (512, 1, 10)
    assert shapes["feature_extractor.conv_layers.0.2.weight"] == (512,)  # GroupNorm after Dropout
    assert shapes["feature_extractor.conv_layers.6.0.weight"] == (512, 512, 2)
    assert shapes["encoder.pos_conv.0.weight_g"] == (1, 1, 128)
    assert shapes["encoder.pos_conv.0.weight_v"] == (768, 48, 128)
    assert shapes["post_extract_proj.weight"] == (768, 512)
    assert shapes["final_proj.weight"] == (256, 768)
    assert shapes["mask_emb"] == (768,)
    layer = {f"self_attn.{p}_proj.{w}" for p in ("q", "k", "v", "out") for w in ("weight", "bias")} | {
        f"{m}.{w}"
        for m in ("self_attn_layer_norm", "fc1", "fc2", "final_layer_norm")
        for w in ("weight", "bias")
    }
    expected = {f"encoder.layers.{i}.{k}" for i in range(12) for k in layer}
    expected |= {f"feature_extractor.conv_layers.{i}.0.weight" for i in range(7)}
    expected |= {"feature_extractor.conv_layers.0.2.weight", "feature_extractor.conv_layers.0.2.bias"}
    expected |= {"layer_norm.weight", "layer_norm.bias", "post_extract_proj.weight", "post_extract_proj.bias"}
    expected |= {
        "mask_emb",
        "encoder.pos_conv.0.weight_g",
        "encoder.pos_conv.0.weight_v",
        "encoder.pos_conv.0.bias",
    }
    expected |= {
        "encoder.layer_norm.weight",
        "encoder.layer_norm.bias",
        "final_proj.weight",
        "final_proj.bias",
    }
    assert set(sd) == expected


def test_parse_conv_layers_without_eval():
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == (
        ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
    )
    with pytest.raises(ValueError):
        parse_conv_layers("__import__('os').system('true')")


@pytest.mark.parametrize(
    "name, layer, proj, channels",
    [
        ("contentvec768l12", 12, False, 32),
        ("contentvec768", 9, False, 32),
        ("contentvec", 9, True, 8),
        ("hubertbase768l12", 12, False, 32),
        ("hubertbase768", 9, False, 32),
        ("hubertbase", 9, True, 8),
    ],
)
def test_fairseq_encoders_read_upstream_layers(fairseq_ckpt, name, layer, proj, channels):
    path, sd, cfg = fairseq_ckpt
    encoder = load_units_encoder(name, path, out_channels=channels)
    audio = _audio(0.8)
    units = encoder.encode(audio, SR, HOP)
    assert units.shape == (1, len(audio) // HOP + 1, channels)

    wav = _to16k(audio)
    with torch.no_grad():
        raw = _reference_fairseq(sd, cfg, wav, layer, proj)
    assert raw.shape[1] == (wav.shape[1] - 400) // 320 + 1
    ratio = (HOP / SR) / (320 / 16000)
    index = np.minimum(np.round(ratio * np.arange(units.shape[1])).astype(int), raw.shape[1] - 1)
    torch.testing.assert_close(units[0], raw[0, index], rtol=1e-4, atol=1e-4)


def test_fairseq_layer_choice_matters(fairseq_ckpt):
    path, _, _ = fairseq_ckpt
    audio = _audio(0.5)
    l9 = load_units_encoder("contentvec768", path).encode(audio, SR, HOP)
    l12 = load_units_encoder("contentvec768l12", path).encode(audio, SR, HOP)
    assert not torch.allclose(l9, l12, atol=1e-3)


def test_fairseq_layer_norm_mode_pre_norm_and_projection(tmp_path):
    # extractor_mode layer_norm, conv bias, conv width != model width (post_extract_proj),
    # pre-norm layers and an odd positional kernel: the HuBERT-large style branches.
    cfg = dict(
        TINY_FAIRSEQ,
        extractor_mode="layer_norm",
        conv_bias=True,
        conv_feature_layers="[(24,10,5)] + [(24,3,2)] * 4 + [(24,2,2)] * 2",
        layer_norm_first=True,
        conv_pos=15,
        conv_pos_groups=2,
    )
    path = tmp_path / "large-style.pt"
    sd, cfg = _write_fairseq(path, cfg, seed=5)
    assert "post_extract_proj.weight" in sd and "feature_extractor.conv_layers.3.2.1.weight" in sd
    audio = _audio(0.5)
    units = load_units_encoder("hubertbase768l12", path).encode(audio, SR, HOP)
    with torch.no_grad():
        raw = _reference_fairseq(sd, cfg, _to16k(audio), 12, False)
    ratio = (HOP / SR) / (320 / 16000)
    index = np.minimum(np.round(ratio * np.arange(units.shape[1])).astype(int), raw.shape[1] - 1)
    torch.testing.assert_close(units[0], raw[0, index], rtol=1e-4, atol=1e-4)


def test_fairseq_legacy_args_namespace_checkpoint(tmp_path):
    path = tmp_path / "legacy.pt"
    sd, cfg = _write_fairseq(path, seed=7, style="args")
    audio = _audio(0.4)
    units = load_units_encoder("contentvec", path).encode(audio, SR, HOP)
    with torch.no_grad():
        raw = _reference_fairseq(sd, cfg, _to16k(audio), 9, True)
    torch.testing.assert_close(units[0, 0], raw[0, 0], rtol=1e-4, atol=1e-4)


def test_fairseq_loading_is_weights_only_and_never_runs_code(tmp_path):
    """Unknown pickled classes become inert stand-ins; blocked globals fail cleanly."""
    path = tmp_path / "with-object.pt"
    sd, _ = _write_fairseq(path, seed=3)
    state = torch.load(path, weights_only=False)
    state["extra_state"]["marker"] = _Marker()
    torch.save(state, path)
    _Marker.restored = 0
    loaded = read_checkpoint(path)
    assert _Marker.restored == 0  # the real class was never used
    assert type(loaded["extra_state"]["marker"]).__name__ == "_Marker"
    torch.testing.assert_close(loaded["model"]["final_proj.weight"], sd["final_proj.weight"])

    evil = tmp_path / "evil.pt"
    flag = tmp_path / "pwned"
    state["extra_state"]["payload"] = _Payload(str(flag))
    torch.save(state, evil)
    with pytest.raises(
        ConfigError, match=r"data.encoder_ckpt: cannot load .*evil.pt safely \(.*system.*blocked"
    ):
        load_units_encoder("contentvec", evil)
    assert not flag.exists()


class _Marker:
    restored = 0

    def __setstate__(self, state):
        type(self).restored += 1
        self.__dict__.update(state)


class _Payload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_fairseq_errors_name_the_problem(tmp_path, fairseq_ckpt, soft_ckpt):
    path, sd, cfg = fairseq_ckpt
    with pytest.raises(
        ConfigError, match=r"'hubertlarge1024l24' reads transformer layer 24, but .* has only 12"
    ):
        load_units_encoder("hubertlarge1024l24", path)

    no_proj = tmp_path / "no-proj.pt"
    torch.save(
        {"cfg": {"model": cfg}, "model": {k: v for k, v in sd.items() if not k.startswith("final_proj")}},
        no_proj,
    )
    with pytest.raises(ConfigError, match=r"'contentvec' needs final_proj"):
        load_units_encoder("contentvec", no_proj)
    assert load_units_encoder("contentvec768", no_proj).out_channels == 32

    wrong_size = tmp_path / "wrong-size.pt"
    torch.save({"cfg": {"model": dict(cfg, encoder_ffn_embed_dim=48)}, "model": sd}, wrong_size)
    with pytest.raises(ConfigError, match=r"weights do not match its cfg"):
        load_units_encoder("contentvec768", wrong_size)

    soft_path, _ = soft_ckpt
    with pytest.raises(ConfigError, match=r"is not a fairseq checkpoint"):
        load_units_encoder("contentvec768l12", soft_path)

    conformer = tmp_path / "conformer.pt"
    torch.save({"cfg": {"model": dict(cfg, layer_type="conformer")}, "model": sd}, conformer)
    with pytest.raises(ConfigError, match=r"layer_type 'conformer'"):
        load_units_encoder("contentvec768", conformer)

    wav2vec = tmp_path / "wav2vec.pt"
    torch.save({"cfg": {"model": dict(cfg, _name="wav2vec2")}, "model": sd}, wav2vec)
    with pytest.raises(ConfigError, match=r"fairseq 'wav2vec2' model"):
        load_units_encoder("contentvec768", wav2vec)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"data.encoder_ckpt: cannot load .*garbage.pt"):
        load_units_encoder("contentvec768", garbage)


# ---------------------------------------------------------------- registry, errors, alignment


@pytest.mark.parametrize("name", ["hubertsoft", "contentvec768l12", "hubertbase"])
def test_missing_checkpoint_is_a_one_line_hint(tmp_path, name):
    with pytest.raises(ConfigError) as info:
        load_units_encoder(name, tmp_path / "pretrain" / "missing.pt")
    message = str(info.value)
    assert message.startswith("data.encoder_ckpt: ") and "does not exist" in message
    assert "set data.encoder_ckpt" in message and "'logmel'" in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"data.encoder_ckpt: not set; .*'logmel'"):
        load_units_encoder(name, None)


def test_unknown_and_unavailable_encoder_names():
    with pytest.raises(
        ConfigError, match=r"data.encoder: unknown encoder 'wavlm'; allowed: hubertsoft, .*logmel"
    ):
        load_units_encoder("wavlm")
    with pytest.raises(ConfigError, match=r"data.encoder: 'cnhubertsoftfish' is not available"):
        load_units_encoder("cnhubertsoftfish", "x.pt")


def test_rate_hop_and_channel_mismatches(soft_ckpt):
    path, _ = soft_ckpt
    with pytest.raises(ConfigError, match=r"data.encoder_hop_size: 160 .* fixed hop of 320"):
        load_units_encoder("hubertsoft", path, encoder_hop_size=160)
    with pytest.raises(ConfigError, match=r"data.encoder_sample_rate: 22050 .* 16000 Hz"):
        load_units_encoder("hubertsoft", path, encoder_sample_rate=22050)
    with pytest.raises(
        ConfigError, match=r"data.encoder_out_channels: 256 but encoder 'hubertsoft' gives 16"
    ):
        load_units_encoder("hubertsoft", path, out_channels=256)


def test_align_units_is_upstream_nearest_index():
    units = torch.arange(10, dtype=torch.float32).view(1, 10, 1).repeat(1, 1, 3)
    out = align_units(units, 6, 2.5)  # 0, 2.5 -> 2 (half to even), 5, 7.5 -> 8, 10 -> 9 (clamp), 12.5 -> 9
    assert out.shape == (1, 6, 3)
    assert out[0, :, 0].tolist() == [0, 2, 5, 8, 9, 9]


@pytest.mark.parametrize("seconds", [0.001, 0.01, 0.5, 2.0])
@pytest.mark.parametrize("sr, hop", [(44100, 512), (48000, 480), (16000, 320), (22050, 256)])
def test_logmel_shapes_follow_model_grid(seconds, sr, hop):
    encoder = load_units_encoder("logmel")  # no checkpoint needed
    audio = _audio(seconds, sr=sr)
    units = encoder.encode(audio, sr, hop)
    assert units.shape == (1, len(audio) // hop + 1, 128)
    assert units.dtype == torch.float32 and torch.isfinite(units).all()


def test_logmel_puts_a_tone_in_its_band_and_floors_silence():
    sr = 16000
    t = np.arange(sr) / sr
    logmel = LogMel(sr, 320)
    with torch.no_grad():
        low = logmel(torch.from_numpy(np.sin(2 * np.pi * 300 * t).astype(np.float32))[None])
        high = logmel(torch.from_numpy(np.sin(2 * np.pi * 3000 * t).astype(np.float32))[None])
        silent = logmel(torch.zeros(1, sr))
    assert low.shape == (1, sr // 320 + 1, 128)
    centres = 700 * (
        10
        ** (np.linspace(2595 * math.log10(1 + 40 / 700), 2595 * math.log10(1 + 8000 / 700), 130)[1:-1] / 2595)
        - 1
    )
    for spec, freq in ((low, 300), (high, 3000)):
        band = int(spec[0, 10:-10].mean(0).argmax())
        assert abs(centres[band] - freq) < 0.1 * freq
    assert torch.allclose(silent, torch.full_like(silent, math.log(1e-5)))


def test_logmel_every_band_sees_some_bin():
    assert (LogMel().filters.sum(dim=1) > 0).all()


def test_register_a_custom_encoder(monkeypatch):
    monkeypatch.setattr(units_module, "_REGISTRY", dict(units_module._REGISTRY))

    class Zeros(torch.nn.Module):
        out_channels, hop_size = 4, 320

        def forward(self, wav):
            return torch.zeros(wav.shape[0], wav.shape[1] // 320 + 1, 4)

    spec = EncoderSpec("zeros", lambda ckpt, sr, hop: Zeros(), False, 4, None, "test encoder")
    register_encoder(spec)
    assert load_units_encoder("zeros").encode(np.zeros(2048, np.float32), SR, HOP).shape == (1, 5, 4)
    with pytest.raises(ValueError, match="already registered"):
        register_encoder(spec)


# ---------------------------------------------------------------- weight-normed positional conv at inference


def test_weight_norm_conv_caches_its_kernel_at_inference_and_follows_weight_changes():
    from mlflow_ddsp.features.encoders.layers import WeightNormConv1d

    torch.manual_seed(0)
    conv = WeightNormConv1d(32, 32, 8, groups=4)
    with torch.no_grad():
        conv.weight_g.mul_(torch.linspace(0.5, 2.0, 8))  # not the init's weight == weight_v
    x = torch.randn(2, 32, 20)
    with torch.inference_mode():
        cached = conv.inference_weight()
        assert torch.equal(cached, conv.weight())
        assert conv.inference_weight() is cached  # computed once
        torch.testing.assert_close(conv(x), F.conv1d(x, conv.weight(), conv.bias, padding=4, groups=4), rtol=0, atol=0)
    # load_state_dict (in place) and a replaced parameter both recompute it
    state = {k: v * 1.5 if k == "weight_v" else v for k, v in conv.state_dict().items()}
    state["weight_g"] = state["weight_g"] * 3.0
    conv.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(conv.inference_weight(), conv.weight())
        assert not torch.equal(conv.inference_weight(), cached)
        conv.weight_g = torch.nn.Parameter(conv.weight_g * 0.5)
        assert torch.equal(conv.inference_weight(), conv.weight())


def test_weight_norm_conv_recomputes_with_autograd_so_training_reaches_both_parameters():
    from mlflow_ddsp.features.encoders.layers import WeightNormConv1d

    torch.manual_seed(0)
    conv = WeightNormConv1d(16, 16, 4, groups=2)
    with torch.no_grad():
        conv(torch.randn(1, 16, 10))  # fills the inference cache
    conv(torch.randn(1, 16, 10)).square().sum().backward()
    assert conv.weight_g.grad is not None and conv.weight_g.grad.abs().sum() > 0
    assert conv.weight_v.grad is not None and conv.weight_v.grad.abs().sum() > 0
    assert "_cached" not in "".join(conv.state_dict())
