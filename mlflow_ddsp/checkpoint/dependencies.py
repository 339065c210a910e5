"""The weight files a version depends on (content encoder, f0 network, vocoder): stored once
per tracking store, fetched, verified and cached where they are used (issue 21).

Where they live
    One experiment per tracking store, ``mlflow-ddsp dependencies``
    (:data:`~mlflow_ddsp.tags.DEPENDENCY_EXPERIMENT`), holds one LoggedModel per distinct
    file, named ``<role>-<sha256[:12]>``, tagged with its role, sha256, size and original
    file name (``mlflow_ddsp.dependency.*``); the file is its one artifact. The UI lists
    every stored weight as a row of that experiment's Models tab; basic-auth permissions
    are per experiment, so READ on it lets a user fetch and EDIT is needed to add; a
    LoggedModel is PENDING until its bytes are verified, so a half-upload is visible and
    never used. A checkpoint records what it depends on as :class:`DependencyRecord` s in
    its manifest and as the tag ``mlflow_ddsp.dependencies`` (:func:`dependencies_tag`)
    on its LoggedModel: that tag is what gc keeps
    (:mod:`.dependency_gc`, which also says how gc and a concurrent save stay safe).

Storing once (:func:`store_dependency`), its commit order and crash points
    1. a READY, unmarked LoggedModel with the file's sha256 exists: use it, upload nothing;
    2. create the LoggedModel PENDING                      -> ``dependency_after_create``
    3. upload the file                                      -> ``dependency_after_upload``
    4. verify the size the artifact store lists             -> ``dependency_after_verify``
    5. finalize it READY: the commit point                  -> ``dependency_after_finalize``
    A crash before 5 leaves a PENDING LoggedModel that nothing uses (resolution reads READY
    ones only, the next store creates a fresh one) and that gc
    (:func:`~.dependency_gc.collect_dependencies`) deletes once older than its grace (``pending_grace_s``, 1 hour: a live upload is younger).
    The points are :mod:`.faults`' (``MLFLOW_DDSP_CRASH_AT=dependency_after_upload``).

Fetching (:func:`resolve_dependency`) and the cache
    A local file is used only if its sha256 matches the record (hashed every time: it is
    anyone's file). Otherwise the per-user cache (:func:`cache_root`):
    ``weights/<sha256>/<file>``, filled by a download into a temporary folder beside it,
    verified (sha256 and size), then renamed into place (atomic: two processes at once
    both end with one good file), then a sidecar ``<file>.verified`` is written holding
    the sha256, size, inode and mtime_ns the file had once verified. A cached file whose
    stat still matches its sidecar is used without hashing: only mlflow-ddsp writes the
    cache, always by rename, so a file replaced or rewritten there has another inode or
    mtime; what this does not catch is bit rot on the disk itself, which hashing on each
    use (about 0.25 s for 360 MB from the page cache, the disk's read time when cold)
    would, at that cost on every start of ``serve`` or ``infer``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .. import tags as T
from ..errors import CheckpointIntegrityError, CheckpointNotFoundError, CheckpointSaveError, ConfigError
from ..store import LoggedModelRef, RegistryStore
from ..store.records import QueueModel
from .faults import crash_point
from .files import sha256_file

__all__ = [
    "ROLES",
    "CACHE_ENV",
    "DEPENDENCY_CRASH_POINTS",
    "PENDING_GRACE_S",
    "DependencyRecord",
    "dependencies_tag",
    "parse_dependencies_tag",
    "store_dependency",
    "confirm_dependencies",
    "resolve_dependency",
    "cache_root",
]

#: role -> the config key that names such a file locally (said in "missing" errors)
ROLES = {"encoder": "data.encoder_ckpt", "f0": "data.f0_ckpt", "vocoder": "vocoder.ckpt"}
CACHE_ENV = "MLFLOW_DDSP_CACHE"
DEPENDENCY_CRASH_POINTS = (
    "dependency_after_create",  # LoggedModel PENDING, nothing uploaded
    "dependency_after_upload",  # bytes uploaded, size not yet verified
    "dependency_after_verify",  # listed size verified, still PENDING
    "dependency_after_finalize",  # READY: stored
)
PENDING_GRACE_S = 3600.0  # a PENDING dependency older than this is a dead upload: gc deletes it
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MARKER = ".verified"


@dataclass(frozen=True)
class DependencyRecord:
    """One weight file a version depends on, by its bytes (what a checkpoint's manifest carries).

    Attributes:
        role: ``encoder``, ``f0`` or ``vocoder`` (:data:`ROLES`).
        sha256: 64 lowercase hex digits of the file's bytes.
        size: its size in bytes.
        file: its original file name (no folder), the stored artifact's name.
    Raises:
        ConfigError: a role, digest, size or file name outside these rules (one line).
    """

    role: str
    sha256: str
    size: int
    file: str

    def __post_init__(self):
        if self.role not in ROLES:
            raise ConfigError(f"dependency role {self.role!r} is not one of {', '.join(ROLES)}")
        if not _SHA256.fullmatch(str(self.sha256)):
            raise ConfigError(f"dependency {self.role}: sha256 {self.sha256!r} is not 64 lowercase hex digits")
        if not isinstance(self.size, int) or self.size < 0:
            raise ConfigError(f"dependency {self.role}: size {self.size!r} is not a byte count (an int >= 0)")
        if not self.file or self.file in (".", "..") or "/" in self.file or "\\" in self.file:
            raise ConfigError(f"dependency {self.role}: file {self.file!r} is not a plain file name")

    @property
    def label(self) -> str:
        """``encoder weights 0123456789ab`` (role and 12 hex digits), for messages."""
        return f"{self.role} weights {self.sha256[:12]}"

    def to_dict(self) -> dict:
        return {"role": self.role, "sha256": self.sha256, "size": self.size, "file": self.file}

    @classmethod
    def from_dict(cls, doc: dict) -> "DependencyRecord":
        """Raises ConfigError: a key missing or a value outside the rules."""
        try:
            return cls(str(doc["role"]), str(doc["sha256"]), int(doc["size"]), str(doc["file"]))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"dependency record {doc!r} needs role, sha256, size and file ({exc})") from exc

    @classmethod
    def of_model(cls, model: QueueModel) -> "DependencyRecord":
        t = model.tags
        return cls(t[T.DEPENDENCY_ROLE], t[T.DEPENDENCY_SHA256], int(t[T.DEPENDENCY_SIZE]), t[T.DEPENDENCY_FILE])


def dependencies_tag(records: Iterable[DependencyRecord]) -> str:
    """The value of a checkpoint's ``mlflow_ddsp.dependencies`` tag: ``role:sha256,...``."""
    return ",".join(f"{r.role}:{r.sha256}" for r in records)


def parse_dependencies_tag(value: str) -> list[tuple[str, str]]:
    """``[(role, sha256), ...]`` of a ``mlflow_ddsp.dependencies`` value (``""``: none).

    Raises:
        ConfigError: an entry that is not ``role:<64 hex>``.
    """
    out = []
    for entry in filter(None, (e.strip() for e in value.split(","))):
        role, _, digest = entry.partition(":")
        if role not in ROLES or not _SHA256.fullmatch(digest):
            raise ConfigError(f"{T.DEPENDENCIES} entry {entry!r} is not role:sha256 (roles: {', '.join(ROLES)})")
        out.append((role, digest))
    return out


# -- storing -------------------------------------------------------------------------------
def _stored(store: RegistryStore, experiment_id: str | None, sha256: str) -> list[QueueModel]:
    """READY, unmarked dependency LoggedModels holding ``sha256``, oldest first."""
    if experiment_id is None:
        return []
    found = store.find_logged_models([experiment_id], {T.DEPENDENCY_SHA256: sha256})
    return [m for m in found if m.status == "READY" and T.DEPENDENCY_RETIRING not in m.tags]


def store_dependency(store: RegistryStore, path: str | os.PathLike | None, record: DependencyRecord) -> LoggedModelRef:
    """Store the file at ``path`` as ``record`` once in this tracking store; return where it lives.

    Nothing is uploaded if a READY, unmarked copy exists. Otherwise: commit order and crash
    points in the module docstring. ``path`` None: the file is not on this machine (a
    spooled save another process wrote), so it can only be found, not stored.

    Raises:
        CheckpointIntegrityError: ``path``'s bytes are not ``record``'s (both digests named).
        PermissionDeniedError: the user lacks EDIT on the dependencies experiment (one line).
        CheckpointSaveError: the artifact store lists another size than was uploaded; or
            ``path`` is None and the store holds no copy.
    """
    experiment_id = store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)
    existing = _stored(store, experiment_id, record.sha256)
    if existing:
        return store.get_files(existing[0].model_id)
    if path is None:
        raise CheckpointSaveError(
            f"{record.label} is not in the store's dependencies and not named on this machine; "
            f"train or run `mlflow-ddsp attach-dependencies` on the machine that has the file"
        )
    found = sha256_file(path, progress=True)
    if (found.sha256, found.size) != (record.sha256, record.size):
        raise CheckpointIntegrityError(
            f"{record.role} weights {path} have sha256 {found.sha256[:12]} ({found.size} bytes), "
            f"expected {record.sha256[:12]} ({record.size} bytes); the file changed since it was recorded"
        )
    experiment_id = experiment_id or store.experiment_id(T.DEPENDENCY_EXPERIMENT)
    where = f"experiment {T.DEPENDENCY_EXPERIMENT!r}"
    tags = {T.DEPENDENCY_ROLE: record.role, T.DEPENDENCY_SHA256: record.sha256,
            T.DEPENDENCY_SIZE: str(record.size), T.DEPENDENCY_FILE: record.file}  # fmt: skip
    ref = store.create_logged_model(
        experiment_id, f"{record.role}-{record.sha256[:12]}", tags,
        what=f"add {record.label} to the store's dependencies", where=where,
    )  # fmt: skip
    crash_point("dependency_after_create", 0)
    with tempfile.TemporaryDirectory(prefix="mlflow-ddsp-dependency-") as tmp:
        staged = Path(tmp) / record.file  # the artifact takes the recorded name, whatever the local one
        os.symlink(Path(path).resolve(), staged)
        store.upload(ref, staged)
    crash_point("dependency_after_upload", 0)
    listed = store.list_sizes(ref).get(record.file)
    if listed != record.size:
        raise CheckpointSaveError(
            f"{record.label}: the artifact store lists {record.file} at {listed} bytes after upload, "
            f"expected {record.size}; LoggedModel {ref.model_id} stays PENDING (gc removes it)"
        )
    crash_point("dependency_after_verify", 0)
    store.finalize(ref)
    crash_point("dependency_after_finalize", 0)
    return ref


def confirm_dependencies(
    store: RegistryStore, stored: Sequence[tuple[str | os.PathLike, DependencyRecord]]
) -> list[LoggedModelRef]:
    """Step (3) of a save: once its checkpoint's LoggedModel carries the dependencies tag,
    store again (:func:`store_dependency`) each dependency that gc has marked or deleted
    meanwhile; a READY, unmarked one is left as it is. ``stored``: ``(local path, record)``."""
    return [store_dependency(store, path, record) for path, record in stored]


# -- fetching and the cache ----------------------------------------------------------------
def cache_root() -> Path:
    """``$MLFLOW_DDSP_CACHE``, else ``$XDG_CACHE_HOME/mlflow-ddsp``, else ``~/.cache/mlflow-ddsp``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlflow-ddsp"


def _stat_key(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns}


def _cached(path: Path, record: DependencyRecord) -> bool:
    """Whether ``path`` is a cached copy verified as ``record`` and unchanged since."""
    try:
        marker = json.loads(path.with_name(path.name + _MARKER).read_text())
        return marker == {"sha256": record.sha256, **_stat_key(path)} and marker["size"] == record.size
    except (OSError, ValueError):
        return False


def _mark_verified(path: Path, record: DependencyRecord) -> None:
    marker = path.with_name(path.name + _MARKER)
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"sha256": record.sha256, **_stat_key(path)}))
    os.replace(tmp, marker)


def _mismatch(record: DependencyRecord, where: str, found: str) -> CheckpointIntegrityError:
    return CheckpointIntegrityError(
        f"{record.role} weights {where} have sha256 {found[:12]}, the version was trained with "
        f"{record.sha256[:12]}; remove the file or point {ROLES[record.role]} at the right one"
    )


def _download(store: RegistryStore, record: DependencyRecord, folder: Path) -> Path | None:
    """Download ``record`` from the store into ``folder/<file>`` (verified, renamed); None if not stored."""
    candidates = store.find_logged_models(
        [e] if (e := store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)) else [], {T.DEPENDENCY_SHA256: record.sha256}
    )
    ready = sorted((m for m in candidates if m.status == "READY"), key=lambda m: T.DEPENDENCY_RETIRING in m.tags)
    if not ready:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / record.file
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        ref = store.get_files(ready[0].model_id)
        store.download(ref, [record.file], tmp)
        got = sha256_file(Path(tmp) / record.file, progress=True)
        if (got.sha256, got.size) != (record.sha256, record.size):
            raise CheckpointIntegrityError(
                f"{record.role} weights downloaded from LoggedModel {ref.model_id} have sha256 {got.sha256[:12]} "
                f"({got.size} bytes), expected {record.sha256[:12]} ({record.size} bytes); the stored copy is damaged"
            )
        os.replace(Path(tmp) / record.file, target)
    _mark_verified(target, record)
    return target


def resolve_dependency(store: RegistryStore, record: DependencyRecord, *, local: Path | None = None) -> Path:
    """A local path holding exactly ``record``'s bytes: ``local`` if given, present and
    matching; else the per-user cache; else downloaded from the store into the cache.

    Raises:
        CheckpointIntegrityError: ``local`` exists with other bytes (both digests named, 12 hex),
            or the stored copy does not match its record.
        CheckpointNotFoundError: the file is nowhere (role, digest and how to provide it).
    """
    if local is not None and Path(local).is_file():
        found = sha256_file(local, progress=True)
        if found.sha256 != record.sha256:
            raise _mismatch(record, str(local), found.sha256)
        return Path(local)
    folder = cache_root() / "weights" / record.sha256
    cached = folder / record.file
    if _cached(cached, record):
        return cached
    if cached.is_file():  # a copy without a (matching) marker: hash it once
        found = sha256_file(cached, progress=True)
        if found.sha256 == record.sha256 and found.size == record.size:
            _mark_verified(cached, record)
            return cached
    downloaded = _download(store, record, folder)
    if downloaded is None:
        raise CheckpointNotFoundError(
            f"{record.role} weights sha256 {record.sha256[:12]} ({record.file}) are neither here nor in "
            f"{store.tracking_uri}'s experiment {T.DEPENDENCY_EXPERIMENT!r}; run `mlflow-ddsp attach-dependencies` "
            f"from a machine that has the file, or name it with {ROLES[record.role]}"
        )
    return downloaded
