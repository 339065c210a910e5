"""The local spool: checkpoints written to disk and not yet committed to the registry.

Every save is first written here, then committed (``queue.py``). While the
tracking server is unreachable the spool holds what the registry will keep
(which entries are dropped when a newer one arrives is decided in
``retention.py``: :func:`~mlflow_ddsp.checkpoint.retention.spool_drops`); when
the server answers again they are committed in step order. A process that dies
with entries in its spool leaves them for the next queue of the same
registered model on this machine, which commits them before training starts.

Layout (one folder per tracking store and registered model)::

    <root>/<store key>/<registered model>/
        step-000000004000/          one entry: the version's files, then
            model_4000.pt ...        spool.json (what the commit needs besides the files)
        .writing-<pid>-step-...     an entry being written (removed if its process is gone)
        .damaged-step-...           an entry that failed its checks (kept for a person to look at)
        .set-aside-step-...         an entry of a replaced writer (kept for a person; see below)

Each entry records who wrote it (``writer``: the writer lease's owner id) and the
newest version of the registered model that writer knew (``base_version``). The
queue commits an entry only if no other writer has registered a version since
(``queue.py``): otherwise the entry belongs to a lineage that was replaced (a
``--takeover``, or a lease that expired during an outage while another machine
trained on) and it is set aside here instead, so a stale step never becomes the
newest checkpoint and never causes a deletion (issue 20). An entry's record
(``spool.json``) must agree with its folder name, its manifest and, when checked,
the checkpoint's own ``global_step``; one that does not is treated as damaged.

Commit order of one entry, so that a crash at any point leaves either a
complete entry or none:

    1. write   the files and ``spool.json`` into ``.writing-<pid>-step-<s>``, fsync each
    2. rename  to ``step-<s>``: the entry exists (atomic on POSIX)     -> after_spool
    3. remove  after the version is registered (``commit.py``); a crash between
               registering and removing leaves an entry whose step and sha256 the
               registry already holds: it is recognised and removed, never committed twice.

``<root>`` is ``MLFLOW_DDSP_SPOOL_DIR`` if set, else ``mlflow-ddsp-spool/`` beside an
embedded store's database, else ``$XDG_STATE_HOME/mlflow-ddsp/spool``
(``~/.local/state/...``) for a tracking server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

import torch

from ..errors import CheckpointIntegrityError, ConfigError, one_line
from ..names import spool_folder_name
from ..processes import pid_running
from ..store.location import embedded_store_folder
from .files import MANIFEST_FILE, FileDigest, Manifest, sha256_file, verify_files, write_checkpoint

__all__ = ["SPOOL_ENV", "SpooledSave", "Spool", "spool_root", "check_spool_root"]

log = logging.getLogger(__name__)

SPOOL_ENV = "MLFLOW_DDSP_SPOOL_DIR"
SPOOL_FILE = "spool.json"
_ENTRY = re.compile(r"^step-(\d{12})$")
_FORMAT = "mlflow-ddsp.spool/1"


def spool_root(tracking_uri: str) -> Path:
    """Where the spools of ``tracking_uri`` live (see the module docstring)."""
    configured = os.environ.get(SPOOL_ENV)
    if configured:
        return Path(configured).expanduser()
    folder = embedded_store_folder(tracking_uri)
    if folder is not None:
        return folder / "mlflow-ddsp-spool"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "mlflow-ddsp" / "spool"


def _unusable(folder: Path, why: str) -> ConfigError:
    configured = os.environ.get(SPOOL_ENV)
    setting = f"{SPOOL_ENV}={configured!r}: " if configured else ""
    return ConfigError(f"{setting}the checkpoint spool folder {folder} cannot be used ({why}); "
                       f"set {SPOOL_ENV} to a writable folder")  # fmt: skip


def check_spool_root(tracking_uri: str) -> None:
    """Refuse a spool root that cannot be a writable folder, creating nothing.

    Raises:
        ConfigError: it, or the nearest existing folder above it, is not a
            writable folder (one line naming ``MLFLOW_DDSP_SPOOL_DIR`` if set).
    """
    root = spool_root(tracking_uri)
    existing = root
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise _unusable(root, f"{existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _unusable(root, f"{existing} is not writable")


def _store_key(tracking_uri: str) -> str:
    """A folder name for one tracking store: readable, and unique by a hash of the URI."""
    folder = embedded_store_folder(tracking_uri)
    parsed = urlparse(tracking_uri)
    readable = (parsed.netloc or parsed.scheme or "store") if folder is None else "embedded"
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", readable)[:60]
    return f"{readable}-{hashlib.sha256(tracking_uri.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class SpooledSave:
    """One checkpoint on local disk, waiting to be committed.

    ``files_tags`` are the LoggedModel's tags (lineage, parent) fixed when the
    save was made; ``run_id``/``experiment_id`` where it belongs.
    """

    step: int
    kind: str
    folder: Path
    manifest: Manifest
    manifest_digest: FileDigest
    metrics: dict[str, float] = field(default_factory=dict)
    # when the metrics were measured (ms since the epoch): the run's point the commit links to;
    # None in entries written before issue 22 (linked at the commit's time)
    metrics_timestamp: int | None = None
    blocked_seconds: float = 0.0
    run_id: str | None = None
    experiment_id: str = ""
    files_tags: dict[str, str] = field(default_factory=dict)
    written_by: int = 0  # pid
    writer: str = ""  # the writer lease's owner id ("" in entries written before issue 20)
    base_version: int | None = None  # the newest version that writer knew when it wrote the entry

    @property
    def checkpoint(self):
        return self.manifest.files[self.manifest.checkpoint_file]

    @property
    def nbytes(self) -> int:
        return sum(d.size for d in self.manifest.files.values()) + self.manifest_digest.size

    def to_json(self) -> bytes:
        return json.dumps({
            "format": _FORMAT, "step": self.step, "kind": self.kind, "metrics": self.metrics,
            "metrics_timestamp": self.metrics_timestamp, "blocked_seconds": self.blocked_seconds, "run_id": self.run_id, "experiment_id": self.experiment_id,
            "files_tags": self.files_tags, "manifest_sha256": self.manifest_digest.sha256,
            "manifest_size": self.manifest_digest.size, "written_by": self.written_by,
            "writer": self.writer, "base_version": self.base_version,
        }, indent=2).encode()  # fmt: skip


def _check_global_step(entry: SpooledSave) -> None:
    """The checkpoint's own ``global_step`` must be the entry's step (read memory-mapped: cheap)."""
    path = entry.folder / entry.manifest.checkpoint_file
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is a damaged entry
        raise CheckpointIntegrityError(f"spooled checkpoint {path} cannot be read: {one_line(exc)}") from exc
    step = payload.get("global_step") if isinstance(payload, dict) else None
    if step is not None and int(step) != entry.step:
        raise CheckpointIntegrityError(
            f"spooled checkpoint {path} holds global_step {int(step)}, its record says step {entry.step}"
        )


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported here (Windows): the rename is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool folder of one registered model in one tracking store.

    Args:
        tracking_uri: the store the entries are committed to.
        name: the registered model.
        root: default :func:`spool_root`.

    Raises:
        ConfigError: the folder cannot be created (one line, naming why).
    """

    def __init__(self, tracking_uri: str, name: str, root: str | os.PathLike | None = None, *, create: bool = True):
        self.tracking_uri = tracking_uri
        self.name = name
        base = Path(root) if root is not None else spool_root(tracking_uri)
        self.folder = base / _store_key(tracking_uri) / spool_folder_name(name)  # validated by names.py
        if create:
            try:
                self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise _unusable(self.folder, exc.strerror or str(exc)) from exc

    @classmethod
    def waiting(cls, tracking_uri: str, name: str) -> tuple["Spool", list[SpooledSave]]:
        """The spool of ``name`` on this machine and its readable entries, changing nothing
        (for ``versions``: what is not in the registry yet)."""
        spool = cls(tracking_uri, name, create=False)
        out = []
        if spool.folder.is_dir():
            for path in sorted(spool.folder.iterdir()):
                if _ENTRY.match(path.name):
                    try:
                        out.append(spool._load(path))
                    except (CheckpointIntegrityError, OSError, ValueError, KeyError, TypeError):
                        continue
        return spool, out

    # -- writing ------------------------------------------------------------
    def write(
        self,
        step: int,
        kind: str,
        payload: Mapping[str, Any],
        config_yaml: bytes,
        extra_files: Mapping[str, bytes],
        trainer_state: Mapping[str, Any] | None,
        *,
        metrics: Mapping[str, float],
        blocked_seconds: float,
        metrics_timestamp: int | None = None,
        run_id: str | None,
        experiment_id: str,
        files_tags: Mapping[str, str],
        writer: str = "",
        base_version: int | None = None,
        dependencies: Sequence[Mapping[str, Any]] | None = None,
        after_write=lambda: None,
    ) -> SpooledSave:
        """Write one entry (steps 1-2 of the module's commit order); an older entry of
        the same step is replaced. ``after_write`` runs between write and rename.
        ``writer``/``base_version``: see the module docstring. ``dependencies``: the records of
        the weight files the checkpoint converts with, written into its manifest (issue 21)."""
        tmp = self.folder / f".writing-{os.getpid()}-step-{step:012d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        try:
            manifest, digest = write_checkpoint(tmp, step, payload, config_yaml, extra_files, trainer_state,
                                                dependencies=dependencies)  # fmt: skip
            entry = SpooledSave(
                step=step, kind=kind, folder=self.folder / f"step-{step:012d}", manifest=manifest,
                manifest_digest=digest, metrics={k: float(v) for k, v in metrics.items()},
                metrics_timestamp=None if metrics_timestamp is None else int(metrics_timestamp), blocked_seconds=float(blocked_seconds), run_id=run_id, experiment_id=str(experiment_id),
                files_tags=dict(files_tags), written_by=os.getpid(), writer=str(writer),
                base_version=None if base_version is None else int(base_version),
            )  # fmt: skip
            (tmp / SPOOL_FILE).write_bytes(entry.to_json())
            _fsync_tree(tmp)
            after_write()
            if entry.folder.exists():
                shutil.rmtree(entry.folder)  # the same step saved again (a retried save)
            os.rename(tmp, entry.folder)
            _fsync_dir(self.folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return entry

    # -- reading ------------------------------------------------------------
    def entries(self, *, verify: bool = False) -> list[SpooledSave]:
        """The complete entries, oldest step first.

        Args:
            verify: check each file's sha256 against the entry's manifest and the
                checkpoint's own ``global_step`` against the record; an entry that
                fails is renamed ``.damaged-...`` (kept, logged).
        Also removes ``.writing-`` folders of processes that are gone (incomplete).
        """
        out = []
        for path in sorted(self.folder.iterdir()):
            if path.name.startswith(".writing-"):
                pid = path.name.split("-")[1]
                if pid.isdigit() and not pid_running(int(pid)):
                    shutil.rmtree(path, ignore_errors=True)
                continue
            if not _ENTRY.match(path.name):
                continue
            try:
                entry = self._load(path)
                if verify:
                    verify_files(path, entry.manifest, label=f"spooled checkpoint {path}")
                    if sha256_file(path / MANIFEST_FILE) != entry.manifest_digest:
                        raise CheckpointIntegrityError(f"spooled checkpoint {path}: {MANIFEST_FILE} changed")
                    _check_global_step(entry)
            except (CheckpointIntegrityError, OSError, ValueError, KeyError, TypeError) as exc:
                aside = self.folder / f".damaged-{path.name}-{int(time.time())}"
                os.rename(path, aside)
                log.error("%s: a spooled checkpoint is damaged and was moved to %s, not committed: %s",
                          self.name, aside, exc)  # fmt: skip
                continue
            out.append(entry)
        return out

    def _load(self, path: Path) -> SpooledSave:
        doc = json.loads((path / SPOOL_FILE).read_bytes())
        if doc.get("format") != _FORMAT:
            raise ValueError(f"{path / SPOOL_FILE}: unknown format {doc.get('format')!r}")
        manifest = Manifest.from_json((path / MANIFEST_FILE).read_bytes(), source=str(path / MANIFEST_FILE))
        # The record, the folder and the manifest must name one step (a bit flip or an edit
        # in spool.json must never register model_30.pt as step 999999).
        named = int(_ENTRY.match(path.name).group(1))
        if not int(doc["step"]) == named == manifest.step:
            raise CheckpointIntegrityError(
                f"spooled checkpoint {path}: {SPOOL_FILE} says step {doc['step']}, the folder step {named}, "
                f"{MANIFEST_FILE} step {manifest.step}"
            )
        base, stamp = doc.get("base_version"), doc.get("metrics_timestamp")
        return SpooledSave(
            step=int(doc["step"]), kind=str(doc["kind"]), folder=path, manifest=manifest,
            manifest_digest=FileDigest(str(doc["manifest_sha256"]), int(doc["manifest_size"])),
            metrics={str(k): float(v) for k, v in doc["metrics"].items()},
            metrics_timestamp=None if stamp is None else int(stamp), blocked_seconds=float(doc["blocked_seconds"]), run_id=doc["run_id"],
            experiment_id=str(doc["experiment_id"]), files_tags={str(k): str(v) for k, v in doc["files_tags"].items()},
            written_by=int(doc.get("written_by", 0)), writer=str(doc.get("writer") or ""),
            base_version=None if base is None else int(base),
        )  # fmt: skip

    def set_aside(self, entry: SpooledSave) -> Path:
        """Move an entry out of the way of every later commit (a replaced writer's save),
        keeping its files for a person; returns where it went."""
        aside = self.folder / f".set-aside-{entry.folder.name}-{int(time.time())}"
        os.rename(entry.folder, aside)
        _fsync_dir(self.folder)
        return aside

    # -- removing -----------------------------------------------------------
    def remove(self, entry: SpooledSave) -> None:
        """Delete one entry's folder (after its commit, or when retention drops it)."""
        shutil.rmtree(entry.folder, ignore_errors=True)

    def describe(self, entries: list[SpooledSave]) -> str:
        """e.g. ``3 checkpoints (steps 200, 300, 310; 24.1 MB) in /path``."""
        steps = ", ".join(str(e.step) for e in entries)
        size = sum(e.nbytes for e in entries) / 1e6
        noun = "checkpoint" if len(entries) == 1 else "checkpoints"
        return f"{len(entries)} {noun} (step{'s' if len(entries) != 1 else ''} {steps}; {size:.1f} MB) in {self.folder}"
