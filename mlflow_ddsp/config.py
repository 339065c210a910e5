"""The DDSP-SVC training config: upstream's yaml, validated into typed sections.

An upstream ``configs/combsub.yaml`` or ``sins.yaml`` loads unchanged. Keys
upstream uses for other trainers or for inference-time add-ons (``enhancer``,
``vocoder``, ``infer``, ``train.amp_dtype``...) are accepted and carried along;
a key nobody defines is an error that names it (with the closest known key).
Our additions are optional: ``data.f0_ckpt``, ``train.interval_force_save``, ``train.keep_last``,
``train.best_metric``, ``train.best_mode``, ``train.max_steps``, ``train.seed``,
``loss.validation_fft_sizes`` and the ``mlflow`` section.

Values are type-checked; numbers written the way YAML 1.1 reads as strings
(``lr: 1e-4``) are accepted for numeric keys; NaN and infinity are refused, and
every size that shapes a tensor or a buffer has an upper bound (``LIMITS``) so
that a typo (``n_spk: 1e9``) is named here instead of reaching the allocator.
``--set key=value`` overrides use the same rules.

The file is read as bytes and decoded by YAML's own rules (UTF-8, or UTF-16/32
with a byte-order mark). Anchors and aliases are allowed, but a file whose
aliases expand to more than ``MAX_CONFIG_NODES`` values (a "billion laughs"
file) or that is larger than ``MAX_CONFIG_BYTES`` is refused before anything is
built from it: the config is flattened into MLflow params and logged.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .checkpoint.policy import RetentionPolicy
from .device import DEVICE_CHOICES, check_device_syntax
from .errors import ConfigError
from .features.f0 import F0_EXTRACTORS
from .names import BEST_ALIAS, validate_alias, validate_experiment_name, validate_model_name

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "LossConfig",
    "EnvConfig",
    "TrainConfig",
    "VocoderConfig",
    "InferConfig",
    "MlflowConfig",
    "MEL_MODEL_TYPES",
    "load_config",
    "parse_config",
    "parse_yaml_config",
    "apply_overrides",
    "LIMITS",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_NODES",
]

# A config is a few kilobytes; these bounds only stop pathological files.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 10_000  # scalars, lists and mappings after expanding aliases

# Inclusive upper bounds of sizes (their lower bounds are in _check_ranges). Far
# above any real DDSP-SVC config (upstream: 44.1 kHz, block 512, 768 channels,
# 1-200 speakers) and far below what exhausts memory when a tensor is allocated.
LIMITS: dict[str, float] = {
    "data.sampling_rate": 384_000,
    "data.block_size": 8192,
    "data.duration": 600.0,
    "data.encoder_sample_rate": 384_000,
    "data.encoder_hop_size": 8192,
    "data.encoder_out_channels": 4096,
    "data.f0_max": 20_000.0,
    "model.n_spk": 10_000,
    "model.win_length": 65_536,
    "model.n_harmonics": 4096,
    "model.n_mag_allpass": 4096,
    "model.n_mag_noise": 4096,
    "model.n_mag_harmonic": 4096,
    "model.n_layers": 256,
    "model.n_chans": 8192,
    "model.n_aux_layers": 256,
    "model.n_aux_chans": 8192,
    "train.decay_step": 1 << 40,
    "infer.infer_step": 10_000,
    "infer.speedup": 1000,
    "loss.fft_max": 65_536,
    "loss.n_scale": 64,
    "train.batch_size": 65_536,
    "train.num_workers": 256,
    "train.keep_last": 10_000,
    "mlflow.audio_clips": 64,
}


@dataclass(frozen=True)
class DataConfig:
    f0_extractor: str = "parselmouth"
    f0_ckpt: str | None = None  # ours: rmvpe's weights file (None: upstream's pretrain/rmvpe/model.pt)
    f0_min: float = 65.0
    f0_max: float = 800.0
    sampling_rate: int = 44100
    block_size: int = 512
    duration: float = 2.0
    encoder: str = "contentvec768l12"
    cnhubertsoft_gate: int = 10  # upstream's, for cnhubertsoftfish (not supported)
    encoder_sample_rate: int = 16000
    encoder_hop_size: int = 320
    encoder_out_channels: int = 768
    encoder_ckpt: str | None = None
    train_path: str = "data/train"
    valid_path: str = "data/val"
    extensions: list[str] = field(default_factory=lambda: ["wav"])


@dataclass(frozen=True)
class ModelConfig:
    type: str = "CombSubFast"
    n_spk: int = 1
    win_length: int = 2048  # CombSubSuperFast
    n_harmonics: int = 128  # Sins
    n_mag_allpass: int = 256  # Sins, CombSub
    n_mag_noise: int = 256  # Sins, CombSub
    n_mag_harmonic: int = 512  # CombSub
    use_pitch_aug: bool = False
    pcmer_norm: bool = False
    # RectifiedFlow (6.0, 6.1) and DiffusionFast (5.0): the mel decoder after the DDSP stage
    n_layers: int = 6
    n_chans: int = 512
    t_start: float = 0.7  # RectifiedFlow: flow time where training and inference start, in [0, 1]
    k_step_max: int = 100  # DiffusionFast: diffusion steps trained and allowed at inference, in [1, 1000]
    # RectifiedFlow of 6.1 (upstream branch 6.1) only: any of these set makes the model 6.1's
    n_aux_layers: int | None = None
    n_aux_chans: int | None = None
    use_norm: bool | None = None
    use_attention: bool | None = None


@dataclass(frozen=True)
class LossConfig:
    fft_min: int = 256
    fft_max: int = 2048
    n_scale: int = 4
    # Ours: fixed FFT sizes for validation loss, comparable between checkpoints
    # (None: n_scale sizes spread over [fft_min, fft_max)).
    validation_fft_sizes: list[int] | None = None


@dataclass(frozen=True)
class EnvConfig:
    expdir: str = "exp/combsub-test"
    gpu_id: int = 0


@dataclass(frozen=True)
class TrainConfig:
    num_workers: int = 2
    amp_dtype: str = "fp32"  # fp32 | fp16 | bf16; mixed precision only on CUDA
    batch_size: int = 24
    cache_all_data: bool = True
    cache_device: str = "cpu"
    cache_fp16: bool = True
    epochs: int = 100000
    interval_log: int = 10
    interval_val: int = 2000
    interval_force_save: int | None = None  # None: no force-saves (only keep_last and best stay)
    keep_last: int = 1  # ours: the newest N checkpoints stay (1 = upstream's rule)
    best_metric: str | None = "validation/loss"  # ours: keep the best checkpoint by it (alias 'best'); null: off
    best_mode: str = "min"  # ours: min | max, which value of best_metric is best
    lr: float = 0.0005
    weight_decay: float = 0.0
    # RectifiedFlow / DiffusionFast (upstream's StepLR and loss weight): the lr is multiplied by
    # gamma every decay_step steps (null: constant lr); total loss = lambda_ddsp * ddsp + flow loss
    decay_step: int | None = None
    gamma: float = 0.5
    lambda_ddsp: float = 1.0
    save_opt: bool = False
    max_steps: int | None = None  # ours: stop at this global step
    seed: int = 0  # ours: seeds initialisation, data order and augmentation (exact resume needs one)
    # ours: intra-op CPU threads while training on the CPU (torch.set_num_threads); null: torch's
    # default (one per core), fastest on idle cores. On cores shared with other work set 1: there
    # 2 threads cost 2.5-6x the CPU per step of 1 (see bench/train_throughput.py). Ignored on CUDA.
    num_threads: int | None = None


@dataclass(frozen=True)
class VocoderConfig:
    """The NSF-HiFiGAN vocoder of RectifiedFlow / DiffusionFast models (upstream's ``vocoder`` section).

    ``ckpt`` is the weights file; its ``config.json`` must sit beside it. Training needs
    only the config.json (the mel); validation audio and conversion need the weights.
    """

    type: str = "nsf-hifigan"  # or nsf-hifigan-log10
    ckpt: str = "pretrain/nsf_hifigan/model"


@dataclass(frozen=True)
class InferConfig:
    """Upstream's ``infer`` section: the sampler of RectifiedFlow / DiffusionFast models."""

    infer_step: int = 20  # RectifiedFlow: ODE steps from t_start to 1
    method: str | None = None  # RectifiedFlow: euler | rk4; DiffusionFast: dpm-solver | ddim | pndm | unipc
    speedup: int = 10  # DiffusionFast: k_step // speedup solver steps


@dataclass(frozen=True)
class MlflowConfig:
    """Ours: where checkpoints and runs go (all optional)."""

    registered_model: str | None = None  # default: the last folder name of env.expdir
    alias: str = "rolling"
    experiment: str = "mlflow-ddsp"
    audio_clips: int = 2  # validation clips logged as gt/pred audio per validation


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "env": EnvConfig,
    "train": TrainConfig,
    "vocoder": VocoderConfig,
    "infer": InferConfig,
    "mlflow": MlflowConfig,
}
# Upstream sections for other trainers or inference-time add-ons: kept, not used.
PASSTHROUGH_SECTIONS = ("enhancer",)
# Upstream keys of known sections that belong to other upstream trainers (3.0's Diffusion types).
PASSTHROUGH_KEYS = {
    "model": ("n_hidden",),
}
#: the model types whose target is a vocoder mel (upstream 5.0 / 6.x)
MEL_MODEL_TYPES = ("RectifiedFlow", "DiffusionFast")
VOCODER_TYPES = ("nsf-hifigan", "nsf-hifigan-log10")
REFLOW_METHODS = ("euler", "rk4")
DIFFUSION_METHODS = ("dpm-solver", "ddim", "pndm", "unipc")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    device: str = "auto"
    extra: Mapping[str, Any] = field(default_factory=dict)  # pass-through upstream keys

    @property
    def registered_model(self) -> str:
        return self.mlflow.registered_model or Path(self.env.expdir.rstrip("/\\")).name or "ddsp-svc"

    @property
    def uses_mel(self) -> bool:
        """The model trains on the vocoder's mel (RectifiedFlow, DiffusionFast), not on audio."""
        return self.model.type in MEL_MODEL_TYPES

    @property
    def upstream_generation(self) -> str:
        """Which upstream DDSP-SVC a cascade model is: ``"5.0"``, ``"6.0"`` or ``"6.1"``; ``"ddsp"`` for the pure-DDSP types.

        6.1 keeps ``model.type: RectifiedFlow`` and is told apart by its keys
        (``model.n_aux_layers``, ``n_aux_chans``, ``use_norm``, ``use_attention``).
        """
        if self.model.type == "DiffusionFast":
            return "5.0"
        if self.model.type == "RectifiedFlow":
            m = self.model
            six_one = (m.n_aux_layers, m.n_aux_chans, m.use_norm, m.use_attention)
            return "6.1" if any(v is not None for v in six_one) else "6.0"
        return "ddsp"

    @property
    def infer_method(self) -> str:
        """``infer.method``, or the model type's default (euler; dpm-solver)."""
        if self.infer.method is not None:
            return self.infer.method
        return "dpm-solver" if self.model.type == "DiffusionFast" else "euler"

    @property
    def f0_extractor(self) -> str:
        """The f0 extractor's registry name (``data.f0_extractor``, lower case)."""
        return self.data.f0_extractor.lower()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        out["device"] = self.device
        for key, value in self.extra.items():
            section, _, sub = key.partition(".")
            if sub:
                out.setdefault(section, {})[sub] = value
            else:
                out[key] = value
        return out

    def to_yaml(self) -> bytes:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True).encode()

    def flat(self) -> dict[str, Any]:
        """``{"data.sampling_rate": 44100, ...}``: MLflow params."""
        flat: dict[str, Any] = {}

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, Mapping):
                for k, v in node.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                flat[prefix] = node

        walk("", self.to_dict())
        return flat

    def digest(self) -> str:
        """sha256 of the canonical yaml: two runs with equal digests trained with equal configs."""
        return hashlib.sha256(yaml.safe_dump(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def replace(self, **sections: Any) -> "Config":
        return dataclasses.replace(self, **sections)


# -- validation ---------------------------------------------------------------


def _suggest(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field annotation; return it (numbers possibly converted)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = [a for a in options if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single extension written without a list
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} must be a list")
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false")
    if annotation in (int, float):
        if isinstance(value, str):
            try:
                value = float(value) if annotation is float or any(c in value for c in ".eE") else int(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value!r} must be a finite number")
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ConfigError(f"{key}={value!r} must be a whole number")
            return int(value)
        return float(value)
    if annotation is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    return value


def _section(name: str, cls: type, raw: Any, extra: dict[str, Any]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name} must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        full = f"{name}.{key}"
        if key in PASSTHROUGH_KEYS.get(name, ()):
            extra[full] = value
            continue
        if key not in known:
            hint = _suggest(full, [f"{name}.{k}" for k in known])
            raise ConfigError(f"unknown config key {full!r}{hint}; allowed in {name}: {', '.join(known)}")
        values[key] = _coerce(full, value, hints[key])
    return cls(**values)


def _check_ranges(cfg: Config) -> None:
    def positive(key: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(f"{key}={value!r} must be > 0")

    d, t, loss = cfg.data, cfg.train, cfg.loss
    if d.f0_extractor.lower() not in F0_EXTRACTORS:
        raise ConfigError(f"data.f0_extractor={d.f0_extractor!r} is not an f0 extractor; allowed: {', '.join(F0_EXTRACTORS)}")
    for key in ("sampling_rate", "block_size", "duration", "encoder_sample_rate", "encoder_hop_size",
                "encoder_out_channels", "f0_min"):  # fmt: skip
        positive(f"data.{key}", getattr(d, key))
    if d.f0_max <= d.f0_min:
        raise ConfigError(f"data.f0_max={d.f0_max} must be above data.f0_min={d.f0_min}")
    if not d.extensions:
        raise ConfigError("data.extensions must list at least one file extension, e.g. [wav]")
    for i, ext in enumerate(d.extensions):
        if not ext.strip(". ") or any(c in ext for c in "/\\*?"):
            raise ConfigError(f"data.extensions[{i}]={ext!r} must be a file extension such as wav or flac")
    for key in ("batch_size", "epochs", "interval_log", "interval_val"):
        positive(f"train.{key}", getattr(t, key))
    positive("train.lr", t.lr)
    if t.num_workers < 0:
        raise ConfigError(f"train.num_workers={t.num_workers} must be >= 0")
    if t.num_threads is not None:
        positive("train.num_threads", t.num_threads)
    if t.weight_decay < 0:
        raise ConfigError(f"train.weight_decay={t.weight_decay} must be >= 0")
    if t.max_steps is not None:
        positive("train.max_steps", t.max_steps)
    if t.seed < 0:
        raise ConfigError(f"train.seed={t.seed} must be >= 0")
    if t.amp_dtype not in ("fp32", "fp16", "bf16"):
        raise ConfigError(f"train.amp_dtype={t.amp_dtype!r} must be one of fp32, fp16, bf16")
    if t.cache_device not in ("cpu", "cuda"):
        raise ConfigError(f"train.cache_device={t.cache_device!r} must be cpu or cuda")
    if not 0 < loss.fft_min < loss.fft_max:
        raise ConfigError(f"loss.fft_min={loss.fft_min} must be > 0 and below loss.fft_max={loss.fft_max}")
    positive("loss.n_scale", loss.n_scale)
    for i, size in enumerate(loss.validation_fft_sizes or []):
        positive(f"loss.validation_fft_sizes[{i}]", size)
    if cfg.model.n_spk < 1:
        raise ConfigError(f"model.n_spk={cfg.model.n_spk} must be >= 1")
    try:
        check_device_syntax(cfg.device)
    except ConfigError:
        raise ConfigError(f"device={cfg.device!r} must be {DEVICE_CHOICES}") from None
    _check_mel_model(cfg)
    if cfg.mlflow.audio_clips < 0:
        raise ConfigError(f"mlflow.audio_clips={cfg.mlflow.audio_clips} must be >= 0")
    for key, limit in LIMITS.items():
        section, _, name = key.partition(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None and value > limit:
            raise ConfigError(f"{key}={value!r} is too large (at most {limit:g})")
    for i, size in enumerate(loss.validation_fft_sizes or []):
        if size > LIMITS["loss.fft_max"]:
            raise ConfigError(f"loss.validation_fft_sizes[{i}]={size!r} is too large (at most {LIMITS['loss.fft_max']:g})")

    RetentionPolicy(t.interval_val, t.interval_force_save, t.keep_last, t.best_metric, t.best_mode)
    validate_alias(cfg.mlflow.alias)
    if cfg.mlflow.alias == BEST_ALIAS:
        raise ConfigError(f"mlflow.alias={BEST_ALIAS!r} is the alias of the best checkpoint; use another, e.g. 'rolling'")
    try:
        validate_experiment_name(cfg.mlflow.experiment)
    except ConfigError as exc:
        raise ConfigError(f"mlflow.{exc}") from exc
    try:
        validate_model_name(cfg.registered_model)
    except ConfigError as exc:
        raise ConfigError(f"mlflow.registered_model: {exc}") from exc


def _check_mel_model(cfg: Config) -> None:
    """Ranges of the RectifiedFlow / DiffusionFast keys (checked for every config: they are typed)."""
    m, t, i = cfg.model, cfg.train, cfg.infer
    if not 0.0 <= m.t_start <= 1.0:
        raise ConfigError(f"model.t_start={m.t_start!r} must be in [0, 1] (upstream's default 0.7)")
    if not 1 <= m.k_step_max <= 1000:
        raise ConfigError(f"model.k_step_max={m.k_step_max!r} must be in [1, 1000] (the diffusion has 1000 steps)")
    for key in ("n_layers", "n_chans", "n_aux_layers", "n_aux_chans"):
        value = getattr(m, key)
        if value is not None and value < 1:
            raise ConfigError(f"model.{key}={value!r} must be >= 1")
    if t.decay_step is not None and t.decay_step < 1:
        raise ConfigError(f"train.decay_step={t.decay_step!r} must be >= 1 (or null: a constant learning rate)")
    if not 0.0 < t.gamma <= 1.0:
        raise ConfigError(f"train.gamma={t.gamma!r} must be in (0, 1]")
    if t.lambda_ddsp < 0:
        raise ConfigError(f"train.lambda_ddsp={t.lambda_ddsp!r} must be >= 0")
    if cfg.vocoder.type not in VOCODER_TYPES:
        raise ConfigError(f"vocoder.type={cfg.vocoder.type!r} must be one of {', '.join(VOCODER_TYPES)}")
    if i.infer_step < 1:
        raise ConfigError(f"infer.infer_step={i.infer_step!r} must be >= 1")
    if i.speedup < 1:
        raise ConfigError(f"infer.speedup={i.speedup!r} must be >= 1")
    if i.method is not None:
        allowed = DIFFUSION_METHODS if m.type == "DiffusionFast" else REFLOW_METHODS
        if m.type in MEL_MODEL_TYPES and i.method not in allowed:
            raise ConfigError(f"infer.method={i.method!r} is not a {m.type} sampler; allowed: {', '.join(allowed)}")


def parse_config(raw: Mapping[str, Any] | None) -> Config:
    """Validate a parsed yaml mapping into a Config; raises ConfigError naming the key."""
    raw = dict(raw or {})
    extra: dict[str, Any] = {}
    sections = {}
    for name, cls in SECTIONS.items():
        sections[name] = _section(name, cls, raw.pop(name, None), extra)
    device = _coerce("device", raw.pop("device", "auto"), str)
    for name in PASSTHROUGH_SECTIONS:
        if name in raw:
            extra[name] = raw.pop(name)
    if raw:
        key = next(iter(raw))
        known = [*SECTIONS, "device", *PASSTHROUGH_SECTIONS]
        raise ConfigError(f"unknown config section {key!r}{_suggest(str(key), known)}; allowed: {', '.join(known)}")
    cfg = Config(**sections, device=device, extra=extra)
    _check_ranges(cfg)
    return cfg


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw mapping."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} must look like section.key=value, e.g. train.lr=1e-4")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse {text!r} as a value ({exc.problem})") from exc
        *path, leaf = key.strip().split(".")
        node = raw
        for part in path:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = child
        node[leaf] = value
    return raw


def _expanded_size(node: yaml.Node, seen: dict[int, int]) -> int:
    """Values a composed YAML node stands for once aliases are expanded (memoised per node)."""
    key = id(node)
    if key in seen:
        return seen[key]
    seen[key] = 1  # a recursive alias counts once; the constructor refuses nothing here, the bound does
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, seen) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, seen) + _expanded_size(v, seen) for k, v in node.value)
    else:
        size = 1
    seen[key] = min(size, MAX_CONFIG_NODES + 1)
    return seen[key]


def _byte(character: int | str) -> str:
    return f"0x{character:02x}" if isinstance(character, int) else repr(character)


def parse_yaml_config(data: bytes, source: str) -> Any:
    """Parse config bytes (UTF-8, or UTF-16/32 with a BOM) after bounding their size.

    Raises:
        ConfigError: not YAML, not decodable, larger than ``MAX_CONFIG_BYTES`` or
            expanding (through aliases) to more than ``MAX_CONFIG_NODES`` values.
    """
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source} is {len(data)} bytes; a config is at most {MAX_CONFIG_BYTES} bytes")
    try:
        node = yaml.compose(data, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}) > MAX_CONFIG_NODES:
            raise ConfigError(
                f"{source}: its anchors and aliases expand to more than {MAX_CONFIG_NODES} values; "
                "write the values out or use fewer aliases"
            )
        return yaml.safe_load(data)
    except yaml.reader.ReaderError as exc:
        raise ConfigError(
            f"{source} is not UTF-8 text (byte {_byte(exc.character)} at offset {exc.position}); save it as UTF-8"
        ) from exc
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{source} is not valid YAML: {first}") from exc
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"{source} is not a readable YAML text file (UTF-8 expected): {exc}") from exc


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Read and validate a yaml config, applying ``--set`` style overrides.

    Raises:
        ConfigError: the file is missing, unreadable, a folder, empty, not YAML,
            not a mapping, or a key or value is not allowed (named in the message).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        where = "" if path.is_absolute() else f" (looked for {path.absolute()})"
        raise ConfigError(f"config file {str(path)!r} not found{where}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a folder; give the yaml file inside it") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
    raw = parse_yaml_config(data, str(path))
    if raw is None:
        raise ConfigError(f"config file {str(path)!r} is empty; start from projects/combsub/config.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must contain a mapping of config sections, got a {type(raw).__name__}")
    return parse_config(apply_overrides(raw, overrides))
