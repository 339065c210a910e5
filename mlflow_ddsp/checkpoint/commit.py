"""The commit order of a checkpoint save, and steps 2-8 of it for one spooled save.

Commit order of one save at step ``s``. Each arrow is a named crash point
(``faults.py``); the kill tests SIGKILL a training process at every one and
check that the next start (spool upload, then reconcile: ``retention.py``,
``reconcile.py``) restores the invariants with nothing durable lost:

    0. stage     model (+ optimizer) state -> CPU memory     [caller thread; all that blocks]
    1. write     model_<s>.pt, trainer_state.pt, config.yaml, manifest.json and
                 spool.json into a temporary folder of the local spool  -> after_write
       spool     rename it to the spool's entry step-<s>: DURABLE ON THIS MACHINE
                 (``spool.py``); retention drops spooled rolling saves that a newer
                 one supersedes (``retention.spool_drops``)        -> after_spool
       lineage   an entry whose writer was replaced (another writer registered a
                 version after the entry's base_version: ``spool.py``) is set aside,
                 never registered: a stale step never becomes the newest, nor deletes
                 anything (issue 20); this writer's own such entry means it lost the
                 lease: it sets its whole spool aside and stops (LeaseLostError)
    2. depend    each weight file the manifest records (encoder, f0, vocoder) is in the
                 store's dependencies once: found, or stored (``dependencies.py``: its own
                 commit order and crash points ``dependency_after_*``)
       create    a LoggedModel (PENDING) tagged queue/step/kind/writer, the manifest's
                 sha256 (the integrity record), lineage, parent and the dependencies it
                 references (what gc keeps)                              -> after_create
       confirm   a dependency a concurrent gc retired meanwhile is stored again
    3. upload    checkpoint and config                                  -> mid_upload
                 then the manifest, last                                -> after_upload
    4. verify    the store lists every file at its manifest size
    5. finalize  LoggedModel READY                                      -> after_finalize
    6. fence     check the writer lease, then
       register  a model version, tags step/kind/sha256/size (+ the best metric),
                 set in the same call: THE COMMIT POINT                 -> after_register
       unspool   remove the spool entry                                 -> after_unspool
       link      the LoggedModel's mlflow.modelVersions (the UI's link; cosmetic), and
                 the save's metrics linked to the run's point of its step and timestamp
    7. plan      from the registry's state (versions, aliases, tags), what
                 stays (``retention.py``); the previous version is never
                 taken from memory, so a half-applied plan is finished here
       alias     move the alias (and ``best``) as planned               -> after_alias
    8. retire    each rolling version no rule keeps: registry entry     -> after_delete_version
                 then its bytes                                         -> after_delete_bytes
                 then its LoggedModel record                            -> after_delete_record

A crash before ``after_spool`` loses only this save (training resumes from the
previous checkpoint and redoes the steps). From ``after_spool`` on the save is
kept: the next start of a queue for this registered model on this machine
commits the spool's entries in step order before training, and an entry whose
step and sha256 the registry already holds (a crash between register and
unspool) is removed, not committed twice. The alias never points at anything
that is not fully uploaded and verified, and no version is deleted while it
carries the alias (MLflow would silently drop the alias with it).

This is the one place the commit order is written down. Step 0 runs in the
caller's thread (``queue.py``), step 1 in the spool writer's (``spool_writer.py``);
this module carries out steps 2-8 for one entry and keeps no state of its own
between calls: the committer thread (``committer.py``) decides when each runs and
records where it stands. ``reached(point)`` is the entry's crash hook
(``faults.py``), called at each named point.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from .. import tags as T
from ..errors import CheckpointIntegrityError, CheckpointNotFoundError, ConfigError, LeaseLostError, one_line
from ..names import logged_model_name
from ..store import CheckpointVersion, LoggedModelRef, RegistryStore
from .deleter import apply_plan
from .dependencies import DependencyRecord, confirm_dependencies, dependencies_tag, store_dependency
from .faults import crash_point
from .files import MANIFEST_FILE, FileDigest, Manifest
from .lease import WriterLease
from .policy import RetentionPolicy
from .retention import committed_reasons, describe_version, plan_retention
from .snapshot import take_snapshot
from .spool import Spool, SpooledSave

__all__ = ["QueueSetup", "Link", "Committed", "commit_entry", "link", "settle", "set_aside_all", "identity_tags",
           "parent_tags", "crash_hook"]  # fmt: skip

log = logging.getLogger(__name__)

Reached = Callable[[str], None]


@dataclass
class QueueSetup:
    """What every commit of one queue needs: where to, under which rules, as which writer."""

    name: str
    alias: str
    policy: RetentionPolicy
    store: RegistryStore
    spool: Spool
    lease: WriterLease
    writer_id: str
    attempted: set[int] = field(default_factory=set)  # steps whose commit started in this process
    # The weight files every checkpoint of this queue converts with (issue 21), each with its
    # file on this machine; None: not recorded (a queue used without them, as before).
    dependencies: tuple[tuple[Path, DependencyRecord], ...] | None = None

    def dependency_records(self) -> list[dict] | None:
        """What a new checkpoint's manifest records (``None``: no ``dependencies`` key)."""
        return None if self.dependencies is None else [r.to_dict() for _, r in self.dependencies]

    def dependency_files(self, manifest: Manifest) -> list[tuple[Path | None, DependencyRecord]]:
        """The records of ``manifest`` with this machine's file of each (None: not here)."""
        here = {r.sha256: path for path, r in self.dependencies or ()}
        records = [DependencyRecord.from_dict(dict(d)) for d in manifest.dependencies or ()]
        return [(here.get(r.sha256), r) for r in records]


@dataclass(frozen=True)
class Link:
    """Step 6's links of a registered version, still to write (the UI's; cosmetic, but retried)."""

    model_id: str
    version: int
    step: int
    kind: str
    run_id: str | None
    metrics: dict[str, float]
    metrics_timestamp: int | None  # the run's point the metrics link to (ms); None: now
    timings: dict[str, float]


@dataclass(frozen=True)
class Committed:
    """A version registered for an entry (the commit point passed); ``link`` None: nothing to link."""

    version: CheckpointVersion
    link: Link | None


def commit_entry(
    setup: QueueSetup,
    entry: SpooledSave,
    reached: Reached,
    *,
    description: str | None = None,
    tags: Mapping[str, str] | None = None,
    spooled: bool = True,
    dedupe: bool = False,
    unspool: Callable[[SpooledSave, CheckpointVersion], None],
    forget: Callable[[SpooledSave], None],
) -> Committed | None:
    """Steps 2-6 (create ... register, unspool) for one entry.

    Args:
        unspool: called right after the commit point (or for an entry found registered
            already): remembers the version and takes the entry out of the spool.
        forget: called for an entry of a replaced lineage before it is set aside.
    Returns:
        The registered version and its links still to write; None for an entry of a
        replaced lineage, set aside instead.
    Raises:
        LeaseLostError: this writer's own entry was replaced, or the lease fails its check.
    """
    started = time.perf_counter()
    store, step = setup.store, entry.step
    # A step tried before (in this process, or by the process that spooled it) may
    # have reached the commit point already: never register it twice.
    dedupe = dedupe or step in setup.attempted or entry.written_by != os.getpid()
    setup.attempted.add(step)
    versions = store.list_versions(setup.name) if dedupe or spooled else []
    if dedupe:
        done = _registered(entry, versions)
        if done is not None:
            log.warning("%s: step %d of the spool is registered already (v%s): not committed twice",
                        setup.name, step, done.version)  # fmt: skip
            unspool(entry, done)
            return Committed(done, None)
    if spooled:
        replaced = _replaced_by(setup, entry, versions)
        if replaced is not None:
            _stale(setup, entry, replaced, forget)
            return None
    files = _upload(setup, entry, reached)
    version = _register(setup, entry, files, description, tags)
    log.info("%s: step %d committed as v%s (%s)", setup.name, step, version.version, entry.kind)
    reached("after_register")
    unspool(entry, version)
    reached("after_unspool")
    timings = {"checkpoint/blocking_seconds": entry.blocked_seconds,
               "checkpoint/commit_seconds": time.perf_counter() - started}  # fmt: skip
    return Committed(version, Link(files.model_id, version.version, step, entry.kind, entry.run_id, dict(entry.metrics),
                                   entry.metrics_timestamp, timings))  # fmt: skip


def _upload(setup: QueueSetup, entry: SpooledSave, reached: Reached) -> LoggedModelRef:
    """Steps 2-5: a PENDING LoggedModel, its files (the manifest last), verified, READY."""
    store, step, manifest = setup.store, entry.step, entry.manifest
    metric = setup.policy.best_metric or "validation/loss"  # what the Models tab shows in the name
    dependencies = setup.dependency_files(manifest)
    for path, record in dependencies:  # stored once per store: nothing is uploaded when it is there
        store_dependency(store, path, record, step=step)  # its crash points fire for this save's step
    files = store.create_files(
        entry.experiment_id,
        name=logged_model_name(setup.name, step, entry.kind, metric, entry.metrics.get(metric)),
        run_id=entry.run_id,
        tags={**entry.files_tags,
              **identity_tags(setup, step, entry.kind, manifest, entry.manifest_digest, entry.writer),
              **({T.DEPENDENCIES: dependencies_tag(r for _, r in dependencies)} if dependencies else {})},
    )  # fmt: skip
    reached("after_create")
    confirm_dependencies(store, dependencies, step=step)  # a gc that ran meanwhile may have retired one
    store.upload(files, entry.folder / manifest.checkpoint_file)
    for name in manifest.files:
        if name != manifest.checkpoint_file:
            store.upload(files, entry.folder / name)
    reached("mid_upload")
    store.upload(files, entry.folder / MANIFEST_FILE)
    reached("after_upload")
    _verify_upload(store, files, manifest, entry.manifest_digest, step)
    store.finalize(files)
    reached("after_finalize")
    return files


def _register(setup: QueueSetup, entry: SpooledSave, files: LoggedModelRef, description: str | None,
              tags: Mapping[str, str] | None) -> CheckpointVersion:  # fmt: skip
    """Step 6: fence, then register the version with its tags in one call (THE commit point)."""
    # Fencing, at the commit point: a process whose lease was taken over
    # registers nothing and moves no alias (its upload is an orphan that the
    # next reconcile removes).
    setup.lease.check()
    step, kind = entry.step, entry.kind
    version_tags = _version_tags(setup.policy, step, kind, entry.manifest, entry.metrics)
    return setup.store.create_version(
        setup.name,
        files,
        entry.run_id,
        tags={**version_tags, **(tags or {})},
        description=description or describe_version(
            CheckpointVersion(setup.name, 0, "", None, 0, version_tags),
            committed_reasons(kind),
            setup.policy.best_metric,
        ),
    )


def link(setup: QueueSetup, pending: Link) -> None:
    """Step 6 (link): the LoggedModel's version link, params, run output and metrics.

    The checkpoint's metrics are linked to the run's point of the same step and
    timestamp (the training loop logged it through its tracker; MLflow stores it
    once), so the run's curve gets no second point; for a queue used without a
    tracker, this link is the run's point."""
    store = setup.store
    store.link_version(pending.model_id, setup.name, pending.version)  # the UI's LoggedModel -> version link
    # The experiment's Models tab shows a LoggedModel's metrics, then its params, as columns:
    # the checkpoint's own metrics (validation) are linked to it, its step and kind are params;
    # the commit's timings go to the run only (not columns of every checkpoint).
    store.log_model_params(pending.model_id, {"step": pending.step, "kind": pending.kind})
    if pending.run_id:  # the UI's run -> LoggedModel link: the run page's "Logged models"
        store.log_model_output(pending.run_id, pending.model_id, pending.step)
        if pending.metrics:
            store.log_metrics(pending.run_id, pending.metrics, pending.step, model_id=pending.model_id,
                              timestamp_ms=pending.metrics_timestamp)  # fmt: skip
        store.log_metrics(pending.run_id, pending.timings, pending.step)


def settle(setup: QueueSetup, reached: Reached) -> None:
    """Steps 7-8: plan from the registry's state and apply (aliases, then deletions)."""
    snapshot = take_snapshot(setup.store, setup.name, with_files=False)
    # Right after a commit nothing is checked: only evidence counts as damage.
    plan = plan_retention(snapshot, setup.policy, setup.alias)
    if plan.alias_taken:
        raise ConfigError(f"alias={setup.alias!r} of {setup.name!r} was set by someone else; nothing was moved")
    apply_plan(setup.store, setup.name, plan, reached)


def _registered(entry: SpooledSave, versions: list[CheckpointVersion]) -> CheckpointVersion | None:
    """The version of this queue holding exactly ``entry``'s checkpoint, if any."""
    for v in versions:
        if v.is_queue_version and v.step == entry.step and v.sha256 == entry.checkpoint.sha256:
            return v
    return None


def _replaced_by(setup: QueueSetup, entry: SpooledSave, versions: list[CheckpointVersion]) -> CheckpointVersion | None:
    """The newest version another writer registered after ``entry``'s writer last knew
    the registry (``entry.base_version``), if any: then ``entry`` is of a replaced lineage.

    "Newest" means the newest of the committed lineage (issue 20): a version number
    alone would make a stale step the newest. Entries written before the record
    existed (no base) are committed as before.
    """
    if entry.base_version is None or not entry.writer:
        return None
    later = sorted((v for v in versions if v.is_queue_version and v.version > entry.base_version),
                   key=CheckpointVersion.newness, reverse=True)  # fmt: skip
    for v in later:
        try:
            writer = setup.store.get_files(v.model_id).tags.get(T.WRITER)
        except CheckpointNotFoundError:  # its files' record is gone: not known to be this lineage's
            writer = None
        if writer != entry.writer:
            return v
    return None


def _stale(setup: QueueSetup, entry: SpooledSave, replaced: CheckpointVersion,
           forget: Callable[[SpooledSave], None]) -> None:  # fmt: skip
    """An entry of a replaced lineage: never registered (it would become the newest and
    retire what the other writer committed). This writer's own: it lost the lease."""
    if entry.writer == setup.writer_id:
        setup.lease.check()  # says who took over, if the lease says so
        raise LeaseLostError(
            f"{replaced.label} was registered by another writer after this one's last commit "
            f"(v{entry.base_version}); this process stopped writing checkpoints"
        )
    forget(entry)
    aside = setup.spool.set_aside(entry)
    log.warning(
        "%s: step %d in the spool was written by a training that another one replaced (it has "
        "committed %s since), so it is not committed and deletes nothing: set aside in %s (to keep it, "
        "import it into another registered model: `mlflow-ddsp import %s --name %s-step-%d`; or delete it)",
        setup.name, entry.step, replaced.label, aside, aside, setup.name, entry.step,
    )  # fmt: skip


def set_aside_all(setup: QueueSetup, entries: list[SpooledSave], why: BaseException) -> None:
    """A fenced writer's uncommitted saves leave the spool: no later start commits them."""
    places = []
    for entry in entries:
        try:
            places.append(str(setup.spool.set_aside(entry)))
        except OSError:  # already set aside (or committed) by the process that replaced this one
            continue
    if places:
        log.error(
            "%s: %s; its uncommitted step%s %s %s set aside in %s, not committed (to keep one, import it "
            "into another registered model: `mlflow-ddsp import FOLDER --name OTHER`; or delete them)", setup.name,
            one_line(why), "s" if len(entries) > 1 else "", ", ".join(str(e.step) for e in entries),
            "were" if len(entries) > 1 else "was", ", ".join(places),
        )  # fmt: skip


def _verify_upload(store: RegistryStore, files: LoggedModelRef, manifest: Manifest, manifest_digest: FileDigest,
                   step: int) -> None:  # fmt: skip
    """Step 4: the store lists every file at its manifest size."""
    listed = store.list_sizes(files)
    expected = {**{n: d.size for n, d in manifest.files.items()}, MANIFEST_FILE: manifest_digest.size}
    wrong = {n: (listed.get(n), size) for n, size in expected.items() if listed.get(n) != size}
    if wrong:
        detail = ", ".join(f"{n}: {got} bytes, expected {want}" for n, (got, want) in sorted(wrong.items()))
        raise CheckpointIntegrityError(f"upload of step {step} to {files.artifact_location} is incomplete ({detail})")


def _version_tags(policy: RetentionPolicy, step: int, kind: str, manifest: Manifest,
                  metrics: Mapping[str, float]) -> dict[str, str]:  # fmt: skip
    """What identifies a checkpoint, and nothing more (the UI's version list shows these)."""
    ckpt = manifest.files[manifest.checkpoint_file]
    tags = {T.STEP: str(step), T.KIND: kind, T.SHA256: ckpt.sha256, T.SIZE: str(ckpt.size)}
    best = policy.best_metric
    if best is not None and best in metrics and math.isfinite(float(metrics[best])):
        tags[T.metric_tag(best)] = repr(float(metrics[best]))
    return tags


def identity_tags(setup: QueueSetup, step: int, kind: str, manifest: Manifest, manifest_digest: FileDigest,
                  writer: str | None = None) -> dict[str, str]:  # fmt: skip
    """The LoggedModel's tags saying who wrote it and its integrity record."""
    return {
        T.QUEUE: setup.name,
        T.WRITER: writer or setup.writer_id,
        T.STEP: str(step),
        T.KIND: kind,
        T.CHECKPOINT_FILE: manifest.checkpoint_file,
        T.MANIFEST_SHA256: manifest_digest.sha256,
    }


def parent_tags(parent: CheckpointVersion | None) -> dict[str, str]:
    """Tags naming the version a training resumed or fine-tuned from (``{}``: none)."""
    if parent is None:
        return {}
    tags = {T.PARENT_MODEL: parent.name, T.PARENT_VERSION: str(parent.version), T.PARENT_STEP: str(parent.step)}
    if parent.run_id:
        tags[T.PARENT_RUN] = parent.run_id
    return tags


def crash_hook(step: int) -> Reached:
    """The crash hook of the save of ``step``: ``reached(point)`` (``faults.py``)."""
    return lambda point: crash_point(point, step)
