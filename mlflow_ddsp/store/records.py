"""Plain records of registry state: what the store returns, and what the pure planners read.

They live here, at the bottom of the house, so that ``checkpoint/`` (planners, queue,
verification) and ``store/`` (which builds them from MLflow's entities) both import
them downward. ``mlflow_ddsp.checkpoint.records`` re-exports them for now.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Mapping

from .. import tags as T

#: values of the keep tag that keep a version (any case); any other value but KEEP_NO keeps it too
KEEP_YES = frozenset({"true", "yes", "y", "1", "on"})
#: values that do not (the tag removed or set to one of these)
KEEP_NO = frozenset({"", "false", "no", "n", "0", "off"})

__all__ = ["CheckpointVersion", "QueueModel", "Integrity", "KEEP_YES", "KEEP_NO"]


class Integrity(enum.Enum):
    """What a check of a version's files found. One meaning everywhere (reconcile, gc,
    restore, verify): a version is intact when its ``manifest.json`` has the sha256
    recorded at registration and every file it lists has its recorded sha256.

    Only the essential files (``model_<N>.pt``, ``config.yaml``:
    :attr:`~mlflow_ddsp.checkpoint.files.Manifest.essential_files`) decide a
    checkpoint's fate (issue 20, "Nothing lost"): a version whose only differences
    are auxiliary files is ``AUXILIARY``, as usable as an intact one for keeping and
    resuming; ``verify`` still reports it and serving still refuses it.
    """

    INTACT = "intact"
    MISSING = "missing"  # no file of the version is in the store (deleted, or the store is not mounted)
    DAMAGED = "damaged"  # an essential file, or the manifest, is not as registered (changed, truncated, gone)
    AUXILIARY = "auxiliary"  # checkpoint and config as registered; an auxiliary file differs or is gone

    @property
    def usable(self) -> bool:
        """The checkpoint can be kept and resumed from: its weights and config are as registered."""
        return self in (Integrity.INTACT, Integrity.AUXILIARY)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class CheckpointVersion:
    """One model version, as the registry describes it.

    ``kind`` is None for versions the queue did not write (someone registered
    them by hand); such versions are never touched.
    """

    name: str
    version: int
    source: str
    run_id: str | None
    created_ms: int
    tags: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    # Filled by a single-version read (get_model_version); a search does not return them
    # on every backend, so plans take aliases from the registered model instead.
    aliases: tuple[str, ...] = ()

    @property
    def step(self) -> int | None:
        return _int_or_none(self.tags.get(T.STEP))

    @property
    def kind(self) -> str | None:
        kind = self.tags.get(T.KIND)
        return kind if kind in T.KINDS and self.step is not None else None

    @property
    def sha256(self) -> str | None:
        return self.tags.get(T.SHA256)

    @property
    def size(self) -> int | None:
        return _int_or_none(self.tags.get(T.SIZE))

    @property
    def manifest_sha256(self) -> str | None:
        return self.tags.get(T.MANIFEST_SHA256)

    @property
    def keep(self) -> bool:
        """A person asked to keep this version (tag ``mlflow_ddsp.keep``).

        ``true``, ``yes``, ``1``, ``on`` (any case) keep it; so does any value that is not
        clearly a no (``false``, ``no``, ``0``, ``off``, empty): a person who set the tag
        meant something, and a version kept by mistake costs disk, one deleted by mistake
        is lost (:attr:`keep_value_unclear` lets the planner say so).
        """
        return self.tags.get(T.KEEP, "").strip().lower() not in KEEP_NO

    @property
    def keep_value_unclear(self) -> str | None:
        """The keep tag's value when it is neither a yes nor a no word (it still keeps the version)."""
        value = self.tags.get(T.KEEP)
        if value is None or value.strip().lower() in KEEP_NO | KEEP_YES:
            return None
        return value

    def metric(self, name: str) -> float | None:
        """The value of metric ``name`` recorded on this version, if finite."""
        try:
            value = float(self.tags[T.metric_tag(name)])
        except (KeyError, ValueError):
            return None
        return value if math.isfinite(value) else None

    @property
    def model_id(self) -> str | None:
        """The LoggedModel holding the files (``source`` is ``models:/<model_id>``)."""
        prefix = "models:/m-"
        if self.source.startswith(prefix) and "/" not in self.source[len("models:/") :]:
            return self.source[len("models:/") :]
        return None

    @property
    def is_queue_version(self) -> bool:
        return self.kind is not None and self.model_id is not None

    @property
    def label(self) -> str:
        step = f" (step {self.step})" if self.step is not None else ""
        return f"{self.name} v{self.version}{step}"

    def newness(self) -> int:
        """Sort key for "newest": the latest registration, i.e. the highest version number.

        Version numbers are assigned at the commit point and never reused, so they
        order checkpoints as training produced them, even when a run fine-tuned
        from an older version and re-saved lower steps.
        """
        return self.version


@dataclass(frozen=True)
class QueueModel:
    """A LoggedModel written by a checkpoint queue (tagged ``mlflow_ddsp.queue``)."""

    model_id: str
    status: str  # "PENDING" | "READY" | "FAILED"
    artifact_location: str
    created_ms: int
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def step(self) -> int | None:
        return _int_or_none(self.tags.get(T.STEP))
