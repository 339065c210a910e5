"""DDSP-SVC neural vocoders, state_dict-compatible with upstream ``model_<N>.pt`` files.

``build_model(model_type, **kwargs)`` takes the upstream config values under
the constructor names below (the config key each comes from in brackets):

=================  =============================  ===============================
keyword            config key                     used by
=================  =============================  ===============================
sampling_rate      data.sampling_rate             all (required)
block_size         data.block_size                all (required)
n_unit             data.encoder_out_channels      all (256 hubertsoft, else 768);
                                                  ``encoder_out_channels=`` is
                                                  accepted as an alias
n_spk              model.n_spk                    all (default 1)
win_length         model.win_length               CombSubSuperFast (2048)
n_harmonics        model.n_harmonics              Sins (128)
n_mag_allpass      model.n_mag_allpass            Sins, CombSub (256)
n_mag_noise        model.n_mag_noise              Sins, CombSub (256)
n_mag_harmonic     model.n_mag_harmonic           CombSub (512)
use_pitch_aug      (not in the yaml)              CombSubFast, CombSubSuperFast
pcmer_norm         (not in the yaml)              CombSubFast
=================  =============================  ===============================

The config keys above are the model's *architecture*
(:mod:`mlflow_ddsp.models.architecture`): a checkpoint is only ever loaded
into a model built with the same ones.

Every model's ``forward(units, f0, volume, spk_id=None, spk_mix_dict=None, ...)``
returns audio ``[B, T * block_size]``; ``synthesize`` returns a
:class:`Synthesis` with the hidden features and (Sins, CombSub) the parts.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.models.architecture import (
    MODEL_TYPES,
    Architecture,
    architecture,
    architecture_in_weights,
    architecture_of,
    check_same_architecture,
    check_weights_fit,
    model_class,
)
from mlflow_ddsp.models.base import DDSPModel, Synthesis
from mlflow_ddsp.models.combsub import CombSub, CombSubFast
from mlflow_ddsp.models.combsub_superfast import CombSubSuperFast
from mlflow_ddsp.models.sins import Sins
from mlflow_ddsp.models.unit2control import Unit2Control

__all__ = [
    "MODEL_TYPES",
    "Architecture",
    "architecture",
    "architecture_of",
    "check_same_architecture",
    "architecture_in_weights",
    "check_weights_fit",
    "build_model",
    "build_model_from_config",
    "DDSPModel",
    "Synthesis",
    "Unit2Control",
    "CombSub",
    "CombSubFast",
    "CombSubSuperFast",
    "Sins",
]


def build_model(model_type: str, **kwargs: Any) -> torch.nn.Module:
    """Construct the model named by upstream's ``model.type``.

    Args:
        model_type: one of :data:`MODEL_TYPES`.
        **kwargs: constructor keywords (see the module docstring);
            ``encoder_out_channels`` is an alias of ``n_unit``.

    Returns:
        The model, freshly initialised (load a state_dict for trained weights).

    Raises:
        ConfigError: unknown ``model_type``, a keyword that model does not take,
            or an out-of-range value.
    """
    cls = model_class(model_type, "6.1" if any(k in kwargs for k in ("n_aux_layers", "n_aux_chans", "use_norm",
                                                                     "use_attention")) else None)  # fmt: skip
    if "encoder_out_channels" in kwargs:
        if "n_unit" in kwargs:
            raise ConfigError("give n_unit or encoder_out_channels, not both (they are the same setting)")
        kwargs["n_unit"] = kwargs.pop("encoder_out_channels")
    parameters = inspect.signature(cls.__init__).parameters
    allowed = [name for name in parameters if name != "self"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(
            f"model.type={model_type!r} does not take {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    missing = [
        name
        for name, param in parameters.items()
        if param.default is inspect.Parameter.empty and name != "self" and name not in kwargs
    ]
    if missing:
        raise ConfigError(f"model.type={model_type!r} needs {', '.join(missing)}")
    return cls(**kwargs)


def build_model_from_config(cfg: Any) -> torch.nn.Module:
    """Build the model a :class:`mlflow_ddsp.config.Config` describes (its :func:`architecture`)."""
    arch = architecture(cfg)
    return build_model(arch.model_type, **arch.params)
