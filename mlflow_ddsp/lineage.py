"""Where a checkpoint came from: code version, environment, config and data digests.

Recorded as tags on the training run and on every checkpoint's LoggedModel, so a version
can be traced back without the run: ``mlflow-ddsp lineage`` reads them.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from . import __version__
from . import tags as T
from .errors import CheckpointNotFoundError
from .store.fluent import mlflow_version

__all__ = ["LineageEntry", "code_version", "environment_versions", "lineage_chain"]


@lru_cache(maxsize=None)
def code_version(directory: str | None = None) -> dict[str, str]:
    """Git commit of ``directory`` (default: the package's checkout, else the cwd) and dirtiness.

    Empty when not in a git work tree or git is unavailable.
    """
    candidates = [directory] if directory else [str(Path(__file__).resolve().parent.parent), os.getcwd()]
    for folder in candidates:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10
            )
            if commit.returncode != 0:
                continue
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=folder, capture_output=True, text=True, timeout=10,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return {}
        return {"git_commit": commit.stdout.strip(), "git_dirty": str(bool(status.stdout.strip())).lower()}
    return {}


def environment_versions() -> dict[str, str]:
    """Versions that decide whether a checkpoint loads and sounds the same."""
    import torch  # heavy: imported on first use (tests/test_cli_startup.py)

    return {
        "mlflow_ddsp_version": __version__,
        "torch_version": torch.__version__,
        "mlflow_version": mlflow_version(),
        "python_version": platform.python_version(),
    }


@dataclass(frozen=True)
class LineageEntry:
    """One link of a checkpoint's ancestry; ``exists`` is False for a deleted (rolling) version."""

    name: str
    version: int
    step: int | None
    kind: str | None
    run_id: str | None
    exists: bool
    created_ms: int = 0
    git_commit: str | None = None
    git_dirty: str | None = None
    config_digest: str | None = None
    dataset_digest: str | None = None
    imported_from: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _parent(tags: Mapping[str, str]) -> tuple[str, int, int | None, str | None] | None:
    if T.PARENT_MODEL not in tags or T.PARENT_VERSION not in tags:
        return None
    step = tags.get(T.PARENT_STEP)
    return (
        tags[T.PARENT_MODEL],
        int(tags[T.PARENT_VERSION]),
        int(step) if step and step.isdigit() else None,
        tags.get(T.PARENT_RUN),
    )


def _files_tags(store, version) -> Mapping[str, str]:
    if not version.model_id:
        return {}
    try:
        return store.get_files(version.model_id).tags
    except CheckpointNotFoundError:
        return {}


def lineage_chain(store, name: str, version: int | None = None, *, alias: str = "rolling", limit: int = 1000) -> list[LineageEntry]:
    """The version (default: the alias's) and every version it descends from, newest first.

    A parent deleted since (a rolling checkpoint that was replaced) is still
    listed, from what its child and its training run recorded, and the walk
    goes on through that run's own parent.
    """
    if version is None:
        version = store.alias_version(name, alias)
        if version is None:
            raise CheckpointNotFoundError(f"registered model {name!r} has no alias {alias!r}; give a version")
    chain: list[LineageEntry] = []
    seen: set[tuple[str, int]] = set()
    link: tuple[str, int, int | None, str | None] | None = (name, int(version), None, None)
    while link is not None and len(chain) < limit and link[:2] not in seen:
        seen.add(link[:2])
        model, number, step, run_id = link
        try:
            v = store.get_version(model, number)
        except CheckpointNotFoundError:
            if not chain:
                raise
            tags = store.run_tags(run_id) if run_id else {}
            chain.append(LineageEntry(model, number, step, None, run_id, exists=False, git_commit=tags.get(T.GIT_COMMIT),
                                      git_dirty=tags.get(T.GIT_DIRTY), config_digest=tags.get(T.CONFIG_DIGEST),
                                      dataset_digest=tags.get(T.DATASET_DIGEST)))  # fmt: skip
            link = _parent(tags)  # the run that trained the deleted version says where it came from
            continue
        tags = {**_files_tags(store, v), **v.tags}  # lineage is on the LoggedModel (older releases: the version)
        chain.append(LineageEntry(v.name, v.version, v.step, v.kind, v.run_id, exists=True, created_ms=v.created_ms,
                                  git_commit=tags.get(T.GIT_COMMIT), git_dirty=tags.get(T.GIT_DIRTY),
                                  config_digest=tags.get(T.CONFIG_DIGEST), dataset_digest=tags.get(T.DATASET_DIGEST),
                                  imported_from=tags.get(T.IMPORTED_FROM)))  # fmt: skip
        link = _parent(tags)
    return chain
