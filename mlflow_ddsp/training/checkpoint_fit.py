"""Whether a checkpoint fits a DDSP-SVC model: the architecture checks of resume, ``--init-from`` and DDP ranks.

The checkpoint queue (:mod:`mlflow_ddsp.checkpoint`) reads bytes, versions and state_dicts,
whatever the model; it never builds a network nor parses a DDSP-SVC config. This module,
above both, compares a checkpoint's ``config.yaml`` and weights with the model about to be
trained and is handed to the queue as its fit check
(:data:`mlflow_ddsp.checkpoint.reader.FitCheck`): ``queue.restore(..., check=check_fit)``,
``load_into(..., check=check_fit)``.
"""

from __future__ import annotations

import logging

import torch
import yaml

from ..checkpoint.reader import CheckpointReader, RestoredCheckpoint
from ..config import parse_config
from ..errors import ConfigError
from ..models import Architecture, DDSPModel, architecture, architecture_of, check_same_architecture, check_weights_fit

__all__ = ["architecture_in_config", "trained_architecture", "check_fit", "check_resume_architecture"]

log = logging.getLogger(__name__)

RESUME_ADVICE = (
    "set these keys as the checkpoint has them (mlflow-ddsp export writes its config.yaml), "
    "or train under another registered_model"
)


def architecture_in_config(config_yaml: bytes, label: str) -> Architecture | None:
    """The architecture a checkpoint's config.yaml describes; None without one (or an empty mapping).

    A config.yaml that cannot be read is logged (naming ``label``, e.g. ``voice v3 (step
    4000)``) and treated as absent: the state_dict comparison still names any mismatch.
    """
    if not config_yaml.strip():
        return None
    try:
        raw = yaml.safe_load(config_yaml)
        # an empty mapping is what a queue given no config stores: nothing to compare with
        return architecture(parse_config(raw)) if isinstance(raw, dict) and raw else None
    except (yaml.YAMLError, ConfigError) as exc:
        log.warning("%s: config.yaml not readable (%s); comparing the weights only", label, exc)
        return None


def trained_architecture(restored: RestoredCheckpoint) -> Architecture | None:
    """The :class:`~mlflow_ddsp.models.Architecture` in the checkpoint's config.yaml; None without one."""
    return architecture_in_config(restored.config_yaml, restored.version.label)


def check_fit(restored: RestoredCheckpoint, model: torch.nn.Module) -> str:
    """The queue's fit check for a DDSP-SVC model; returns the hint for a state_dict mismatch.

    A DDSP-SVC model is compared with the architecture in the checkpoint's config.yaml,
    and the weights with that config.yaml; any other model passes with no hint.

    Raises:
        ArchitectureMismatchError: the checkpoint was trained with other tensor-shaping
            config keys, or its weights are not its config.yaml's; every difference named.
    """
    if not isinstance(model, DDSPModel):
        return ""
    source = f"checkpoint {restored.version.label}"
    state = restored.checkpoint.get("model")
    current = architecture_of(model)
    trained = trained_architecture(restored)
    if trained is None:
        check_weights_fit(state, current, source=source, config_is="this config",
                          advice="set these keys as the weights have them")  # fmt: skip
        return "it has no readable config.yaml to build the model from"
    check_same_architecture(trained, current, trained_by=source, current_is="this config", advice=RESUME_ADVICE)
    check_weights_fit(state, trained, source=source)
    return "its weights do not match its own config.yaml"


def check_resume_architecture(reader: CheckpointReader, current: Architecture, source: str | int | None = None) -> None:
    """Refuse early (before a run or a lease exists) to resume from another architecture.

    Reads only the resume point's config.yaml (:meth:`CheckpointReader.resume_config`).
    A version whose files are missing is left to ``restore``, which falls back and reports it.

    Args:
        reader: the reader of the registered model about to be trained.
        current: the :class:`~mlflow_ddsp.models.Architecture` about to be trained.
        source: the ``--init-from`` starting point, as for ``restore``.

    Raises:
        ArchitectureMismatchError: every differing config key named.
        CheckpointNotFoundError: ``source`` does not exist.
    """
    found = reader.resume_config(source)
    if found is None:
        return
    version, config_yaml = found
    trained = architecture_in_config(config_yaml, version.label)
    if trained is not None:
        check_same_architecture(trained, current, trained_by=f"checkpoint {version.label}", advice=RESUME_ADVICE)
