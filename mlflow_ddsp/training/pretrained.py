"""A pretrained starting point from a file: upstream's ``model_0.pt`` convention.

Upstream DDSP-SVC users start from a pretrained model by dropping its
``model_0.pt`` into ``env.expdir``: the trainer takes the highest ``model_<N>.pt``
there, loads it non-strictly (keys the model lacks or misses are tolerated, a shape
that does not fit stops training: upstream issue #111) and continues from its
``global_step``, which also feeds the learning-rate schedule (``reflow/solver.py``,
``diffusion/solver_new.py``, ``logger/utils.py`` ``load_model``).

``mlflow-ddsp train --init-from model_0.pt`` does the same while the registered model
has no checkpoint of its own; afterwards training resumes from its own newest one,
as upstream prefers ``model_2000.pt`` over ``model_0.pt``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoint.files import load_checkpoint, sha256_file
from ..errors import ConfigError
from ..models import architecture, check_weights_fit
from ..state_dict import compare_state_dict, load_state_dict_checked

__all__ = ["is_model_uri", "pretrained_file", "check_pretrained", "load_pretrained"]

log = logging.getLogger(__name__)


def is_model_uri(source: str) -> bool:
    """``models:/...`` (a registry version), as opposed to a file path."""
    return str(source).startswith("models:/")


def pretrained_file(source: str) -> Path:
    """The file ``--init-from`` names, checked to exist before any work.

    Raises:
        ConfigError: no such file (one line, with what ``--init-from`` accepts).
    """
    path = Path(os.path.expanduser(source)).absolute()
    if not path.is_file():
        raise ConfigError(
            f"--init-from {source!r}: no such file ({path}); give an upstream checkpoint such as model_0.pt, "
            "or a registry version models:/NAME/VERSION"
        )
    return path


def check_pretrained(path: Path, cfg: Any) -> dict[str, Any]:
    """Read ``path`` and refuse it when its tensors reveal another architecture than ``cfg``'s.

    Done before a run or a lease exists, so a wrong file leaves nothing behind.

    Returns:
        The checkpoint payload.

    Raises:
        CheckpointIntegrityError: not a plain torch checkpoint with a ``model`` state_dict.
        ArchitectureMismatchError: its tensors reveal other config keys (named), or it is
            another upstream generation's RectifiedFlow.
    """
    payload = load_checkpoint(path)
    check_weights_fit(payload["model"], architecture(cfg), source=str(path), config_is="this config",
                      advice="use the config the pretrained model was trained with")  # fmt: skip
    return payload


def load_pretrained(path: Path, model: torch.nn.Module, cfg: Any) -> tuple[int, str]:
    """Load ``path``'s weights into ``model`` as upstream loads a pretrained ``model_<N>.pt``.

    Args:
        path: an upstream checkpoint ``{'global_step': N, 'model': state_dict, ...}``.
        model: built from ``cfg``.
        cfg: the training config (for the architecture check).

    Returns:
        ``(global_step, sha256)``: the step training continues from (0 when the file has
        none) and the file's digest, for lineage.

    Raises:
        CheckpointIntegrityError: not a plain torch checkpoint with a ``model`` state_dict.
        ArchitectureMismatchError: its tensors reveal other config keys (named).
        StateDictMismatchError: a key whose shape does not fit (named with both shapes).
    """
    payload = check_pretrained(path, cfg)
    state = payload["model"]
    diff = compare_state_dict(model, state)
    load_state_dict_checked(model, state, strict=False, source=str(path),
                            hint="the pretrained model does not fit this config")  # fmt: skip
    if diff.missing or diff.unexpected:
        log.warning("%s: loaded non-strictly as upstream does (%d keys this model has were not in the file, "
                    "%d keys of the file were not used)", path, len(diff.missing), len(diff.unexpected))  # fmt: skip
    step = payload.get("global_step", 0)
    step = int(step) if isinstance(step, (int, float)) or torch.is_tensor(step) else 0
    return max(step, 0), sha256_file(path)
