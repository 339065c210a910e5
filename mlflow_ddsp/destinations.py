"""Where a command writes its results, checked before the work that produces them.

A conversion of a long clip, a comparison of several versions or an export
downloads and computes for a while; a destination that cannot be written (a
folder given where a file belongs, a parent that is a file, a name too long, a
folder without write permission, a place where nothing can be created at all
such as ``/proc``) must be refused first, in one line, so that nothing is
computed in vain and nothing partial is left behind. A file the user names that
exists already is replaced: running a conversion again must work.

The checks are made on the nearest existing ancestor of the destination: the
folders below it are created by the writer. Whether something can be created
there is tried, not guessed: a probe (a hidden, uniquely named empty file, or a
folder where the writer must create folders) is created in that ancestor and
removed at once. ``os.access`` alone is not enough: it says yes to root, and
knows nothing of read-only mounts or pseudo file systems. An existing file is
opened for appending (nothing written, its bytes and times unchanged).
Limits: NAME_MAX (255 bytes per name) and PATH_MAX (4096 bytes with the
terminating NUL) of Linux; macOS's are the same or larger.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import ConfigError

__all__ = ["check_output_file", "check_output_dir", "NAME_MAX", "PATH_MAX"]

NAME_MAX = 255  # bytes in one file or folder name (ext4, xfs, btrfs, APFS, tmpfs)
PATH_MAX = 4095  # bytes in a whole path, without the terminating NUL (Linux's PATH_MAX is 4096 with it)
_PROBE = ".mlflow-ddsp-write-probe-"


def _nearest_existing(path: Path) -> Path:
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return ancestor


def _check_names(path: Path, what: str) -> None:
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise ConfigError(f"{what} {str(path)[:60]}...: a name in it is longer than {NAME_MAX} bytes")
    size = len(os.fsencode(str(path.absolute())))
    if size > PATH_MAX:
        raise ConfigError(f"{what} {str(path)[:60]}...: the path is {size} bytes, longer than {PATH_MAX} bytes; "
                          "choose a shorter one")  # fmt: skip


def _probe(folder: Path, path: Path, what: str, *, as_folder: bool) -> None:
    """Create and remove a uniquely named entry in ``folder``: the only sure test that the writer can create there."""
    try:
        if as_folder:
            os.rmdir(tempfile.mkdtemp(prefix=_PROBE, dir=folder))
        else:
            fd, name = tempfile.mkstemp(prefix=_PROBE, dir=folder)
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot create anything in {folder} ({exc.strerror or exc}); "
                          "choose a folder you can write to")  # fmt: skip


def _check_creatable(path: Path, what: str, *, folder: bool) -> None:
    """``path`` does not exist: its nearest existing ancestor must be a folder the writer can create in."""
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise ConfigError(f"{what} {path}: {ancestor} is a file, so no folder can be made below it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: no permission to write in {ancestor}")
    # The writer creates a file in the parent, or folders down from the ancestor first.
    _probe(ancestor, path, what, as_folder=folder or ancestor != path.parent)


def _check_existing_file(path: Path, what: str) -> None:
    """``path`` exists and is not a folder: it must be a file the writer may replace."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        return  # a device such as /dev/null, or a FIFO: written as the user asks, not probed (opening may block)
    if not os.access(path, os.W_OK):
        raise ConfigError(f"{what} {path} exists and is not writable")
    try:
        with open(path, "ab"):  # append mode: nothing is written, nothing truncated
            pass
    except OSError as exc:
        raise ConfigError(f"{what} {path} exists and cannot be replaced ({exc.strerror or exc})") from None


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Return ``path`` if a file can be written there: created (its folders too) or, if it exists, replaced.

    Nothing is left behind: the probe the check creates is removed, an existing
    file is not changed.

    Raises:
        ConfigError: ``path`` is a folder, lies below a file, has a name longer
            than 255 bytes or is longer than 4095 bytes, its nearest existing
            folder is not writable or nothing can be created there (``/proc``,
            a read-only mount), or it is an existing file that cannot be written.
    """
    path = Path(path)
    _check_names(path, what)
    try:
        if path.is_dir():
            raise ConfigError(f"{what} {path} is a folder; give a file name, e.g. {path / 'converted.wav'}")
        if path.exists():
            _check_existing_file(path, what)
        else:
            _check_creatable(path, what, folder=False)
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be written: {exc.strerror or exc}") from exc
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output folder", files: Iterable[str] = ()) -> Path:
    """Return ``path`` if it is, or can be created as, a folder the writer can create files in.

    ``files`` are the names the caller will write into it: each that exists
    already must be a file that can be replaced (never a folder).

    Raises:
        ConfigError: ``path`` is a file, lies below a file, has a name longer
            than 255 bytes or is longer than 4095 bytes, nothing can be created in
            it or in its nearest existing folder, or one of ``files`` in it is a
            folder or a file that cannot be written.
    """
    path = Path(path)
    _check_names(path, what)
    try:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{what} {path} is a file, not a folder")
        if path.is_dir():
            if not os.access(path, os.W_OK | os.X_OK):
                raise ConfigError(f"{what} {path}: no permission to write in it")
            _probe(path, path, what, as_folder=False)
            for name in files:
                target = path / name
                if target.is_dir():
                    raise ConfigError(f"{what} {path}: {target} is a folder; it is where a file of that name is "
                                      "written: move it away or choose another folder")  # fmt: skip
                if target.exists():
                    _check_existing_file(target, what)
        else:
            _check_creatable(path, what, folder=True)
            for name in files:
                _check_names(path / name, what)
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be written: {exc.strerror or exc}") from exc
    return path
