"""Fetching a version's dependency weights (:func:`resolve_dependency`) and the per-user cache
(issue 21, point 3); storing them and the records are :mod:`.dependencies`'.

A local file is used only if its sha256 matches the record (hashed every time: it is anyone's
file), and, for a record with companions (:data:`~.dependencies.COMPANIONS`: the vocoder's
``config.json``), only if each companion beside it matches too: one there with other bytes is
refused (the file and both digests named), one absent sends the record to the cache, so that
the file and its companions come from one place.

The cache (:func:`cache_root`)
    ``weights/<sha256>/<file>`` for a record without companions; with companions
    ``weights/<sha256>-<12 hex>/`` (:func:`cache_folder`: the first 12 hex digits of the sha256
    of the record's companions in their canonical form, :attr:`DependencyRecord.companions_tag`),
    holding the file and its companions, so that two ``config.json`` of the same weights never
    share a folder. A download goes into a temporary folder beside it, is verified (sha256 and
    size of every file), then renamed into place, the companions first and the file last (the
    file's rename is the commit point: two processes at once both end with good files), then a
    sidecar ``<file>.verified`` is written holding the sha256, size, inode and mtime_ns the
    file (and each companion) had once verified. A cached folder whose stats still match its
    sidecar is used without hashing: only mlflow-ddsp writes the cache, always by rename, so a
    file replaced or rewritten there has another inode or mtime; what this does not catch is
    bit rot on the disk itself, which hashing on each use (about 0.25 s for 360 MB from the page
    cache, the disk's read time when cold) would, at that cost on every start of ``serve`` or
    ``infer``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .. import tags as T
from ..errors import CheckpointIntegrityError, CheckpointNotFoundError
from ..store import RegistryStore
from .dependencies import ROLES, DependencyRecord, companions_beside
from .files import sha256_file

__all__ = ["CACHE_ENV", "cache_root", "cache_folder", "resolve_dependency"]

_MARKER = ".verified"
CACHE_ENV = "MLFLOW_DDSP_CACHE"


def cache_root() -> Path:
    """``$MLFLOW_DDSP_CACHE``, else ``$XDG_CACHE_HOME/mlflow-ddsp``, else ``~/.cache/mlflow-ddsp``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlflow-ddsp"


def cache_folder(record: DependencyRecord) -> Path:
    """``<cache>/weights/<sha256>`` (no companions) or ``<cache>/weights/<sha256>-<12 hex>``: where
    ``record``'s file (and its companions) are cached."""
    if not record.companions:
        return cache_root() / "weights" / record.sha256
    key = hashlib.sha256(record.companions_tag.encode()).hexdigest()[:12]
    return cache_root() / "weights" / f"{record.sha256}-{key}"


def _stat_key(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns}


def _marker_doc(path: Path, record: DependencyRecord) -> dict:
    """What the sidecar of a verified ``path`` holds; a record without companions: as before them.
    Raises OSError: a file is missing."""
    doc = {"sha256": record.sha256, **_stat_key(path)}
    if record.companions:
        doc["companions"] = {c.file: _stat_key(path.parent / c.file) for c in record.companions}
    return doc


def _cached(path: Path, record: DependencyRecord) -> bool:
    """Whether ``path`` (and its companions) is a cached copy verified as ``record`` and unchanged since."""
    try:
        marker = json.loads(path.with_name(path.name + _MARKER).read_text())
        sizes = [marker["size"]] + [marker["companions"][c.file]["size"] for c in record.companions]
        expected = [record.size] + [c.size for c in record.companions]
        return marker == _marker_doc(path, record) and sizes == expected
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _mark_verified(path: Path, record: DependencyRecord) -> None:
    marker = path.with_name(path.name + _MARKER)
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_marker_doc(path, record)))
    os.replace(tmp, marker)


def _mismatch(record: DependencyRecord, where: str, found: str) -> CheckpointIntegrityError:
    return CheckpointIntegrityError(
        f"{record.role} weights {where} have sha256 {found[:12]}, the version was trained with "
        f"{record.sha256[:12]}; remove the file or point {ROLES[record.role]} at the right one"
    )


def _download(store: RegistryStore, record: DependencyRecord, folder: Path) -> Path | None:
    """Download ``record`` from the store into ``folder/<file>`` with its companions beside
    (verified, renamed: the file last); None if not stored. A record without companions takes
    the file from any stored copy of its digest; one with companions, from a copy tagged with them."""
    candidates = store.find_logged_models(
        [e] if (e := store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)) else [], {T.DEPENDENCY_SHA256: record.sha256}
    )
    ready = [m for m in candidates if m.status == "READY"
             and (not record.companions or m.tags.get(T.DEPENDENCY_COMPANIONS) == record.companions_tag)]  # fmt: skip
    ready.sort(key=lambda m: T.DEPENDENCY_RETIRING in m.tags)
    if not ready:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / record.file
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        ref = store.get_files(ready[0].model_id)
        store.download(ref, [name for name, _, _ in record.parts], tmp)
        for name, sha256, size in record.parts:
            got = sha256_file(Path(tmp) / name, progress=True)
            if (got.sha256, got.size) != (sha256, size):
                raise CheckpointIntegrityError(
                    f"{record.role} weights' {name} downloaded from LoggedModel {ref.model_id} has sha256 "
                    f"{got.sha256[:12]} ({got.size} bytes), expected {sha256[:12]} ({size} bytes); the stored copy is damaged"
                )
        for name, _, _ in record.parts:  # the companions first: the file's rename is the commit point
            os.replace(Path(tmp) / name, folder / name)
    _mark_verified(target, record)
    return target


def _verified_in_place(cached: Path, record: DependencyRecord) -> bool:
    """A cached copy without a (matching) sidecar: hashed once, every file; marked if all match."""
    found = sha256_file(cached, progress=True)
    if (found.sha256, found.size) != (record.sha256, record.size):
        return False
    for c in record.companions:
        beside = cached.parent / c.file
        if not beside.is_file():
            return False
        found = sha256_file(beside)
        if (found.sha256, found.size) != (c.sha256, c.size):
            return False
    _mark_verified(cached, record)
    return True


def resolve_dependency(store: RegistryStore, record: DependencyRecord, *, local: Path | None = None) -> Path:
    """A local path holding exactly ``record``'s bytes, with its companions beside: ``local`` if
    given, present and matching (companions too); else the per-user cache; else downloaded from
    the store into the cache (module docstring).

    Raises:
        CheckpointIntegrityError: ``local`` exists with other bytes, or a companion beside it
            does (the file and both digests named, 12 hex), or the stored copy does not match.
        CheckpointNotFoundError: the file is nowhere (role, digest and how to provide it).
    """
    if local is not None and Path(local).is_file():
        found = sha256_file(local, progress=True)
        if found.sha256 != record.sha256:
            raise _mismatch(record, str(local), found.sha256)
        if companions_beside(record, local):
            return Path(local)
        # the right weights without their companions here: the file and its companions from one place
    folder = cache_folder(record)
    cached = folder / record.file
    if _cached(cached, record):
        return cached
    if cached.is_file() and _verified_in_place(cached, record):
        return cached
    downloaded = _download(store, record, folder)
    if downloaded is None:
        beside = "".join(f" with {c.file}" for c in record.companions)
        raise CheckpointNotFoundError(
            f"{record.role} weights sha256 {record.sha256[:12]} ({record.file}{beside}) are neither here nor in "
            f"{store.tracking_uri}'s experiment {T.DEPENDENCY_EXPERIMENT!r}; run `mlflow-ddsp attach-dependencies` "
            f"from a machine that has the file, or name it with {ROLES[record.role]}"
        )
    return downloaded
