"""MLflow's naming rules for every name the queue uses or derives, and the queue's alias names.

A leaf module (standard library and ``errors`` only): ``config``, ``checkpoint``,
``serving`` and the CLI import it without loading torch or MLflow. Pure logic, no I/O.

Validated before any work starts (config loading, queue construction, import),
so that a name MLflow or the file system would refuse never costs a training
run: a registered model name must survive ``models:/NAME/7`` URIs, search
filters and every name derived from it (:func:`derived_names`):

* its writer lease ``NAME.writer-lease`` (or ``NAME.writer-lease-<8 hex>``) and
  the retired lease ``NAME.writer-lease-<8 hex>.retired-<16 characters>``
  (``checkpoint/lease.py``): registered model names, ``VARCHAR(256)`` in
  MLflow's database (characters; PostgreSQL enforces it); so no name of ours
  may contain ``.writer-lease``;
* the LoggedModel holding a checkpoint's files, ``step-<step>-<kind>[-<metric>-<value>]-<NAME>``, under
  MLflow's stricter LoggedModel rule (no ``/ : . % " '``,
  ``mlflow/utils/validation.py::_validate_logged_model_name``; ``VARCHAR(500)``);
* the runs ``train-NAME`` and ``compare-NAME`` (``runs.name`` is ``VARCHAR(250)``);
* folders on this machine: the checkpoint spool's ``quote(NAME, safe="")``
  (:func:`spool_folder_name`; each UTF-8 byte outside ``A-Za-z0-9_.-~`` takes 3
  bytes, so 30 Chinese characters are 270 bytes) and ``serve``'s
  ``NAME-v<version>-<pid>``: at most 255 bytes each (NAME_MAX of ext4, xfs,
  btrfs, tmpfs, APFS).

Experiment names and aliases follow ``_validate_experiment_name`` and
``_validate_model_alias_name``. ``tests/test_names.py`` checks these rules
against a real MLflow store and this file system.
"""

from __future__ import annotations

import math
import re
from urllib.parse import quote

from .errors import ConfigError

__all__ = [
    "DEFAULT_ALIAS",
    "BEST_ALIAS",
    "MAX_MODEL_NAME_LENGTH",
    "validate_model_name",
    "validate_alias",
    "validate_experiment_name",
    "logged_model_name",
    "spool_folder_name",
    "serving_folder_name",
    "derived_names",
    "NAME_MAX",
]

DEFAULT_ALIAS = "rolling"  # the queue's rolling alias on the newest checkpoint, unless mlflow.alias says otherwise
BEST_ALIAS = "best"  # the queue's alias on the best checkpoint by ``best_metric``

# MLflow stores registered model names as VARCHAR(256) (enforced by PostgreSQL);
# the lease adds ".writer-lease-<8 hex>.retired-<16 characters>" (47 characters) to ours.
MAX_MODEL_NAME_LENGTH = 200
MAX_EXPERIMENT_NAME_LENGTH = 500  # mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH
NAME_MAX = 255  # bytes in one file or folder name (ext4, xfs, btrfs, tmpfs, APFS)

# MLflow's database columns (mlflow/store/*/dbmodels/models.py), in characters.
_REGISTERED_MODEL_COLUMN = 256  # registered_models.name
_LOGGED_MODEL_COLUMN = 500  # logged_models.name
_RUN_NAME_COLUMN = 250  # runs.name
# The longest of each derived form: the lease's retired name ends in up to 16
# characters of its holder (checkpoint/lease.py), a step has at most 19 digits
# (int64), a served version 10, a pid 7 (Linux's pid_max is at most 4194304).
_RETIRED_LEASE_SUFFIX = ".writer-lease-" + "x" * 8 + ".retired-" + "x" * 16
_LONGEST_STEP = 2**63 - 1
_METRIC_IN_NAME = 16  # characters of a metric's name in a LoggedModel name
_LONGEST_VERSION = 2**31 - 1
_LONGEST_PID = 4194304
_RUN_PREFIXES = ("train-", "compare-")

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
    if ".writer-lease" in name:
        raise ConfigError(
            f"registered_model={name!r} looks like the writer lease of another model (NAME.writer-lease, "
            "NAME.writer-lease-<hex>, ...retired-...); choose a name without '.writer-lease'"
        )
    if len(name) > MAX_MODEL_NAME_LENGTH:
        raise ConfigError(
            f"registered_model={name[:40]!r}... is {len(name)} characters long; at most "
            f"{MAX_MODEL_NAME_LENGTH} are allowed (MLflow stores names in 256 characters)"
        )
    shown = repr(name) if len(name) <= 40 else f"{name[:40]!r}..."
    size = f"{len(name)} characters, {len(name.encode())} bytes in UTF-8"
    for what, derived, limit, unit in derived_names(name):
        length = len(derived.encode()) if unit == "bytes" else len(derived)
        if length > limit:
            hint = "shorten it"
            if derived == spool_folder_name(name):
                hint += (f" (each UTF-8 byte outside A-Z a-z 0-9 _ . - ~ takes 3 bytes there, so a name of "
                         f"Chinese characters may have at most {limit // 9})")  # fmt: skip
            raise ConfigError(f"registered_model={shown} ({size}) is {length} {unit} as {what}; at most {limit} "
                              f"{unit} are allowed: {hint}")  # fmt: skip
    return name


def derived_names(name: str) -> list[tuple[str, str, int, str]]:
    """Every name derived from registered model ``name``, at its longest: ``(what, derived, limit, unit)``.

    ``unit`` is ``"characters"`` (MLflow's database columns) or ``"bytes"``
    (file and folder names, NAME_MAX). The source of each rule is in the module docstring.
    """
    forms = [
        ("its retired writer lease's registered model name", name + _RETIRED_LEASE_SUFFIX,
         _REGISTERED_MODEL_COLUMN, "characters"),
        ("a checkpoint's LoggedModel name",
         _logged_model_name(name, _LONGEST_STEP, "force_saved", "m" * _METRIC_IN_NAME, -1.234e-308),
         _LOGGED_MODEL_COLUMN,
         "characters"),
        *((f"the run name {prefix}NAME", prefix + name, _RUN_NAME_COLUMN, "characters") for prefix in _RUN_PREFIXES),
        ("its checkpoint spool's folder name", spool_folder_name(name), NAME_MAX, "bytes"),
        ("the folder name `serve` copies a version into", serving_folder_name(name, _LONGEST_VERSION, _LONGEST_PID),
         NAME_MAX, "bytes"),
    ]  # fmt: skip
    return forms


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


def logged_model_name(registered_model: str, step: int, kind: str = "rolling", metric: str | None = None,
                      value: float | None = None) -> str:  # fmt: skip
    """The LoggedModel name of ``registered_model``'s checkpoint at ``step``:
    ``step-<step>-<kind>[-<metric>-<value>]-<NAME>``.

    The experiment's Models tab shows about 29 characters of this name, and nothing
    else of ours, on a 1600 px screen (MLflow 3.17 puts seven fixed columns before any
    metric or param), so the name starts with what tells checkpoints apart: the step,
    the kind (``force`` for ``force_saved``, ``rolling``) and, when the save carried a
    finite value of ``metric``, the metric's last path part and its value to 4
    significant digits with a decimal comma (MLflow refuses ``.`` in LoggedModel
    names). Characters MLflow refuses there become ``-``:
    ``("my.voice", 300, "force_saved", "validation/loss", 1.49126)`` ->
    ``step-300-force-loss-1,491-my-voice``.
    """
    return _logged_model_name(validate_model_name(registered_model), step, kind, metric, value)


def _logged_model_name(registered_model: str, step: int, kind: str = "rolling", metric: str | None = None,
                       value: float | None = None) -> str:  # fmt: skip
    parts = [f"step-{int(step)}", kind.split("_")[0]]
    if metric and value is not None and math.isfinite(value):
        parts += [metric.rsplit("/", 1)[-1][:_METRIC_IN_NAME], f"{value:.4g}".replace(".", ",")]
    return _LOGGED_MODEL_FORBIDDEN.sub("-", "-".join(parts + [registered_model]))


def spool_folder_name(registered_model: str) -> str:
    """The folder of ``registered_model``'s checkpoint spool: the name percent-encoded (UTF-8, nothing kept).

    ``voice`` -> ``voice``; ``my voice`` -> ``my%20voice``; one CJK character
    (3 UTF-8 bytes) -> 9 characters.
    """
    return quote(registered_model, safe="")


def serving_folder_name(registered_model: str, version: int, pid: int) -> str:
    """The folder ``mlflow-ddsp serve`` copies a version into: ``<name>-v<version>-<pid>``."""
    return f"{registered_model}-v{int(version)}-{int(pid)}"
