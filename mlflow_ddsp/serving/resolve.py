"""Pin a model URI to a concrete version before loading or serving it.

Under training churn the rolling alias moves and its previous version is
deleted within a second; a reader that downloads ``@rolling`` directly can
fail mid-download. Resolving the alias to a version number first, then
loading that number (and re-resolving if it vanished), keeps readers
consistent, and records which version actually answered.

Loading and serving go through a verified local copy: every file of the version,
``MLmodel`` included, is downloaded and checked against the registry's record
(the manifest's sha256 recorded when the version was written, then each file
against the manifest) *before* MLflow reads the ``MLmodel``. MLflow imports the
modules an ``MLmodel`` names (``loader_module``, a ``code:`` folder) as soon as it
loads one, so a version edited in the artifact store must be refused before that.
Files the manifest does not list are never downloaded, so an added ``code/``
folder cannot run either.

What plain ``mlflow models serve -m models:/NAME/7`` and ``mlflow.pyfunc.load_model``
guarantee: our loader checks every file against the version's own
``manifest.json`` (corruption, partial downloads, a changed checkpoint), but MLflow
has already imported what the ``MLmodel`` names, and a manifest rewritten
together with the files cannot be told from the original without the registry.
``mlflow-ddsp serve`` and :func:`load_model` close both gaps.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from ..checkpoint import CheckpointReader
from ..checkpoint.reader import parse_model_uri
from ..checkpoint.files import CONFIG_FILE
from ..checkpoint.verify import fetch_verified
from ..config import parse_config
from ..errors import CheckpointIntegrityError, CheckpointNotFoundError, RegistryError
from ..names import serving_folder_name
from ..processes import pid_running
from ..pyfunc_layout import MLMODEL_FILE
from ..store import CheckpointVersion
from ..store.fluent import load_pyfunc
from .dependencies import fetched_dependencies, resolve_files

__all__ = ["pin_version", "fetch_servable", "serving_folder", "load_model"]

log = logging.getLogger(__name__)


def pin_version(
    uri: str, *, tracking_uri: str | None = None, reader: CheckpointReader | None = None
) -> tuple[str, CheckpointVersion]:
    """``models:/NAME@rolling`` -> (``models:/NAME/12``, that version); logs the choice.

    ``reader``: an open reader of NAME to resolve with (else one is opened on ``tracking_uri``).
    """
    ref = parse_model_uri(uri)
    version = (reader or CheckpointReader(ref.name, tracking_uri=tracking_uri)).resolve(uri)
    pinned = f"models:/{version.name}/{version.version}"
    if pinned != uri:
        log.warning("%s resolved to %s (step %s)", uri, pinned, version.step)
    return pinned, version


def fetch_servable(
    uri: str, dst: str | os.PathLike, *, tracking_uri: str | None = None, reader: CheckpointReader | None = None
) -> CheckpointVersion:
    """Download a version's files into ``dst``, each checked against the registry's record, and
    the weight files its manifest records into the per-user cache (:mod:`.dependencies`).

    Args:
        uri: ``models:/NAME/7`` or ``models:/NAME@ALIAS`` (pinned to its version first).
        dst: an empty folder this process owns.
        reader: an open reader of NAME (else one is opened on ``tracking_uri``).

    Raises:
        CheckpointIntegrityError: the manifest or any file (``MLmodel`` included)
            differs from what was registered, or the version has no ``MLmodel``.
        CheckpointNotFoundError: the version or one of its files is gone, or a dependency is nowhere.
        ConfigError: ``MLFLOW_DDSP_ENCODER_CKPT`` / ``MLFLOW_DDSP_VOCODER_CKPT`` names no file.
    """
    reader = reader or CheckpointReader(parse_model_uri(uri).name, tracking_uri=tracking_uri)
    _, version = pin_version(uri, reader=reader)  # one store for resolving and downloading
    manifest = fetch_verified(reader.store, version, dst)
    if MLMODEL_FILE not in manifest.files:
        raise CheckpointIntegrityError(f"{version.label} has no MLmodel among its registered files; it cannot be served")
    records = fetched_dependencies(reader.store, version, manifest)
    if records:  # fetched into the cache now, with this store: the loader then finds them there
        cfg = parse_config(yaml.safe_load((Path(dst) / CONFIG_FILE).read_text()))
        resolve_files(reader.store, records, cfg, label=version.label)
    return version


def serving_folder(name: str, version: int) -> Path:
    """A fresh folder for the files a server process (this pid, after ``exec``) loads.

    ``<tmp>/mlflow-ddsp-serve-<uid>/<name>-v<version>-<pid>``, the parent private
    to this OS user (0700). Folders of servers that have exited are removed here,
    so repeated ``serve`` runs do not pile up copies.
    """
    parent = Path(tempfile.gettempdir()) / f"mlflow-ddsp-serve-{os.getuid()}"
    parent.mkdir(mode=0o700, exist_ok=True)
    if parent.is_symlink() or parent.stat().st_uid != os.getuid():
        raise CheckpointIntegrityError(f"{parent} is not a private folder of this user; remove it")
    parent.chmod(0o700)
    for old in parent.iterdir():
        pid = old.name.rpartition("-")[2]
        if pid.isdigit() and not pid_running(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    folder = parent / serving_folder_name(name, version, os.getpid())  # its length is validated by names.py
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700)
    return folder


def load_model(uri: str, *, tracking_uri: str | None = None, attempts: int = 3):
    """``mlflow.pyfunc.load_model`` of a pinned, verified version, retrying if the alias moved on.

    Raises:
        CheckpointIntegrityError: the version's files differ from the registry's record.
        CheckpointNotFoundError: the version kept vanishing, or does not exist.
    """
    last: Exception | None = None
    for _ in range(attempts):
        local = Path(tempfile.mkdtemp(prefix="mlflow-ddsp-load-"))
        try:
            fetch_servable(uri, local, tracking_uri=tracking_uri)
            try:
                return load_pyfunc(local)  # the checkpoint is in memory once loaded
            except RegistryError as exc:  # MLflow could not load the copy (load_pyfunc raises no other)
                last = exc
        except (CheckpointNotFoundError, OSError) as exc:  # deleted between resolve and download
            if isinstance(exc, CheckpointNotFoundError) and _is_pinned(uri):
                raise
            last = exc
        finally:
            shutil.rmtree(local, ignore_errors=True)
        log.warning("%s vanished while loading (%s); resolving it again", uri, last)
    raise CheckpointNotFoundError(f"could not load {uri}: {last}")


def _is_pinned(uri: str) -> bool:
    """True for ``models:/NAME/7``: a numbered version is never substituted, so never retried."""
    return parse_model_uri(uri).version is not None
