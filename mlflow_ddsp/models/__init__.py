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

Every model's ``forward(units, f0, volume, spk_id=None, spk_mix_dict=None, ...)``
returns audio ``[B, T * block_size]``; ``synthesize`` returns a
:class:`Synthesis` with the hidden features and (Sins, CombSub) the parts.
"""

from __future__ import annotations

import inspect
from typing import Any

from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.models.base import DDSPModel, Synthesis
from mlflow_ddsp.models.combsub import CombSub, CombSubFast
from mlflow_ddsp.models.combsub_superfast import CombSubSuperFast
from mlflow_ddsp.models.sins import Sins
from mlflow_ddsp.models.unit2control import Unit2Control

__all__ = [
    "MODEL_TYPES",
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

#: upstream ``model.type`` name -> class
MODEL_TYPES: dict[str, type[DDSPModel]] = {
    "CombSub": CombSub,
    "CombSubFast": CombSubFast,
    "CombSubSuperFast": CombSubSuperFast,
    "Sins": Sins,
}


def build_model(model_type: str, **kwargs: Any) -> DDSPModel:
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
    cls = MODEL_TYPES.get(model_type)
    if cls is None:
        raise ConfigError(
            f"Invalid value for model.type={model_type!r}: must be one of {', '.join(sorted(MODEL_TYPES))}"
        )
    if "encoder_out_channels" in kwargs:
        if "n_unit" in kwargs:
            raise ConfigError("give n_unit or encoder_out_channels, not both (they are the same setting)")
        kwargs["n_unit"] = kwargs.pop("encoder_out_channels")
    allowed = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(
            f"model.type={model_type!r} does not take {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    missing = [
        name
        for name, param in inspect.signature(cls.__init__).parameters.items()
        if param.default is inspect.Parameter.empty and name != "self" and name not in kwargs
    ]
    if missing:
        raise ConfigError(f"model.type={model_type!r} needs {', '.join(missing)}")
    return cls(**kwargs)


def build_model_from_config(cfg: Any) -> DDSPModel:
    """Build the model a :class:`mlflow_ddsp.config.Config` describes.

    Only the ``model.*`` keys the chosen type takes are passed, so an upstream
    yaml with e.g. ``win_length`` under a CombSubFast model still works.
    """
    cls = MODEL_TYPES.get(cfg.model.type)
    if cls is None:
        return build_model(cfg.model.type)  # raises the ConfigError naming model.type
    accepted = set(inspect.signature(cls.__init__).parameters)
    candidates = {
        "sampling_rate": cfg.data.sampling_rate,
        "block_size": cfg.data.block_size,
        "n_unit": cfg.data.encoder_out_channels,
        **{k: getattr(cfg.model, k) for k in ("n_spk", "win_length", "n_harmonics", "n_mag_allpass",
                                               "n_mag_noise", "n_mag_harmonic", "use_pitch_aug", "pcmer_norm")},
    }  # fmt: skip
    return build_model(cfg.model.type, **{k: v for k, v in candidates.items() if k in accepted})
