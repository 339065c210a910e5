"""Integrity verdicts: is a version's every byte as registered?

Built on the store's downloads (:class:`~mlflow_ddsp.store.RegistryStore`), not part of it:
the store moves bytes, this module judges them. One meaning everywhere (reconcile, gc,
restore, ``verify``, serving, export): a version is intact when its ``manifest.json`` has
the sha256 recorded at registration (a tag of its LoggedModel) and every file the manifest
lists has its recorded sha256. Only the essential files (``model_<N>.pt``, ``config.yaml``)
decide a checkpoint's fate (issue 20); :func:`fetch_verified` (serving, export) demands every byte.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from .. import tags as T
from ..errors import CheckpointIntegrityError, CheckpointNotFoundError
from ..store import LoggedModelRef, RegistryStore
from ..store.records import CheckpointVersion, Integrity
from .files import MANIFEST_FILE, FileDifference, Manifest, compare_files, sha256_file, verify_files

__all__ = ["auxiliary_note", "check", "fetch_verified", "inspect", "read_manifest", "trusted_manifest"]


def auxiliary_note(version: CheckpointVersion, differences: Sequence) -> str:
    """One line: which auxiliary files of ``version`` differ, and that its checkpoint is intact."""
    return (
        f"{version.label}: its checkpoint and config are intact, but "
        + "; ".join(d.describe() for d in differences)
        + " (an auxiliary file: the version is kept and resumed from; serving refuses it while that file differs)"
    )


def _named_by(version: CheckpointVersion, exc: CheckpointNotFoundError) -> CheckpointNotFoundError:
    """``exc``'s message, starting with the version's label (once)."""
    message = str(exc)
    return CheckpointNotFoundError(message if message.startswith(version.label) else f"{version.label}: {message}")


def read_manifest(
    store: RegistryStore, files: LoggedModelRef, dst: str | os.PathLike, listed: Mapping[str, int] | None = None
) -> Manifest:
    """Download ``files``' ``manifest.json`` into ``dst`` and parse it (not yet checked against its tag).

    Raises:
        CheckpointNotFoundError: no manifest in the store.
        CheckpointIntegrityError: it is not a manifest.
    """
    path = store.download(files, [MANIFEST_FILE], dst, listed) / MANIFEST_FILE
    return Manifest.from_json(path.read_bytes(), source=f"{files.artifact_location}/{MANIFEST_FILE}")


def check(store: RegistryStore, version: CheckpointVersion) -> tuple[Integrity, str | None]:
    """Download ``version`` and check every byte (see :func:`inspect`).

    Returns:
        ``(INTACT, None)``; ``(MISSING, why)`` when the store holds no file of
        it (deleted, or the store is not mounted); ``(DAMAGED, why)`` when an
        essential file (``model_<N>.pt``, ``config.yaml``) or the manifest is not
        as registered, or its LoggedModel is gone; ``(AUXILIARY, why)`` when only
        other files differ (issue 20: those never decide a checkpoint's fate).
        ``why`` is one line naming the file and, where it is there, both sha256.
    Raises:
        RegistryError: the store cannot be read (unreachable, no permission):
            nothing can be concluded.
    """
    with tempfile.TemporaryDirectory(prefix="mlflow-ddsp-check-") as tmp:
        try:
            manifest, differences = inspect(store, version, tmp)
        except CheckpointIntegrityError as exc:
            return Integrity.DAMAGED, str(exc)
        except CheckpointNotFoundError as exc:
            return _absent(store, version, exc)
    essential = [d for d in differences if d.name in manifest.essential_files]
    if essential:
        return Integrity.DAMAGED, f"{version.label}: " + "; ".join(d.describe() for d in essential)
    if differences:
        return Integrity.AUXILIARY, auxiliary_note(version, differences)
    return Integrity.INTACT, None


def _absent(store: RegistryStore, version: CheckpointVersion, exc: CheckpointNotFoundError) -> tuple[Integrity, str]:
    """The verdict when the manifest (or the LoggedModel) is gone: MISSING if no file is left, else DAMAGED."""
    if version.model_id is None:
        return Integrity.DAMAGED, str(exc)
    try:
        listed = store.list_sizes(store.files_of(version))
    except CheckpointNotFoundError:
        return Integrity.DAMAGED, f"{version.label}: its LoggedModel {version.model_id} is gone"
    return (Integrity.DAMAGED if listed else Integrity.MISSING), f"{version.label}: {exc}"


def inspect(store: RegistryStore, version: CheckpointVersion, dst: str | os.PathLike) -> tuple[Manifest, list[FileDifference]]:
    """Download the files of ``version`` that are there into ``dst``; list those that differ.

    The manifest must match the sha256 recorded before its upload; every file it
    lists is then compared with it, a missing one included. Unlike
    :func:`fetch_verified` (serving, export: every byte must match) nothing is
    raised for a file that differs: the caller decides (issue 20: only the
    essential files decide a checkpoint's fate).

    Returns:
        The manifest and a list of :class:`~mlflow_ddsp.checkpoint.files.FileDifference`.
    Raises:
        CheckpointNotFoundError: the manifest (or the LoggedModel) is gone.
        CheckpointIntegrityError: the manifest changed since registration.
    """
    try:
        files, listed, manifest = trusted_manifest(store, version, dst)
    except CheckpointNotFoundError as exc:
        raise _named_by(version, exc) from exc
    present = [n for n in manifest.files if n in listed]
    try:
        store.download(files, present, dst, listed)
    except CheckpointNotFoundError:
        pass  # gone between the listing and the download: compare_files names it
    return manifest, compare_files(dst, manifest)


def fetch_verified(store: RegistryStore, version: CheckpointVersion, dst: str | os.PathLike) -> Manifest:
    """Download every file of ``version`` into ``dst`` and check it against its tags.

    The manifest is trusted only if its sha256 matches the one recorded in
    the database before its upload (a tag of the LoggedModel); every other
    file must then match the manifest.

    Raises:
        CheckpointNotFoundError: a file is gone (the message names the version and the file).
        CheckpointIntegrityError: a file differs from what was registered.
    """
    try:
        return _fetch_verified(store, version, dst)
    except CheckpointNotFoundError as exc:
        raise _named_by(version, exc) from exc


def trusted_manifest(store: RegistryStore, version: CheckpointVersion, dst: str | os.PathLike
                     ) -> tuple[LoggedModelRef, dict[str, int], Manifest]:  # fmt: skip
    """Download ``version``'s manifest into ``dst`` and trust it only if its sha256 is the one
    recorded before its upload; returns where the files are, their listed sizes, the manifest.

    Raises:
        CheckpointNotFoundError: the LoggedModel or its manifest is gone.
        CheckpointIntegrityError: the manifest changed since registration.
    """
    files = store.files_of(version)
    listed = store.list_sizes(files)
    manifest = read_manifest(store, files, dst, listed)
    digest = sha256_file(Path(dst) / MANIFEST_FILE)
    # Recorded on the LoggedModel when it was created (on the version by older releases).
    expected = version.manifest_sha256 or files.tags.get(T.MANIFEST_SHA256)
    if digest.sha256 != expected:
        raise CheckpointIntegrityError(
            f"{version.label}: manifest.json changed since registration ({digest.size} bytes, "
            f"sha256 {digest.sha256[:12]}..., expected {str(expected)[:12]}...)"
        )
    return files, listed, manifest


def _fetch_verified(store: RegistryStore, version: CheckpointVersion, dst: str | os.PathLike) -> Manifest:
    files, listed, manifest = trusted_manifest(store, version, dst)
    store.download(files, [n for n in manifest.files], dst, listed)
    verify_files(dst, manifest, label=version.label)
    return manifest
