"""fairseq HuBERT (also ContentVec "legacy") in plain torch, loading fairseq checkpoints.

fairseq is not installable here, so this module re-implements the inference path
of ``fairseq.models.hubert.HubertModel.extract_features`` for ``layer_type:
transformer`` models. A fairseq checkpoint is a dict with the weights under
``'model'`` and the architecture under ``'cfg'['model']`` (hydra era) or in an
``argparse.Namespace`` under ``'args'`` (older files); sizes come from there, as
fairseq itself builds the model, with fairseq's ``HubertConfig`` defaults for
absent fields. Module names reproduce fairseq's state_dict keys
(``feature_extractor.conv_layers.0.2.weight``, ``encoder.pos_conv.0.weight_g``,
``encoder.layers.N.self_attn.q_proj.weight``, ``final_proj.weight``, ...).

Forward (``output_layer`` 1-based, as fairseq's): conv feature extractor ->
LayerNorm -> ``post_extract_proj`` (when the conv width differs from the model
width) -> ``x + pos_conv(x)`` -> [``encoder.layer_norm`` unless layer_norm_first]
-> transformer layers 1..output_layer -> [``encoder.layer_norm`` only when
layer_norm_first and no output_layer]. No masking, no dropout, no input
normalisation (upstream DDSP-SVC feeds raw audio, even to models pre-trained with
``task.normalize``). fairseq pads the sequence to an even length and masks the
pad frame out of attention; that leaves the real frames unchanged, so it is skipped.

Shapes: ``extract_features(wav [B, T], layer) -> [B, N, D]`` with
``N = (T - 400) // 320 + 1`` for the standard convolution stack; ``final_proj``
maps ``D -> final_dim`` (256 for HuBERT base and ContentVec). All items of a batch
must have the same length (there is no padding mask).
"""

from __future__ import annotations

import ast
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.features.encoders.checkpoint import plain, read_checkpoint
from mlflow_ddsp.features.encoders.layers import (
    SamePad,
    TransposeLast,
    WeightNormConv1d,
    upgrade_weight_norm_keys,
)
from mlflow_ddsp.state_dict import load_state_dict_checked

__all__ = ["FairseqHubertConfig", "FairseqHubert", "attend_heads", "init_bert_params_", "load_fairseq_hubert", "parse_conv_layers"]

logger = logging.getLogger(__name__)

DEFAULT_CONV_LAYERS = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"

# Weights only used for pre-training (cluster-label embeddings); never needed here.
_PRETRAINING_ONLY_PREFIXES = ("label_embs_concat", "target_glu.")

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_accurate": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),  # fairseq's deprecated alias
    "tanh": torch.tanh,
    "linear": lambda x: x,
    "swish": F.silu,
}


def parse_conv_layers(spec: str) -> tuple[tuple[int, int, int], ...]:
    """Evaluate fairseq's ``conv_feature_layers`` string without ``eval``.

    Accepts list/tuple literals of ints combined with ``+`` and ``*``, e.g.
    ``"[(512,10,5)] + [(512,3,2)] * 4"`` -> ``((512, 10, 5), (512, 3, 2), ...)``.
    """

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported syntax {ast.dump(node)[:60]}")

    try:
        layers = value(ast.parse(str(spec), mode="eval"))
        out = tuple((int(d), int(k), int(s)) for d, k, s in layers)
    except (SyntaxError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot parse conv_feature_layers {spec!r}: {exc}") from exc
    if not out:
        raise ValueError(f"conv_feature_layers {spec!r} defines no layer")
    return out


@dataclass(frozen=True)
class FairseqHubertConfig:
    """The ``HubertConfig`` fields that shape the inference network (fairseq defaults)."""

    extractor_mode: str = "default"
    conv_feature_layers: str = DEFAULT_CONV_LAYERS
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_type: str = "transformer"
    layer_norm_first: bool = False
    conv_pos: int = 128
    conv_pos_groups: int = 16
    conv_pos_batch_norm: bool = False
    pos_conv_depth: int = 1

    @classmethod
    def from_mapping(cls, model_cfg: dict[str, Any], source: str) -> FairseqHubertConfig:
        """Pick known fields from a fairseq model config; validate what we can run."""
        kwargs = {}
        for f in fields(cls):
            if model_cfg.get(f.name) is not None:
                kwargs[f.name] = type(f.default)(model_cfg[f.name])
        cfg = cls(**kwargs)
        cfg.validate(source)
        return cfg

    @property
    def conv_layers(self) -> tuple[tuple[int, int, int], ...]:
        return parse_conv_layers(self.conv_feature_layers)

    @property
    def hop_size(self) -> int:
        return math.prod(s for _, _, s in self.conv_layers)

    def validate(self, source: str) -> None:
        def bad(what: str) -> ConfigError:
            return ConfigError(f"{source}: unsupported fairseq HuBERT config: {what}")

        if self.extractor_mode not in ("default", "layer_norm"):
            raise bad(f"extractor_mode {self.extractor_mode!r} (allowed: default, layer_norm)")
        if self.layer_type != "transformer":
            raise bad(f"layer_type {self.layer_type!r} (only 'transformer' is implemented)")
        if self.conv_pos_batch_norm or self.pos_conv_depth > 1:
            raise bad("batch-norm or multi-layer positional convolution (only the weight-normed one)")
        if self.activation_fn not in _ACTIVATIONS:
            raise bad(f"activation_fn {self.activation_fn!r} (allowed: {', '.join(_ACTIVATIONS)})")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise bad(
                f"encoder_embed_dim {self.encoder_embed_dim} not divisible by "
                f"encoder_attention_heads {self.encoder_attention_heads}"
            )
        try:
            parse_conv_layers(self.conv_feature_layers)
        except ValueError as exc:
            raise bad(str(exc)) from exc


def _conv_block(
    n_in: int, n_out: int, kernel: int, stride: int, norm: str | None, bias: bool
) -> nn.Sequential:
    """fairseq's block: Conv1d, Dropout, [GroupNorm | (T, LayerNorm, T)], GELU.

    The Dropout keeps the norm at Sequential index 2, as in fairseq's keys.
    """
    conv = nn.Conv1d(n_in, n_out, kernel, stride=stride, bias=bias)
    nn.init.kaiming_normal_(conv.weight)
    if norm == "group":
        return nn.Sequential(conv, nn.Dropout(0.0), nn.GroupNorm(n_out, n_out), nn.GELU())
    if norm == "layer":
        ln = nn.Sequential(TransposeLast(), nn.LayerNorm(n_out), TransposeLast())
        return nn.Sequential(conv, nn.Dropout(0.0), ln, nn.GELU())
    return nn.Sequential(conv, nn.Dropout(0.0), nn.GELU())


class _ConvFeatureExtractor(nn.Module):
    """``wav [B, T] -> [B, C, N]``; "default" mode GroupNorms only the first block."""

    def __init__(self, cfg: FairseqHubertConfig) -> None:
        super().__init__()
        blocks, n_in = [], 1
        for i, (dim, kernel, stride) in enumerate(cfg.conv_layers):
            if cfg.extractor_mode == "layer_norm":
                norm = "layer"
            else:
                norm = "group" if i == 0 else None
            blocks.append(_conv_block(n_in, dim, kernel, stride, norm, cfg.conv_bias))
            n_in = dim
        self.conv_layers = nn.ModuleList(blocks)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = wav.unsqueeze(1)
        for block in self.conv_layers:
            x = block(x)
        return x


def attend_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """fairseq MultiheadAttention's core: projected ``q, k, v [B, N, D]`` -> ``[B, N, D]``
    (``heads`` heads of ``D / heads``, before ``out_proj``). SDPA's default scale
    ``1 / sqrt(D / H)`` is fairseq's q scaling."""
    b, n, d = q.shape

    def split(t: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, H, N, D/H]
        return t.view(b, n, heads, d // heads).transpose(1, 2)

    y = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return y.transpose(1, 2).reshape(b, n, d)


class _SelfAttention(nn.Module):
    """fairseq MultiheadAttention (self-attention, no bias_kv), ``[B, N, D] -> [B, N, D]``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(attend_heads(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads))


class _EncoderLayer(nn.Module):
    """fairseq ``TransformerSentenceEncoderLayer`` (pre- or post-norm)."""

    def __init__(self, cfg: FairseqHubertConfig) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.activation = _ACTIVATIONS[cfg.activation_fn]
        self.layer_norm_first = cfg.layer_norm_first
        self.self_attn = _SelfAttention(dim, cfg.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.self_attn(self.self_attn_layer_norm(x))
            return x + self.fc2(self.activation(self.fc1(self.final_layer_norm(x))))
        x = self.self_attn_layer_norm(x + self.self_attn(x))
        return self.final_layer_norm(x + self.fc2(self.activation(self.fc1(x))))


class _TransformerEncoder(nn.Module):
    """Positional conv + transformer layers; ``[B, N, D] -> [B, N, D]``."""

    def __init__(self, cfg: FairseqHubertConfig) -> None:
        super().__init__()
        dim, k = cfg.encoder_embed_dim, cfg.conv_pos
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(dim, dim, k, cfg.conv_pos_groups), SamePad(k), nn.GELU()
        )
        self.layers = nn.ModuleList(_EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = cfg.layer_norm_first

    def forward(self, x: torch.Tensor, output_layer: int | None = None) -> torch.Tensor:
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        for layer in self.layers[:output_layer]:
            x = layer(x)
        # fairseq applies the closing norm only when no layer was requested.
        if self.layer_norm_first and output_layer is None:
            x = self.layer_norm(x)
        return x


class FairseqHubert(nn.Module):
    """HuBERT / ContentVec-legacy encoder with fairseq's parameter names.

    ``final_proj`` exists when the checkpoint has one (``final_dim`` outputs).
    """

    def __init__(self, cfg: FairseqHubertConfig, final_proj_dim: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        embed = cfg.conv_layers[-1][0]
        dim = cfg.encoder_embed_dim
        self.feature_extractor = _ConvFeatureExtractor(cfg)
        self.layer_norm = nn.LayerNorm(embed)
        self.post_extract_proj = nn.Linear(embed, dim) if embed != dim else None
        self.mask_emb = nn.Parameter(torch.rand(dim))  # training-time mask token; kept for key parity
        self.encoder = _TransformerEncoder(cfg)
        self.final_proj = nn.Linear(dim, final_proj_dim) if final_proj_dim else None

    @property
    def hop_size(self) -> int:
        return self.cfg.hop_size

    def extract_features(self, wav: torch.Tensor, output_layer: int | None = None) -> torch.Tensor:
        """Output of transformer layer ``output_layer`` (1-based; None = all): ``[B, T] -> [B, N, D]``."""
        x = self.feature_extractor(wav).transpose(1, 2)
        x = self.layer_norm(x)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.encoder(x, output_layer)


def init_bert_params_(model: FairseqHubert) -> FairseqHubert:
    """Re-draw the transformer layers' weights as fairseq does when it builds one (in place).

    fairseq's ``TransformerEncoder`` applies ``init_bert_params``: every Linear
    weight of the transformer layers ~ N(0, 0.02), biases 0 (LayerNorms stay 1/0;
    the conv feature extractor keeps its Kaiming-normal and the positional conv its
    N(0, sqrt(4 / (k * D))) init, as in fairseq). For untrained stand-ins of a real
    checkpoint (benches, tests), whose activation scales then resemble a pre-training
    start rather than PyTorch's default uniform init. Returns ``model``.
    """
    with torch.no_grad():
        for module in model.encoder.layers.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, 0.02)
                if module.bias is not None:
                    module.bias.zero_()
    return model


def _model_config(state: dict[str, Any], path: Path, key: str) -> dict[str, Any]:
    """The model section of a fairseq checkpoint's ``cfg`` (or legacy ``args``) as a dict."""
    cfg = plain(state.get("cfg"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        model_cfg = cfg["model"]
        name = model_cfg.get("_name") or model_cfg.get("arch")  # arch: a Namespace kept in cfg
    else:
        args = plain(state.get("args"))
        if not isinstance(args, dict):
            raise ConfigError(
                f"{key}: {path} is not a fairseq checkpoint (no 'cfg' or 'args' with the model "
                "architecture); check data.encoder matches the file"
            )
        model_cfg, name = args, args.get("arch")
    if name is not None and not str(name).startswith("hubert"):
        raise ConfigError(
            f"{key}: {path} holds a fairseq {name!r} model; HuBERT/ContentVec ('hubert') expected"
        )
    return model_cfg


def load_fairseq_hubert(path: Path, key: str = "data.encoder_ckpt") -> FairseqHubert:
    """Build a ``FairseqHubert`` from a fairseq checkpoint file and load its weights (eval mode).

    Missing weights are an error; pre-training-only weights are skipped and other
    unknown keys are logged and ignored.
    """
    state = read_checkpoint(path, key)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ConfigError(
            f"{key}: {path} is not a fairseq checkpoint (no 'model' state dict); "
            "check data.encoder matches the file"
        )
    cfg = FairseqHubertConfig.from_mapping(_model_config(state, path, key), f"{key}: {path}")
    sd = upgrade_weight_norm_keys(
        {k: v for k, v in state["model"].items() if not k.startswith(_PRETRAINING_ONLY_PREFIXES)}
    )
    final_proj = sd.get("final_proj.weight")
    model = FairseqHubert(cfg, final_proj_dim=int(final_proj.shape[0]) if final_proj is not None else None)
    result = load_state_dict_checked(
        model, sd, source=f"{key}: {path}", ignore_unexpected=True,
        hint="its weights do not match its cfg",
    )  # fmt: skip
    if result.unexpected:
        logger.warning(
            "%s: ignored %d unknown weights (e.g. %s)",
            path,
            len(result.unexpected),
            ", ".join(result.unexpected[:3]),
        )
    return model.eval()
