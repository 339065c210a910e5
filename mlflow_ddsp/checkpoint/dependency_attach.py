"""A version's dependency records: read (manifest first, then its LoggedModel's tag) and attached
afterwards to versions written before they were recorded (issue 21, point 4).

Where a version's records are
    A version written since issue 21 records its dependencies in its manifest (immutable,
    digest-verified) and, for gc, as the tag ``mlflow_ddsp.dependencies`` (``role:sha256,...``)
    on its LoggedModel. A version written before has neither; ``mlflow-ddsp attach-dependencies``
    gives it the tag only (its manifest stays as it was: its digest is recorded at registration),
    and the size and file name of each dependency then come from the dependency's own
    LoggedModel (:meth:`DependencyRecord.of_model`). :func:`version_dependencies` reads both ways.

Attaching (:func:`attach_dependencies`), in the order of a save (``dependencies.py``'s gc protocol)
    1. refuse a file whose digest differs from one recorded where the version was made: the
       data folder's preprocess manifest (``expected``) or the tag ``mlflow_ddsp.dependencies``
       on the version's training run; nothing is written before every check passed;
    2. :func:`~.dependencies.store_dependency` each file (stored once per tracking store);
    3. tag the version's LoggedModel (the reference gc keeps);
    4. :func:`~.dependencies.confirm_dependencies` (a gc that ran between 2 and 3 is undone).
    A crash between 2 and 3 leaves stored, unreferenced files that the next gc frees (or the
    next attach reuses); the tag is written once and whole, so a version has a full record or none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

from .. import tags as T
from ..errors import CheckpointNotFoundError, ConfigError
from ..store import CheckpointVersion, RegistryStore
from .dependencies import (
    ROLES,
    DependencyRecord,
    confirm_dependencies,
    dependencies_tag,
    parse_dependencies_tag,
    store_dependency,
)

__all__ = ["AttachOutcome", "Recorded", "attach_dependencies", "version_dependencies"]

PathAndRecord = tuple["str | os.PathLike", DependencyRecord]


@dataclass(frozen=True)
class Recorded:
    """Digests recorded where a version was made, to check local files against.

    Attributes:
        digests: ``(role, sha256)`` pairs, as recorded.
        where: what recorded them, for messages (``"the preprocess manifest of /data/train"``).
        covers: the roles this record speaks for: a role it covers but does not list was made
            without a file (``{"encoder", "f0"}`` for a preprocess manifest: the feature roles).
    """

    digests: tuple[tuple[str, str], ...]
    where: str
    covers: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AttachOutcome:
    """What :func:`attach_dependencies` did (or, with ``dry_run``, would do) for one version.

    Attributes:
        version: the version.
        attached: the records attached (would be, with ``dry_run``); empty when skipped.
        skipped: why nothing was attached (one clause), None when attached.
    """

    version: CheckpointVersion
    attached: tuple[DependencyRecord, ...] = ()
    skipped: str | None = None


def _refuse_mismatch(found: Sequence[PathAndRecord], recorded: Recorded) -> None:
    """Raise ConfigError (one line, both digests) where ``found`` disagrees with ``recorded``."""
    by_role = {record.role: (path, record) for path, record in found}
    listed = dict(recorded.digests)
    for role, digest in recorded.digests:
        if role not in by_role:
            raise ConfigError(
                f"{recorded.where} records {role} weights sha256 {digest[:12]}, but the config names no {role} file "
                f"({ROLES[role]}); attach with the config the version was trained with"
            )
        path, record = by_role[role]
        if record.sha256 != digest:
            raise ConfigError(
                f"{ROLES[role]}: {path} has sha256 {record.sha256[:12]}, but {recorded.where} records "
                f"{role} weights sha256 {digest[:12]}; point {ROLES[role]} at the file the version was made with"
            )
    unlisted = sorted(recorded.covers & set(by_role) - set(listed))
    if unlisted:
        role = unlisted[0]
        path, record = by_role[role]
        raise ConfigError(
            f"{ROLES[role]}: {recorded.where} records that the features were made without {role} weights, "
            f"not with {path} (sha256 {record.sha256[:12]}); attach with the config the version was trained with"
        )


def _recorded_by_run(store: RegistryStore, version: CheckpointVersion) -> Recorded | None:
    """The tag ``mlflow_ddsp.dependencies`` on ``version``'s training run, if the run has one."""
    if version.run_id is None:
        return None
    try:
        value = store.run_tags(version.run_id).get(T.DEPENDENCIES)
    except CheckpointNotFoundError:  # the run was deleted for good: nothing recorded to compare with
        return None
    if value is None:
        return None
    return Recorded(tuple(parse_dependencies_tag(value)), f"training run {version.run_id}")


def attach_dependencies(
    store: RegistryStore, version: CheckpointVersion, records_with_paths: Sequence[PathAndRecord], *,
    expected: Iterable[Recorded] = (), dry_run: bool = False,
) -> AttachOutcome:  # fmt: skip
    """Record ``records_with_paths`` (``(local path, record)``, checked by the caller to be the
    files the version needs) as ``version``'s dependencies: store each once, tag its LoggedModel.

    A version that already has a record (tag ``mlflow_ddsp.dependencies``) or was not written
    by mlflow-ddsp is skipped (:attr:`AttachOutcome.skipped`), nothing read from the files.
    Order and crash behaviour: module docstring. With ``dry_run`` every check runs, nothing is written.

    Raises:
        ConfigError: a file's digest differs from one ``expected`` or the training run records
            (both digests named), or a role recorded there is missing from ``records_with_paths``.
        CheckpointIntegrityError: a file changed since it was hashed (:func:`store_dependency`).
        PermissionDeniedError: EDIT is missing on the dependencies experiment or on the
            version's experiment (one line naming it).
    """
    if version.model_id is None:
        return AttachOutcome(version, skipped="not written by mlflow-ddsp (no LoggedModel to record on)")
    files = store.get_files(version.model_id)
    if T.DEPENDENCIES in files.tags:
        had = ", ".join(f"{role} {digest[:12]}" for role, digest in parse_dependencies_tag(files.tags[T.DEPENDENCIES]))
        return AttachOutcome(version, skipped=f"already records its dependencies ({had or 'none'})")
    by_run = _recorded_by_run(store, version)
    for recorded in [*expected, *([by_run] if by_run else [])]:
        _refuse_mismatch(records_with_paths, recorded)
    records = tuple(record for _, record in records_with_paths)
    if dry_run:
        return AttachOutcome(version, attached=records)
    for path, record in records_with_paths:
        store_dependency(store, path, record)
    store.set_logged_model_tags(version.model_id, {T.DEPENDENCIES: dependencies_tag(records)})
    confirm_dependencies(store, records_with_paths)
    return AttachOutcome(version, attached=records)


def _stored_record(store: RegistryStore, experiment_id: str | None, role: str, digest: str) -> DependencyRecord:
    found = store.find_logged_models([experiment_id], {T.DEPENDENCY_SHA256: digest}) if experiment_id else []
    found = [m for m in found if m.status == "READY" and m.tags.get(T.DEPENDENCY_ROLE) == role]
    if not found:
        raise CheckpointNotFoundError(
            f"{role} weights sha256 {digest[:12]} are recorded by the version but not stored in "
            f"{store.tracking_uri}'s experiment {T.DEPENDENCY_EXPERIMENT!r}; run `mlflow-ddsp attach-dependencies` "
            f"from a machine that has the file"
        )
    return DependencyRecord.of_model(found[0])


def version_dependencies(store: RegistryStore, version: CheckpointVersion, manifest) -> list[DependencyRecord]:
    """The dependencies ``version`` records: its manifest's, else its LoggedModel's tag's.

    Args:
        manifest: the version's verified :class:`~.files.Manifest`; its ``dependencies``
            (records, or None/absent for a manifest written before they were recorded) win.
    Returns:
        The records, in recorded order; empty for a version that records none (written before
        issue 21 and never attached: it works as before, with the config's local files).
    Raises:
        CheckpointNotFoundError: the tag names a dependency the store no longer holds (role,
            digest and how to provide it).
        ConfigError: the tag is malformed.
    """
    recorded = getattr(manifest, "dependencies", None)  # Manifest.dependencies: None when written before
    if recorded is not None:
        return list(recorded)
    if version.model_id is None:
        return []
    value = store.get_files(version.model_id).tags.get(T.DEPENDENCIES)
    if not value:
        return []
    experiment_id = store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)
    return [_stored_record(store, experiment_id, role, digest) for role, digest in parse_dependencies_tag(value)]
