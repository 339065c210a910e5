"""The weight files a version depends on (content encoder, f0 network, vocoder): stored once
per tracking store, fetched, verified and cached where they are used (issue 21).

Where they live
    One experiment per tracking store, ``mlflow-ddsp dependencies``
    (:data:`~mlflow_ddsp.tags.DEPENDENCY_EXPERIMENT`), holds one LoggedModel per distinct
    file, named ``<role>-<sha256[:12]>``, tagged with its role, sha256, size and original
    file name (``mlflow_ddsp.dependency.*``); the file is its artifact, beside the files that
    must sit beside it (its companions, :data:`COMPANIONS`: the vocoder's ``config.json``),
    listed with their digests in the tag ``mlflow_ddsp.dependency.companions``. The UI lists
    every stored weight as a row of that experiment's Models tab; basic-auth permissions
    are per experiment, so READ on it lets a user fetch and EDIT is needed to add; a
    LoggedModel is PENDING until its bytes are verified, so a half-upload is visible and
    never used. A checkpoint records what it depends on as :class:`DependencyRecord` s in
    its manifest and as the tag ``mlflow_ddsp.dependencies`` (:func:`dependencies_tag`)
    on its LoggedModel: that tag is what gc keeps
    (:mod:`.dependency_gc`, which also says how gc and a concurrent save stay safe).

Storing once (:func:`store_dependency`), its commit order and crash points
    1. a READY, unmarked LoggedModel with the file's sha256 and the record's companions exists:
       use it, upload nothing;
    2. create the LoggedModel PENDING                      -> ``dependency_after_create``
    3. upload the companions, then the file                 -> ``dependency_after_upload``
    4. verify the sizes the artifact store lists            -> ``dependency_after_verify``
    5. finalize it READY: the commit point                  -> ``dependency_after_finalize``
    A crash before 5 leaves a PENDING LoggedModel that nothing uses (resolution reads READY
    ones only, the next store creates a fresh one) and that gc
    (:func:`~.dependency_gc.collect_dependencies`) deletes once older than its grace (``pending_grace_s``, 1 hour: a live upload is younger).
    The points are :mod:`.faults`' (``MLFLOW_DDSP_CRASH_AT=dependency_after_upload``).

Fetching and the cache
    :mod:`.dependency_cache` (:func:`~.dependency_cache.resolve_dependency`), under
    :func:`~.dependency_cache.cache_root`.

Identity
    A record's ``sha256`` is its file's digest, with or without companions: what users compare
    with release digests, what ``role:sha256`` tags and gc's references name. Its companions
    make it another record (two ``config.json`` of the same weights are two records, stored
    and cached apart); records written before companions (none) read and write as before.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .. import tags as T
from ..errors import CheckpointIntegrityError, CheckpointSaveError, ConfigError
from ..store import LoggedModelRef, RegistryStore
from ..store.records import QueueModel
from .faults import crash_point
from .files import sha256_file

__all__ = [
    "ROLES",
    "COMPANIONS",
    "DEPENDENCY_CRASH_POINTS",
    "PENDING_GRACE_S",
    "Companion",
    "DependencyRecord",
    "companions_beside",
    "dependencies_tag",
    "parse_dependencies_tag",
    "store_dependency",
    "confirm_dependencies",
]

#: role -> the config key that names such a file locally (said in "missing" errors)
ROLES = {"encoder": "data.encoder_ckpt", "f0": "data.f0_ckpt", "vocoder": "vocoder.ckpt"}
#: role -> the files that must sit beside its file (its companions), recorded, stored, cached and
#: checked with it. The vocoder's config.json: upstream's NSF-HiFiGAN loader reads it from the
#: weights' folder (DDSP-SVC nsf_hifigan/models.py, load_model:
#: ``os.path.join(os.path.split(model_path)[0], 'config.json')``; here vocoder/nsf_hifigan.py, Vocoder).
COMPANIONS: dict[str, tuple[str, ...]] = {"vocoder": ("config.json",)}
DEPENDENCY_CRASH_POINTS = (
    "dependency_after_create",  # LoggedModel PENDING, nothing uploaded
    "dependency_after_upload",  # bytes uploaded, size not yet verified
    "dependency_after_verify",  # listed size verified, still PENDING
    "dependency_after_finalize",  # READY: stored
)
PENDING_GRACE_S = 3600.0  # a PENDING dependency older than this is a dead upload: gc deletes it
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


@dataclass(frozen=True)
class Companion:
    """A file that must sit beside a dependency's file (:data:`COMPANIONS`), by its bytes.

    Attributes:
        file: its plain file name (``config.json``), the same beside the file, in the store and the cache.
        sha256: 64 lowercase hex digits of its bytes.
        size: its size in bytes.
    Raises:
        ConfigError: a name, digest or size outside these rules (one line).
    """

    file: str
    sha256: str
    size: int

    def __post_init__(self):
        if not _plain_name(self.file):
            raise ConfigError(f"dependency companion file {self.file!r} is not a plain file name")
        if not _SHA256.fullmatch(str(self.sha256)):
            raise ConfigError(f"dependency companion {self.file}: sha256 {self.sha256!r} is not 64 lowercase hex digits")
        if not isinstance(self.size, int) or self.size < 0:
            raise ConfigError(f"dependency companion {self.file}: size {self.size!r} is not a byte count (an int >= 0)")

    def to_dict(self) -> dict:
        return {"file": self.file, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class DependencyRecord:
    """One weight file a version depends on, by its bytes (what a checkpoint's manifest carries).

    Attributes:
        role: ``encoder``, ``f0`` or ``vocoder`` (:data:`ROLES`).
        sha256: 64 lowercase hex digits of the file's bytes.
        size: its size in bytes.
        file: its original file name (no folder), the stored artifact's name.
        companions: the files that must sit beside it (:data:`COMPANIONS`), sorted by name;
            ``()`` for a role without them and for records written before companions.
    Raises:
        ConfigError: a role, digest, size or file name outside these rules (one line).
    """

    role: str
    sha256: str
    size: int
    file: str
    companions: tuple[Companion, ...] = ()

    def __post_init__(self):
        if self.role not in ROLES:
            raise ConfigError(f"dependency role {self.role!r} is not one of {', '.join(ROLES)}")
        if not _SHA256.fullmatch(str(self.sha256)):
            raise ConfigError(f"dependency {self.role}: sha256 {self.sha256!r} is not 64 lowercase hex digits")
        if not isinstance(self.size, int) or self.size < 0:
            raise ConfigError(f"dependency {self.role}: size {self.size!r} is not a byte count (an int >= 0)")
        if not _plain_name(self.file):
            raise ConfigError(f"dependency {self.role}: file {self.file!r} is not a plain file name")
        companions = tuple(sorted(self.companions, key=lambda c: c.file))
        names = [c.file for c in companions]
        if not all(isinstance(c, Companion) for c in companions) or len(set(names)) != len(names) or self.file in names:
            raise ConfigError(f"dependency {self.role}: companions {names} must be distinct files beside {self.file}")
        object.__setattr__(self, "companions", companions)

    @property
    def label(self) -> str:
        """``encoder weights 0123456789ab`` (role and 12 hex digits), for messages."""
        return f"{self.role} weights {self.sha256[:12]}"

    @property
    def parts(self) -> list[tuple[str, str, int]]:
        """``(file name, sha256, size)`` of each companion, then of the file: the order they are
        uploaded, verified and renamed into the cache in (the file last: its rename commits)."""
        return [(c.file, c.sha256, c.size) for c in self.companions] + [(self.file, self.sha256, self.size)]

    @property
    def total_size(self) -> int:
        """Bytes of the file and its companions: what its stored copy holds."""
        return sum(size for _, _, size in self.parts)

    @property
    def files(self) -> str:
        """``model + config.json``: the file and its companions, for messages."""
        return " + ".join([self.file, *(c.file for c in self.companions)])

    @property
    def companions_tag(self) -> str:
        """The companions' canonical form, ``config.json:<sha256>:<size>[,...]`` (``""``: none): the
        tag ``mlflow_ddsp.dependency.companions`` of its stored copy, and its cache folder's key."""
        return ",".join(f"{c.file}:{c.sha256}:{c.size}" for c in self.companions)

    def to_dict(self) -> dict:
        """What a manifest holds; ``companions`` only when there are some (older records: unchanged)."""
        doc = {"role": self.role, "sha256": self.sha256, "size": self.size, "file": self.file}
        if self.companions:
            doc["companions"] = [c.to_dict() for c in self.companions]
        return doc

    @classmethod
    def from_dict(cls, doc: dict) -> "DependencyRecord":
        """Raises ConfigError: a key missing or a value outside the rules."""
        try:
            listed = doc.get("companions") or []
            if not isinstance(listed, list):
                raise TypeError("companions is not a list")
            companions = tuple(Companion(str(c["file"]), str(c["sha256"]), int(c["size"])) for c in listed)
            return cls(str(doc["role"]), str(doc["sha256"]), int(doc["size"]), str(doc["file"]), companions)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(
                f"dependency record {doc!r} needs role, sha256, size and file, and companions of file, sha256 and "
                f"size ({exc})"
            ) from exc

    @classmethod
    def of_model(cls, model: QueueModel) -> "DependencyRecord":
        """The record a stored dependency LoggedModel holds (its ``mlflow_ddsp.dependency.*`` tags).

        Raises:
            ConfigError: a malformed companions tag.
        """
        t = model.tags
        companions = []
        for entry in filter(None, t.get(T.DEPENDENCY_COMPANIONS, "").split(",")):
            name, _, rest = entry.partition(":")
            digest, _, size = rest.partition(":")
            if not size.isdigit():
                raise ConfigError(f"{T.DEPENDENCY_COMPANIONS} entry {entry!r} is not file:sha256:size")
            companions.append(Companion(name, digest, int(size)))
        return cls(t[T.DEPENDENCY_ROLE], t[T.DEPENDENCY_SHA256], int(t[T.DEPENDENCY_SIZE]), t[T.DEPENDENCY_FILE],
                   tuple(companions))  # fmt: skip

    @classmethod
    def of_file(
        cls, role: str, path: str | os.PathLike, *, digest: tuple[str, int] | None = None, progress: bool = False
    ) -> "DependencyRecord":
        """The record of the local file ``path`` as a dependency of ``role``, with each companion
        :data:`COMPANIONS` names for the role hashed where it must be: beside ``path``.

        Args:
            digest: ``(sha256, size)`` of ``path`` already known (e.g. as preprocess recorded it):
                ``path`` itself is then not read (it may be absent).
        Raises:
            ConfigError: a companion is not beside ``path`` (one line naming it); a bad role.
            OSError: ``path`` cannot be read (when it is hashed here).
        """
        path = Path(path)
        if digest is None:
            found = sha256_file(path, progress=progress)
            digest = (found.sha256, found.size)
        companions = []
        for name in COMPANIONS.get(role, ()):
            beside = path.parent / name
            if not beside.is_file():
                raise ConfigError(
                    f"{ROLES.get(role, role)}={path}: no {name} beside it ({beside}); the {role} weights are used "
                    f"with the {name} released with them: put it there"
                )
            found = sha256_file(beside)
            companions.append(Companion(name, found.sha256, found.size))
        return cls(role, digest[0], int(digest[1]), path.name, tuple(companions))


def companions_beside(record: DependencyRecord, path: str | os.PathLike, *, setting: str | None = None) -> bool:
    """Whether every companion of ``record`` sits beside ``path`` with its recorded bytes (each
    hashed: anyone's files); False when one is absent; True for a record without companions.

    Args:
        setting: what names ``path`` (``--vocoder-ckpt``), for the advice; default the role's config key.
    Raises:
        CheckpointIntegrityError: one is there with other bytes (one line: the file, both digests).
    """
    for c in record.companions:
        beside = Path(path).parent / c.file
        if not beside.is_file():
            return False
        found = sha256_file(beside)
        if found.sha256 != c.sha256:
            raise CheckpointIntegrityError(
                f"{c.file} beside the {record.role} weights {path} has sha256 {found.sha256[:12]}, the version was "
                f"trained with {c.sha256[:12]}; "
                + (f"point {setting} at weights with their own {c.file} beside them" if setting else
                   f"move that {c.file} away to use the version's own from the store, or name weights that have "
                   f"the right {c.file} beside them")
            )
    return True


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
def _stored(store: RegistryStore, experiment_id: str | None, record: DependencyRecord) -> list[QueueModel]:
    """READY, unmarked dependency LoggedModels holding ``record``'s file and companions, oldest first."""
    if experiment_id is None:
        return []
    found = store.find_logged_models([experiment_id], {T.DEPENDENCY_SHA256: record.sha256})
    return [m for m in found if m.status == "READY" and T.DEPENDENCY_RETIRING not in m.tags
            and m.tags.get(T.DEPENDENCY_COMPANIONS, "") == record.companions_tag]  # fmt: skip


def _check_local(path: str | os.PathLike, record: DependencyRecord) -> list[tuple[str, Path]]:
    """``[(artifact name, local file)]`` to upload, the companions first, once each holds ``record``'s bytes.

    Raises:
        CheckpointIntegrityError: a file's bytes are not the record's (both digests named).
    """
    files = [(name, Path(path) if name == record.file else Path(path).parent / name, sha256, size)
             for name, sha256, size in record.parts]  # fmt: skip
    for name, local, sha256, size in files:
        found = sha256_file(local, progress=True) if local.is_file() else None
        if found is None or (found.sha256, found.size) != (sha256, size):
            now = f"has sha256 {found.sha256[:12]} ({found.size} bytes)" if found else "is gone"
            what = f"{record.role} weights {path}" if name == record.file else f"{name} beside {record.role} weights {path}"
            raise CheckpointIntegrityError(
                f"{what} {now}, expected {sha256[:12]} ({size} bytes); the file changed since it was recorded"
            )
    return [(name, local) for name, local, _, _ in files]


def store_dependency(
    store: RegistryStore, path: str | os.PathLike | None, record: DependencyRecord, *, step: int = 0
) -> LoggedModelRef:
    """Store the file at ``path`` as ``record`` once in this tracking store; return where it lives.

    Nothing is uploaded if a READY, unmarked copy exists. Otherwise: commit order and crash
    points in the module docstring. ``path`` None: the file is not on this machine (a
    spooled save another process wrote), so it can only be found, not stored.
    ``step``: the save's step, where its crash points fire (``dependency_after_upload@10``).

    Raises:
        CheckpointIntegrityError: ``path``'s bytes are not ``record``'s (both digests named).
        PermissionDeniedError: the user lacks EDIT on the dependencies experiment (one line).
        CheckpointSaveError: the artifact store lists another size than was uploaded; or
            ``path`` is None and the store holds no copy.
    """
    experiment_id = store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)
    existing = _stored(store, experiment_id, record)
    if existing:
        return store.get_files(existing[0].model_id)
    if path is None:
        raise CheckpointSaveError(
            f"{record.label} is not in the store's dependencies and not named on this machine; "
            f"train or run `mlflow-ddsp attach-dependencies` on the machine that has the file"
        )
    uploads = _check_local(path, record)
    experiment_id = experiment_id or store.experiment_id(T.DEPENDENCY_EXPERIMENT)
    where = f"experiment {T.DEPENDENCY_EXPERIMENT!r}"
    tags = {T.DEPENDENCY_ROLE: record.role, T.DEPENDENCY_SHA256: record.sha256,
            T.DEPENDENCY_SIZE: str(record.size), T.DEPENDENCY_FILE: record.file,
            **({T.DEPENDENCY_COMPANIONS: record.companions_tag} if record.companions else {})}  # fmt: skip
    ref = store.create_logged_model(
        experiment_id, f"{record.role}-{record.sha256[:12]}", tags,
        what=f"add {record.label} to the store's dependencies", where=where,
    )  # fmt: skip
    crash_point("dependency_after_create", step)
    with tempfile.TemporaryDirectory(prefix="mlflow-ddsp-dependency-") as tmp:
        for name, local in uploads:
            staged = Path(tmp) / name  # the artifact takes the recorded name, whatever the local one
            os.symlink(local.resolve(), staged)
            store.upload(ref, staged)
    crash_point("dependency_after_upload", step)
    listed = store.list_sizes(ref)
    for name, _, size in record.parts:
        if listed.get(name) != size:
            raise CheckpointSaveError(
                f"{record.label}: the artifact store lists {name} at {listed.get(name)} bytes after upload, "
                f"expected {size}; LoggedModel {ref.model_id} stays PENDING (gc removes it)"
            )
    crash_point("dependency_after_verify", step)
    store.finalize(ref)
    crash_point("dependency_after_finalize", step)
    return ref


def confirm_dependencies(
    store: RegistryStore, stored: Sequence[tuple[str | os.PathLike, DependencyRecord]], *, step: int = 0
) -> list[LoggedModelRef]:
    """Step (3) of a save: once its checkpoint's LoggedModel carries the dependencies tag,
    store again (:func:`store_dependency`) each dependency that gc has marked or deleted
    meanwhile; a READY, unmarked one is left as it is. ``stored``: ``(local path, record)``;
    ``step``: the save's step, where a re-upload's crash points fire."""
    return [store_dependency(store, path, record, step=step) for path, record in stored]

