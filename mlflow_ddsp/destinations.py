"""Where a command writes its results, checked before the work that produces them.

A conversion of a long clip, a comparison of several versions or an export
downloads and computes for a while; a destination that cannot be written (a
folder given where a file belongs, a parent that is a file, a name too long, a
folder without write permission) must be refused first, in one line, so that
nothing is computed in vain and nothing partial is left behind.

The checks are made on the nearest existing ancestor of the destination: the
folders below it are created by the writer. Permission is checked with
``os.access`` (meaningful for non-root users; root passes it, and a read-only
file system is still caught when the writer opens the file).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

__all__ = ["check_output_file", "check_output_dir"]


def _nearest_existing(path: Path) -> Path:
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return ancestor


def _check_names(path: Path, what: str) -> None:
    for part in path.parts:
        if len(os.fsencode(part)) > 255:  # NAME_MAX of every common Linux/macOS file system
            raise ConfigError(f"{what} {str(path)[:60]}...: a name in it is longer than 255 bytes")


def _check_ancestor(path: Path, what: str) -> None:
    ancestor = _nearest_existing(path.parent if not path.exists() else path)
    if not ancestor.is_dir():
        raise ConfigError(f"{what} {path}: {ancestor} is a file, so no folder can be made below it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: no permission to write in {ancestor}")


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Return ``path`` if a file can be written there (its folders may be created).

    Raises:
        ConfigError: ``path`` is a folder, lies below a file, is too long for the
            file system, or its nearest existing folder is not writable.
    """
    path = Path(path)
    _check_names(path, what)
    try:
        if path.is_dir():
            raise ConfigError(f"{what} {path} is a folder; give a file name, e.g. {path / 'converted.wav'}")
        if path.exists() and not os.access(path, os.W_OK):
            raise ConfigError(f"{what} {path} exists and is not writable")
        _check_ancestor(path, what)
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be written: {exc.strerror or exc}") from exc
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Return ``path`` if it is, or can be created as, a writable folder.

    Raises:
        ConfigError: ``path`` is a file, lies below a file, is too long for the
            file system, or the nearest existing folder is not writable.
    """
    path = Path(path)
    _check_names(path, what)
    try:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{what} {path} is a file, not a folder")
        if path.is_dir():
            if not os.access(path, os.W_OK | os.X_OK):
                raise ConfigError(f"{what} {path}: no permission to write in it")
        else:
            _check_ancestor(path, what)
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be written: {exc.strerror or exc}") from exc
    return path
