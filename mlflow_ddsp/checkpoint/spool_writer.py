"""The spool writer: step 1 of the commit order (``commit.py``'s module docstring).

A save's state, staged in CPU memory by the caller, is written into the local
spool by one writer thread (local disk only; the next save waits for it, never
for the server). Once the entry is durable, the spool's drop decision
(``retention.spool_drops``) removes rolling saves a newer one supersedes, and
the committer is told there is work.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import CheckpointSaveError, one_line
from ..processes import pid_running
from .commit import QueueSetup
from .files import CONFIG_FILE, MANIFEST_FILE, TRAINER_STATE_FILE
from .pending import Pending
from .retention import SpoolItem, spool_drops
from .spool import SpooledSave
from .staging import StagingBuffer

__all__ = ["SpoolWriter", "lower_priority", "scratch", "clean_scratch", "check_attachments"]

log = logging.getLogger(__name__)


def lower_priority() -> None:
    """Run a save thread at a lower CPU priority than training (Linux: per-thread nice).

    Training saturates the cores; the save only needs them while training waits.
    """
    nice = int(os.environ.get("MLFLOW_DDSP_SAVE_NICE", "10"))
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):
        pass  # not Linux, or not permitted: run at normal priority


def _scratch_root() -> Path:
    """This OS user's own staging folder (mode 0700): users of one machine never share it."""
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"mlflow-ddsp-staging-{user}"


def scratch() -> Path:
    """The staging folder, made if missing; refused if another user owns it."""
    root = _scratch_root()
    root.mkdir(mode=0o700, exist_ok=True)
    if hasattr(os, "getuid") and root.stat().st_uid != os.getuid():
        raise CheckpointSaveError(
            f"the staging folder {root} belongs to another user; remove it or set TMPDIR to a folder of yours"
        )
    return root


def clean_scratch() -> None:
    """Remove staging folders left by processes that died mid-save (named <pid>-...)."""
    root = _scratch_root()
    if not root.is_dir():
        return
    for entry in root.iterdir():
        pid = entry.name.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_running(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def check_attachments(files: Mapping[str, bytes] | None, extra_files: Mapping[str, bytes]) -> dict[str, bytes]:
    """Validate per-save attachments: plain top-level names that clash with no file of the version."""
    taken = {MANIFEST_FILE, CONFIG_FILE, TRAINER_STATE_FILE, *extra_files}
    out = {}
    for name, data in (files or {}).items():
        if "/" in name or "\\" in name or name in taken or name.startswith("model_"):
            raise ValueError(f"attachment name {name!r} is not allowed: a plain file name not used by the checkpoint")
        out[name] = bytes(data)
    return out


class SpoolWriter:
    """Writes staged saves into the spool, one at a time, and applies the spool's drop decision.

    Args:
        setup: the queue's setup (spool, policy, writer id).
        pending: the state shared with the committer.
        crash_hook: ``step -> reached(point)`` (``faults.py``).
        config_yaml, extra_files: written with every save.
        run_id, experiment_id: where the saves belong.
        files_tags: the LoggedModel's lineage and parent tags, read when a save is written.
    """

    def __init__(self, setup: QueueSetup, pending: Pending, crash_hook: Callable[[int], Callable[[str], None]], *,
                 config_yaml: bytes, extra_files: Mapping[str, bytes], run_id: str | None, experiment_id: str,
                 files_tags: Callable[[], dict[str, str]]):  # fmt: skip
        self.setup = setup
        self.pending = pending
        self.crash_hook = crash_hook
        self.config_yaml = config_yaml
        self.extra_files = dict(extra_files)
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.files_tags = files_tags
        self.staging = StagingBuffer()
        self.dropped = 0  # saves dropped from the spool for a newer one
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mlflow-ddsp-spool-{setup.name}",
                                            initializer=lower_priority)  # fmt: skip
        self._writing: Future | None = None  # the write of the newest save into the spool
        self._writing_step: int | None = None

    @property
    def writing(self) -> bool:
        """Whether a save is being written to the spool now."""
        return self._writing is not None and not self._writing.done()

    def stage(self, state: Mapping[str, Any], trainer_state: Mapping[str, Any] | None) -> dict[str, Any]:
        """Step 0: copy the state to CPU memory (the caller's only wait)."""
        return self.staging.stage({"checkpoint": state, "trainer": dict(trainer_state or {}) or None})

    def submit(self, step: int, kind: str, staged: dict[str, Any], metrics: Mapping[str, float], blocked: float,
               attachments: Mapping[str, bytes] | None, metrics_timestamp: int | None = None) -> None:  # fmt: skip
        """Step 1 in the writer thread; :meth:`wait_written` waits for it (the next save does)."""
        files = check_attachments(attachments, self.extra_files)
        self._writing_step = step
        self._writing = self._executor.submit(self._write, step, kind, staged["checkpoint"], dict(metrics), blocked,
                                              trainer_state=staged["trainer"], attachments=files,
                                              metrics_timestamp=metrics_timestamp)  # fmt: skip

    def wait_written(self) -> None:
        """Wait for the save being written; a failure is raised here, in one line.

        Raises:
            CheckpointSaveError: the write failed (names the spool, the free space, what to do).
        """
        pending, step = self._writing, self._writing_step
        if pending is None:
            return
        self._writing = self._writing_step = None
        try:
            pending.result()
        except Exception as exc:  # noqa: BLE001 - re-raised with context, nothing swallowed
            folder = self.setup.spool.folder
            try:  # torch reports a full disk in its own words ("unexpected pos"): say what is free
                free = f" (the disk holding it has {shutil.disk_usage(folder).free / 1e6:,.0f} MB free)"
            except OSError:
                free = ""
            raise CheckpointSaveError(
                f"writing the checkpoint of step {step} to the spool {folder} failed{free}: "
                f"{one_line(exc)}; set MLFLOW_DDSP_SPOOL_DIR to a folder on a disk with room"
            ) from exc

    def shutdown(self, *, wait: bool) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=not wait)

    # -- the writer thread ---------------------------------------------------
    def _write(self, step, kind, payload, metrics, blocked, *, trainer_state, attachments, metrics_timestamp) -> None:
        reached = self.crash_hook(step)
        p = self.pending
        try:
            entry = self.setup.spool.write(
                step, kind, payload, self.config_yaml, {**self.extra_files, **attachments}, trainer_state,
                metrics=metrics, metrics_timestamp=metrics_timestamp, blocked_seconds=blocked, run_id=self.run_id, experiment_id=self.experiment_id,
                files_tags=self.files_tags(), writer=self.setup.writer_id, base_version=p.known_version,
                dependencies=self.setup.dependency_records(), after_write=lambda: reached("after_write"),
            )  # fmt: skip
        except BaseException as exc:
            with p.cond:
                future = p.futures.pop(step, None)
            if future is not None and not future.done():
                future.set_exception(exc)
            raise
        reached("after_spool")
        self._spooled(entry)

    def _spooled(self, entry: SpooledSave) -> None:
        """The entry is durable: drop what it supersedes (``retention.spool_drops``), wake the committer."""
        p = self.pending
        with p.cond:
            p.spooled[entry.step] = entry
            items = [SpoolItem(e.step, e.kind, e.metrics) for e in p.spooled.values()]
            drops = spool_drops(items, self.setup.policy, in_flight=p.in_flight)
            dropped = [p.spooled.pop(s) for s in sorted(drops)]
            futures = [p.futures.pop(e.step, None) for e in dropped]
            p.held = False  # after a failure, the committer tries again with the newest spool
            p.cond.notify_all()
        for old, future in zip(dropped, futures):
            self.setup.spool.remove(old)
            self.dropped += 1
            log.info("%s: step %d dropped from the spool: step %d supersedes it", self.setup.name, old.step, entry.step)
            if future is not None and not future.done():
                future.set_result(None)
