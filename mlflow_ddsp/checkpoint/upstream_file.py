"""Register an existing upstream checkpoint file as a version, its bytes unchanged.

:meth:`CheckpointQueue.register_file <mlflow_ddsp.checkpoint.queue.CheckpointQueue.register_file>`
(imports of upstream experiment folders) runs steps 2-8 of the commit order
(``commit.py``) synchronously, from a private temporary folder: no spool, the file
itself is the durable copy. The committer thread is paused meanwhile.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping

from .. import tags as T
from ..errors import ConfigError
from ..store import CheckpointVersion
from .commit import QueueSetup, identity_tags
from .committer import Committer
from .files import write_checkpoint
from .pending import Pending
from .spool import SpooledSave
from .spool_writer import scratch

__all__ = ["register_file"]


def register_file(setup: QueueSetup, pending: Pending, committer: Committer, step: int, path: str | os.PathLike, *,
                  kind: str, config_yaml: bytes, extra_files: Mapping[str, bytes], files_tags: Mapping[str, str],
                  run_id: str | None, experiment_id: str, description: str | None = None,
                  tags: Mapping[str, str] | None = None) -> CheckpointVersion:  # fmt: skip
    """Steps 2-8 for the checkpoint file ``path`` at ``step`` as ``kind``; returns its version.

    Args:
        files_tags: the LoggedModel's lineage and parent tags.
        description, tags: the version's (default: what the retention rules say).
    Raises:
        ConfigError: ``kind`` is not one of ``tags.KINDS``.
        MlflowDdspError: the registry refused a step (one line; nothing is left half-registered).
    """
    if kind not in T.KINDS:
        raise ConfigError(f"kind={kind!r} must be one of {', '.join(T.KINDS)}")
    with pending.cond:
        pending.paused = True
    try:
        with tempfile.TemporaryDirectory(prefix=f"{os.getpid()}-step{step}-", dir=scratch()) as tmp:
            manifest, digest = write_checkpoint(Path(tmp), step, Path(path), config_yaml, dict(extra_files), None)
            all_tags = {**files_tags, **identity_tags(setup, step, kind, manifest, digest)}
            entry = SpooledSave(step=step, kind=kind, folder=Path(tmp), manifest=manifest, manifest_digest=digest,
                                run_id=run_id, experiment_id=experiment_id, files_tags=all_tags)  # fmt: skip
            return committer.commit_now(entry, description=description, tags=tags, spooled=False)
    finally:
        with pending.cond:
            pending.paused = False
            pending.cond.notify_all()
