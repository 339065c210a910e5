"""A checkpoint queue's options, validated before any network call (``queue.py``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..errors import ConfigError
from ..names import BEST_ALIAS, DEFAULT_ALIAS, validate_alias, validate_experiment_name, validate_model_name
from .lease import WriterLease

__all__ = ["WHEN_BUSY", "CLOSE_TIMEOUT_ENV", "DEFAULT_CLOSE_TIMEOUT", "registered_model_description",
           "resolve_close_timeout", "config_bytes", "check_options"]  # fmt: skip

WHEN_BUSY = ("wait", "skip")
CLOSE_TIMEOUT_ENV = "MLFLOW_DDSP_CLOSE_TIMEOUT"
DEFAULT_CLOSE_TIMEOUT = 60.0


def registered_model_description(alias: str = DEFAULT_ALIAS, best_metric: str | None = None) -> str:
    """The description a checkpoint queue gives the registered model it creates (the UI's first line)."""
    best = f", '{BEST_ALIAS}' the best by {best_metric}" if best_metric else ""
    return (
        f"DDSP-SVC checkpoints kept by mlflow-ddsp: alias '{alias}' is the newest checkpoint{best}. "
        "Force-saved versions are kept forever, and so is any version you give an alias of your own "
        "or the tag mlflow_ddsp.keep=true; each version's description says what keeps it."
    )


def resolve_close_timeout(value: float | None = None) -> float:
    """``close_timeout`` argument, else ``MLFLOW_DDSP_CLOSE_TIMEOUT``, else 60 s.

    Raises:
        ConfigError: not a finite number >= 0 (the message names the value as given).
    """
    if value is None:
        raw = os.environ.get(CLOSE_TIMEOUT_ENV)
        if raw is None or raw.strip() == "":
            return DEFAULT_CLOSE_TIMEOUT
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:  # named as the user wrote it
            raise ConfigError(f"{CLOSE_TIMEOUT_ENV}={raw!r} must be a number of seconds >= 0")
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"close_timeout={value!r} must be a number of seconds >= 0")
    return float(value)


def config_bytes(config: Mapping[str, Any] | str | os.PathLike | bytes | None) -> bytes:
    """The training config as the ``config.yaml`` stored with every checkpoint.

    Raises:
        ConfigError: a path that is not a file.
    """
    if config is None:
        return b"# no config was given to CheckpointQueue\n{}\n"
    if isinstance(config, bytes):
        return config
    if isinstance(config, Mapping):
        return yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True).encode()
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"config={str(config)!r} is not a file; pass a mapping, yaml bytes or a yaml path")
    return path.read_bytes()


def check_options(name: str, alias: str, experiment: str | None, when_busy: str,
                  lease: WriterLease | None) -> tuple[str, str]:  # fmt: skip
    """The queue's registered model name and alias, checked with its other named options.

    Raises:
        ConfigError: a name MLflow or the queue refuses, or ``when_busy`` not in :data:`WHEN_BUSY`.
        ValueError: ``lease`` is of another registered model.
    """
    name, alias = validate_model_name(name), validate_alias(alias)
    if alias == BEST_ALIAS:
        raise ConfigError(f"alias={BEST_ALIAS!r} is the queue's alias of the best checkpoint; use another, e.g. 'rolling'")
    if experiment is not None:
        validate_experiment_name(experiment)
    if lease is not None and lease.name != name:
        raise ValueError(f"lease of {lease.name!r} given for registered model {name!r}")
    if when_busy not in WHEN_BUSY:
        raise ConfigError(f"when_busy={when_busy!r} must be one of {', '.join(WHEN_BUSY)}")
    return name, alias
