"""MLflow's naming rules for every name the queue uses or derives. Pure logic, no I/O.

Validated before any work starts (config loading, queue construction, import),
so that a name MLflow would refuse never costs a training run: a registered
model name must survive ``models:/NAME/7`` URIs, search filters and its writer
lease ``NAME.writer-lease``; the LoggedModel holding a checkpoint's files is
named from it, under MLflow's stricter LoggedModel rule (no ``/ : . % " '``,
``mlflow/utils/validation.py::_validate_logged_model_name``); experiment names
and aliases follow ``_validate_experiment_name`` and ``_validate_model_alias_name``.
``tests/test_names.py`` checks these rules against a real MLflow store.
"""

from __future__ import annotations

import re

from ..errors import ConfigError

__all__ = [
    "MAX_MODEL_NAME_LENGTH",
    "validate_model_name",
    "validate_alias",
    "validate_experiment_name",
    "logged_model_name",
]

# MLflow stores registered model names as VARCHAR(256) (enforced by PostgreSQL);
# the lease adds ".writer-lease.retired-<12 hex>" (35 characters) to ours.
MAX_MODEL_NAME_LENGTH = 200
MAX_EXPERIMENT_NAME_LENGTH = 500  # mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH

# MLflow refuses '/' and ':' in registered model names; '@' would make
# models:/NAME@alias ambiguous, and quotes/backslashes break search filters.
_FORBIDDEN_NAME_CHARS = set("/:@'\"`\\")
# MLflow refuses these in LoggedModel names (which we derive from the registered model name).
_LOGGED_MODEL_FORBIDDEN = re.compile(r"[/:.%\"']")

# MLflow refuses these alias names: `latest` (any case) already means "highest
# version number", and v<digits> would be ambiguous with version numbers.
_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)
_ALIAS_CHARS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


def validate_model_name(name: object) -> str:
    """Return ``name`` if it can name a checkpoint queue's registered model.

    Raises:
        ConfigError: naming the value and what is allowed.
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ConfigError(f"registered_model={name!r} must be a non-empty name without surrounding spaces")
    bad = sorted(_FORBIDDEN_NAME_CHARS & set(name))
    if bad:
        raise ConfigError(
            f"registered_model={name!r} contains {''.join(bad)!r}; use letters, digits, spaces and . _ - %"
        )
    if name in (".", "..") or any(ord(c) < 32 for c in name):
        raise ConfigError(f"registered_model={name!r} is not a usable name; use letters, digits, spaces and . _ -")
    if name.endswith(".writer-lease") or ".writer-lease.retired-" in name:
        raise ConfigError(
            f"registered_model={name!r} ends like the writer lease of another model (NAME.writer-lease); "
            "choose a name without '.writer-lease'"
        )
    if len(name) > MAX_MODEL_NAME_LENGTH:
        raise ConfigError(
            f"registered_model={name[:40]!r}... is {len(name)} characters long; at most "
            f"{MAX_MODEL_NAME_LENGTH} are allowed (MLflow stores names in 256 characters)"
        )
    return name


def validate_alias(alias: object) -> str:
    """Return ``alias`` if MLflow accepts it as a model alias, else raise ConfigError."""
    if not isinstance(alias, str) or not _ALIAS_CHARS.match(alias):
        raise ConfigError(
            f"alias={alias!r} is not a valid model alias: use 1-255 characters from "
            "[A-Za-z0-9_-], e.g. 'rolling'"
        )
    if _RESERVED_ALIAS.match(alias):
        raise ConfigError(
            f"alias={alias!r} is reserved by MLflow ('latest' and 'v<N>' already mean "
            "'newest version' and 'version N'); use another name, e.g. 'rolling'"
        )
    return alias


def validate_experiment_name(name: object) -> str:
    """Return ``name`` if MLflow accepts it as an experiment name, else raise ConfigError."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"experiment={name!r} must be a non-empty name")
    if len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        raise ConfigError(
            f"experiment={name[:40]!r}... is {len(name)} characters long; MLflow allows at most "
            f"{MAX_EXPERIMENT_NAME_LENGTH}"
        )
    return name


def logged_model_name(registered_model: str, step: int) -> str:
    """The LoggedModel name of ``registered_model``'s checkpoint at ``step``.

    Characters MLflow refuses in LoggedModel names become ``-``:
    ``my.voice`` at step 10 -> ``my-voice-step-10``.
    """
    return f"{_LOGGED_MODEL_FORBIDDEN.sub('-', validate_model_name(registered_model))}-step-{int(step)}"
