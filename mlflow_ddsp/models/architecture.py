"""A model's architecture: the config keys that shape its tensors, derived in one place.

The architecture of a DDSP-SVC model is ``model.type`` plus every constructor
keyword that type takes, under the config key it comes from
(:data:`~mlflow_ddsp.models.base.CONFIG_KEYS`): ``data.sampling_rate``,
``data.block_size``, ``data.encoder_out_channels``, ``model.n_spk`` and the
type's own (``model.win_length`` for CombSubSuperFast, ``model.n_harmonics`` /
``n_mag_*`` for Sins and CombSub, ``model.use_pitch_aug`` / ``pcmer_norm``).

Resuming, fine-tuning, importing and serving take these from the checkpoint's
own ``config.yaml`` and refuse a different one with every difference named in
one line (the rule nanoGPT follows when resuming: the model-shaping arguments
come from the checkpoint, the rest from the config). Everything else in a
config (learning rate, batch size, loss, paths) may change between runs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

import torch

from mlflow_ddsp.errors import ArchitectureMismatchError, ConfigError
from mlflow_ddsp.models.base import CONFIG_KEYS
from mlflow_ddsp.models.combsub import CombSub, CombSubFast
from mlflow_ddsp.models.combsub_superfast import CombSubSuperFast
from mlflow_ddsp.models.diffusion_svc import DiffusionUnit2WavFast
from mlflow_ddsp.models.reflow_svc import ReflowUnit2Wav
from mlflow_ddsp.models.reflow_svc61 import LynxReflowUnit2Wav, reflow_generation
from mlflow_ddsp.models.sins import Sins

__all__ = [
    "MODEL_TYPES",
    "Architecture",
    "architecture",
    "architecture_of",
    "check_same_architecture",
    "architecture_in_weights",
    "check_weights_fit",
    "model_class",
]

#: upstream ``model.type`` name -> class (RectifiedFlow: 6.0's; 6.1's is told apart by its keys)
MODEL_TYPES: dict[str, type[torch.nn.Module]] = {
    "CombSub": CombSub,
    "CombSubFast": CombSubFast,
    "CombSubSuperFast": CombSubSuperFast,
    "Sins": Sins,
    "RectifiedFlow": ReflowUnit2Wav,
    "DiffusionFast": DiffusionUnit2WavFast,
}
#: the keys that make a RectifiedFlow upstream 6.1's (LYNXNet) instead of 6.0's, with 6.1's defaults
REFLOW_61_KEYS: dict[str, Any] = {"n_aux_layers": 3, "n_aux_chans": 256, "use_norm": False, "use_attention": False}
#: which upstream DDSP-SVC each model type (and RectifiedFlow generation) comes from
UPSTREAM_VERSIONS = {"CombSub": "ddsp", "CombSubFast": "ddsp", "CombSubSuperFast": "ddsp", "Sins": "ddsp",
                     "DiffusionFast": "5.0", "RectifiedFlow": "6.0 or 6.1"}  # fmt: skip

# constructor keyword -> where its value sits in a Config (section, key)
_CONFIG_FIELDS = {name: tuple(key.split(".", 1)) for name, key in CONFIG_KEYS.items()}


def model_class(model_type: str, generation: str | None = None) -> type[torch.nn.Module]:
    """The class upstream's ``model.type`` names.

    Args:
        generation: for ``RectifiedFlow``, ``"6.1"`` picks 6.1's LYNXNet model
            (:class:`~mlflow_ddsp.models.reflow_svc61.LynxReflowUnit2Wav`); else 6.0's.

    Raises:
        ConfigError: an unknown type, naming the allowed ones.
    """
    cls = MODEL_TYPES.get(model_type)
    if cls is None:
        raise ConfigError(
            f"Invalid value for model.type={model_type!r}: must be one of {', '.join(sorted(MODEL_TYPES))}"
        )
    if model_type == "RectifiedFlow" and generation == "6.1":
        return LynxReflowUnit2Wav
    return cls


def _constructor_keywords(cls: type[torch.nn.Module]) -> list[str]:
    """The keywords that come from the config (``out_dims`` is the vocoder's 128 mel bins)."""
    return [name for name in inspect.signature(cls.__init__).parameters if name != "self" and name in CONFIG_KEYS]


@dataclass(frozen=True)
class Architecture:
    """What a checkpoint's tensors depend on.

    Attributes:
        model_type: upstream's ``model.type``.
        params: constructor keyword -> value, exactly the keywords ``model_type`` takes.
    """

    model_type: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> dict[str, Any]:
        """Config key -> value (``{'model.type': 'CombSubFast', 'model.n_spk': 2, ...}``), model keys first."""
        keys = sorted(self.params, key=lambda name: (not CONFIG_KEYS[name].startswith("model."), CONFIG_KEYS[name]))
        return {"model.type": self.model_type, **{CONFIG_KEYS[name]: self.params[name] for name in keys}}

    @property
    def generation(self) -> str:
        """The upstream DDSP-SVC this architecture is (``"6.1"`` for a RectifiedFlow with 6.1's keys)."""
        if self.model_type == "RectifiedFlow":
            return "6.1" if "n_aux_layers" in self.params else "6.0"
        return UPSTREAM_VERSIONS.get(self.model_type, "")

    def differences(self, other: Architecture) -> list[str]:
        """Config keys whose values differ.

        Keys only one of two model types has are implied by model.type; within one type
        (RectifiedFlow of 6.0 against 6.1) a key only one side has is a difference.
        """
        mine, theirs = self.settings, other.settings
        keys = [key for key in mine if key in theirs and mine[key] != theirs[key]]
        if self.model_type == other.model_type:
            keys += [key for key in mine if key not in theirs] + [key for key in theirs if key not in mine]
        return keys

    def describe(self, keys: list[str] | None = None) -> str:
        """``model.type=CombSubFast, model.n_spk=2, ...`` (only ``keys`` when given; a key this
        architecture lacks shows as ``unset``)."""
        settings = self.settings
        shown = ", ".join(f"{key}={_show(settings[key]) if key in settings else 'unset'}"
                          for key in (keys if keys is not None else settings))  # fmt: skip
        if self.model_type == "RectifiedFlow" and keys is not None and any(k.startswith("model.n_aux") for k in keys):
            shown += f" (upstream {self.generation})"
        return shown


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def architecture(cfg: Any) -> Architecture:
    """The architecture a :class:`mlflow_ddsp.config.Config` describes.

    Only the keywords ``cfg.model.type`` takes are kept, so an upstream yaml with
    e.g. ``win_length`` under a CombSubFast model describes the same architecture
    as one without it.

    Raises:
        ConfigError: unknown ``model.type``.
    """
    cls = model_class(cfg.model.type, cfg.upstream_generation)
    params = {}
    for name in _constructor_keywords(cls):
        section, key = _CONFIG_FIELDS[name]
        params[name] = getattr(getattr(cfg, section), key)
        if params[name] is None and name in REFLOW_61_KEYS:
            params[name] = REFLOW_61_KEYS[name]  # upstream 6.1 fills an absent one with its default
    return Architecture(cfg.model.type, params)


def architecture_of(model: torch.nn.Module) -> Architecture:
    """The architecture a built model has (from its constructor arguments)."""
    return Architecture(model.model_type, {k: v for k, v in model.hparams.items() if k in CONFIG_KEYS})


def check_same_architecture(
    trained: Architecture,
    current: Architecture,
    *,
    trained_by: str,
    current_is: str = "this config",
    verb: str = "was trained with",
    advice: str = "build the model from the checkpoint's config.yaml (these keys cannot change once trained)",
) -> None:
    """Refuse ``current`` unless it equals ``trained``, naming every difference.

    Args:
        trained: the checkpoint's architecture (from its config.yaml).
        current: the one about to be used.
        trained_by: what holds ``trained``, e.g. ``"checkpoint voice v3 (step 4000)"``.
        current_is: what holds ``current``.
        verb: joins ``trained_by`` to its values.
        advice: what to do, appended to the message.

    Raises:
        ArchitectureMismatchError: one line, e.g. ``checkpoint voice v3 (step 4000) was
            trained with model.n_spk=2, data.encoder_out_channels=768; this config has
            model.n_spk=4, data.encoder_out_channels=256: ...``.
    """
    differing = trained.differences(current)
    if not differing:
        return
    raise ArchitectureMismatchError(
        f"{trained_by} {verb} {trained.describe(differing)}; "
        f"{current_is} has {current.describe(differing)}: {advice}"
    )


# what a state_dict without a window buffer can be: the two LTV-FIR models share every key
_NO_WINDOW_TYPES = ("CombSub", "Sins")


def architecture_in_weights(state: Mapping[str, Any]) -> dict[str, Any]:
    """The config keys a DDSP-SVC state_dict's tensors reveal, as far as they do.

    Read from upstream's key layout: the ``sampling_rate`` / ``block_size`` /
    ``win_length`` buffers; ``model.n_spk`` from ``unit2ctrl.spk_embed.weight
    [n_spk, 256]`` (absent: 1); ``data.encoder_out_channels`` from
    ``unit2ctrl.stack.0.weight [256, C, 3]``; ``model.use_pitch_aug`` from
    ``unit2ctrl.aug_shift_embed``; ``model.type`` from the window buffers
    (``win_length``: CombSubSuperFast; ``window`` alone: CombSubFast; neither:
    ``"CombSub or Sins"``, which share every key).

    Returns:
        config key -> value; empty for a state_dict that is not a DDSP-SVC model's.
    """
    if isinstance(state, Mapping) and any(isinstance(k, str) and k.startswith("ddsp_model.") for k in state):
        return _cascade_in_weights(state)
    if not isinstance(state, Mapping) or not torch.is_tensor(state.get("unit2ctrl.stack.0.weight")):
        return {}
    found: dict[str, Any] = {}
    if "win_length" in state:
        found["model.type"] = "CombSubSuperFast"
    elif "window" in state:
        found["model.type"] = "CombSubFast"
    else:
        found["model.type"] = " or ".join(_NO_WINDOW_TYPES)
    speakers = state.get("unit2ctrl.spk_embed.weight")
    found["model.n_spk"] = int(speakers.shape[0]) if torch.is_tensor(speakers) and speakers.dim() == 2 else 1
    found["model.use_pitch_aug"] = "unit2ctrl.aug_shift_embed.weight" in state
    stack = state["unit2ctrl.stack.0.weight"]
    if stack.dim() == 3:
        found["data.encoder_out_channels"] = int(stack.shape[1])
    for buffer, key in (("sampling_rate", "data.sampling_rate"), ("block_size", "data.block_size"),
                        ("win_length", "model.win_length")):  # fmt: skip
        value = state.get(buffer)
        if torch.is_tensor(value) and value.numel() == 1:
            found[key] = int(value)
    return found


def _cascade_in_weights(state: Mapping[str, Any]) -> dict[str, Any]:
    """What a cascade model's state_dict (``ddsp_model.*`` + ``reflow_model.*`` / ``diff_model.*``) reveals."""
    stage = {k[len("ddsp_model."):]: v for k, v in state.items() if k.startswith("ddsp_model.")}
    found = architecture_in_weights(stage)
    found.pop("model.type", None)
    if any(k.startswith("diff_model.") for k in state):
        found["model.type"] = "DiffusionFast"
    elif any(k.startswith("reflow_model.") for k in state):
        found["model.type"] = "RectifiedFlow"
        generation = reflow_generation(state)
        if generation is not None:
            found["upstream"] = generation
    return found


def check_weights_fit(
    state: Mapping[str, Any],
    config: Architecture,
    *,
    source: str,
    config_is: str = "its config.yaml",
    advice: str = "the config.yaml is not the one these weights were trained with",
) -> None:
    """Refuse a state_dict whose tensors reveal other config keys than its config.yaml's.

    Catches a version whose weights and config.yaml disagree (or an upstream
    folder with the wrong config copied in) with the config keys named; the
    key-by-key state_dict check still follows for what the tensors cannot show
    (e.g. ``model.n_harmonics``).

    Args:
        state: the state_dict.
        config: the architecture the weights are meant for.
        source: what holds ``state``, for the message.
        config_is: what holds ``config``.
        advice: what to do, appended to the message.

    Raises:
        ArchitectureMismatchError: ``checkpoint voice v1 (step 10) holds weights of
            model.n_spk=2; its config.yaml has model.n_spk=1: ...``.
    """
    found = architecture_in_weights(state)
    settings = config.settings
    generation = found.pop("upstream", None)
    if generation is not None and config.model_type == "RectifiedFlow" and generation != config.generation:
        keys = ", ".join(f"model.{k}" for k in REFLOW_61_KEYS)
        raise ArchitectureMismatchError(
            f"{source} holds weights of upstream {generation}'s RectifiedFlow; {config_is} describes "
            f"{config.generation}'s ({keys} {'set' if config.generation == '6.1' else 'unset'}): 6.0 and 6.1 "
            f"checkpoints do not load into each other; {advice}"
        )
    differing = []
    for key, value in found.items():
        if key == "model.type" and value == " or ".join(_NO_WINDOW_TYPES):
            if settings[key] not in _NO_WINDOW_TYPES:
                differing.append(key)
        elif key in settings and settings[key] != value:
            differing.append(key)
    if differing:
        theirs = ", ".join(f"{key}={_show(found[key])}" for key in differing)
        raise ArchitectureMismatchError(
            f"{source} holds weights of {theirs}; {config_is} has {config.describe(differing)}: {advice}"
        )
