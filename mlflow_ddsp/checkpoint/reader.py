"""Read checkpoints back from the registry, verified, without taking the writer lease.

Used by the queue's ``restore``, by DDP ranks other than 0, by evaluation
scripts and by model loading. A reader resolves an alias to a concrete
version number first and downloads that version: under churn the alias may
move (and its old version vanish) while a download is in progress, and the
number keeps the reader consistent.

The reader knows bytes, versions and state_dicts, whatever the model. Whether a
checkpoint fits a DDSP-SVC model (its config.yaml's architecture, the shapes its
weights reveal) needs the config and the networks, which sit above the queue: the
caller passes that check in (:data:`FitCheck`; training's is
:func:`mlflow_ddsp.training.checkpoint_fit.check_fit`).
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import CheckpointIntegrityError, CheckpointNotFoundError, ConfigError
from ..optimizer import load_state
from ..names import DEFAULT_ALIAS, validate_alias
from ..state_dict import load_state_dict_checked
from ..wrappers import unwrap_model
from .files import CONFIG_FILE, TRAINER_STATE_FILE, load_checkpoint
from ..store import CheckpointVersion, RegistryStore
from .verify import auxiliary_note, inspect

__all__ = [
    "CheckpointReader",
    "RestoredCheckpoint",
    "ModelRef",
    "FitCheck",
    "parse_model_uri",
    "load_into",
]

log = logging.getLogger(__name__)

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+|latest)|@(?P<alias>[A-Za-z0-9_-]+))$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/NAME/7``, ``models:/NAME/latest`` or ``models:/NAME@alias``."""

    name: str
    version: int | None = None  # None with alias None: the highest version ("latest")
    alias: str | None = None


def parse_model_uri(uri: str) -> ModelRef:
    match = _MODEL_URI.match(uri.strip()) if isinstance(uri, str) else None
    if not match:
        raise ConfigError(
            f"model URI {uri!r} is not supported: use models:/NAME/VERSION, "
            "models:/NAME@ALIAS or models:/NAME/latest"
        )
    version = match["version"]
    return ModelRef(
        name=match["name"],
        version=int(version) if version and version != "latest" else None,
        alias=match["alias"],
    )


@dataclass
class RestoredCheckpoint:
    """A verified checkpoint in memory."""

    version: CheckpointVersion
    checkpoint: dict[str, Any]  # upstream format: {'global_step', 'model', 'optimizer'?}
    config_yaml: bytes
    skipped: list[tuple[CheckpointVersion, str]] = field(default_factory=list)  # failed candidates
    trainer_state: dict[str, Any] | None = None  # trainer_state.pt, when the version has one

    @property
    def step(self) -> int:
        return int(self.checkpoint.get("global_step", self.version.step or 0))


#: A model-specific check run before the state_dict comparison: given the checkpoint and the
#: (unwrapped) model, it raises where they cannot fit (e.g. ArchitectureMismatchError) and
#: returns a hint added to a StateDictMismatchError's message ("" for none).
FitCheck = Callable[[RestoredCheckpoint, torch.nn.Module], str]


def load_into(
    restored: RestoredCheckpoint,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    strict: bool = True,
    check: FitCheck | None = None,
) -> None:
    """Load weights (and optimizer state when both sides have it) into live objects.

    ``check`` first (resume, ``--init-from``, other DDP ranks pass training's DDSP-SVC
    architecture check); then the state_dict is compared key by key.

    Raises:
        StateDictMismatchError: the weights do not fit ``model`` (keys and shapes named).
        Whatever ``check`` raises.
    """
    target = unwrap_model(model)
    hint = check(restored, target) if check is not None else ""
    state = restored.checkpoint.get("model")
    load_state_dict_checked(target, state, source=f"checkpoint {restored.version.label}", strict=strict, hint=hint)
    if optimizer is not None and "optimizer" in restored.checkpoint:
        load_state(optimizer, restored.checkpoint["optimizer"])  # keeps the live optimizer fused


class CheckpointReader:
    """Resolve, download and verify checkpoints of one registered model.

    Args:
        registered_model: the queue's registered model name.
        alias: the rolling alias resumes start from.
        store: an existing store (shares its client); default: a new one for ``tracking_uri``.
    """

    def __init__(
        self,
        registered_model: str,
        alias: str = DEFAULT_ALIAS,
        *,
        tracking_uri: str | None = None,
        store: RegistryStore | None = None,
    ):
        self.name = registered_model
        self.alias = validate_alias(alias)
        self.store = store or RegistryStore(tracking_uri)

    def resolve(self, source: str | int) -> CheckpointVersion:
        """A concrete version for ``source``: a version number of this model, or a models:/ URI."""
        if isinstance(source, int) and not isinstance(source, bool):
            ref = ModelRef(self.name, version=source)
        else:
            ref = parse_model_uri(str(source))
        if ref.alias is not None:
            version = self.store.alias_version(ref.name, ref.alias)
            if version is None:
                raise CheckpointNotFoundError(f"registered model {ref.name!r} has no alias {ref.alias!r}")
        elif ref.version is None:
            versions = self.store.list_versions(ref.name)
            if not versions:
                raise CheckpointNotFoundError(f"registered model {ref.name!r} has no versions")
            version = versions[-1].version
        else:
            version = ref.version
        return self.store.get_version(ref.name, version)

    def candidates(self) -> list[CheckpointVersion]:
        """Resume order: the alias's version, then every other queue version newest first."""
        if not self.store.registered_model_exists(self.name):
            return []
        ours = [v for v in self.store.list_versions(self.name) if v.is_queue_version]
        ours.sort(key=CheckpointVersion.newness, reverse=True)
        aliased = self.store.alias_version(self.name, self.alias)
        return sorted(ours, key=lambda v: v.version != aliased)  # stable: alias first

    def fetch(self, source: str | int | None = None) -> RestoredCheckpoint | None:
        """Download and verify a checkpoint; None when there is nothing to resume.

        Without ``source``, a candidate that is missing files or fails its
        sha256 is reported and the next newest is tried. An explicit
        ``source`` is never substituted: it must be intact.
        """
        pinned = source is not None
        candidates = [self.resolve(source)] if pinned else self.candidates()
        skipped: list[tuple[CheckpointVersion, str]] = []
        for version in candidates:
            try:
                restored = self._fetch_one(version)
            except (CheckpointIntegrityError, CheckpointNotFoundError) as exc:
                if pinned:
                    raise
                log.warning("%s; falling back to the next newest checkpoint", exc)
                skipped.append((version, str(exc)))
                continue
            restored.skipped = skipped
            if skipped:
                log.warning(
                    "resuming from %s instead of %s", version.label, ", ".join(v.label for v, _ in skipped)
                )
            return restored
        if skipped:
            log.warning("no intact checkpoint of %r: starting from scratch", self.name)
        return None

    def resume_point(self, source: str | int | None = None) -> CheckpointVersion | None:
        """The version a queue's ``restore(source=...)`` starts from: this model's newest, else ``source``."""
        own = self.candidates()
        if own:
            return own[0]
        return self.resolve(source) if source is not None else None

    def fetch_resume_point(self, source: str | int | None = None) -> RestoredCheckpoint | None:
        """What a queue's ``restore(source=...)`` loads: :meth:`fetch` of ``source`` while this
        registered model has no checkpoint of its own; else of its own newest (said in one line,
        as upstream uses ``model_0.pt`` only when nothing newer exists)."""
        if source is not None:
            own = self.candidates()
            if own:
                log.warning(
                    "%s already has checkpoints: resuming from %s, not from the starting point %s "
                    "(used only while it has none)", self.name, own[0].label, source,
                )  # fmt: skip
                source = None
        return self.fetch(source)

    def resume_config(self, source: str | int | None = None) -> tuple[CheckpointVersion, bytes] | None:
        """The resume point (:meth:`resume_point`) and its config.yaml, read alone; None without one.

        For refusing early (before a run or a lease exists) to resume from another
        architecture. A version whose config.yaml is missing gives None: ``restore``
        falls back and reports it.

        Raises:
            CheckpointNotFoundError: ``source`` does not exist.
        """
        version = self.resume_point(source)
        if version is None:
            return None
        try:
            with tempfile.TemporaryDirectory(prefix="mlflow-ddsp-config-") as tmp:
                folder = self.store.download(self.store.files_of(version), [CONFIG_FILE], tmp)
                return version, (folder / CONFIG_FILE).read_bytes()
        except CheckpointNotFoundError:
            return None

    def restore(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        source: str | int | None = None,
        strict: bool = True,
        check: FitCheck | None = None,
    ) -> int:
        """Load the newest intact checkpoint (or ``source``); return its step, 0 if none.

        ``check``: a model-specific fit check (:data:`FitCheck`), as for :func:`load_into`.
        """
        restored = self.fetch(source)
        if restored is None:
            return 0
        load_into(restored, model, optimizer, strict=strict, check=check)
        return restored.step

    def _fetch_one(self, version: CheckpointVersion) -> RestoredCheckpoint:
        """Download and check ``version``: its essential files must match, others only are reported.

        Issue 20 ("Nothing lost"): training resumes from a version whose weights and
        config are as registered even when an auxiliary file (validation media,
        ``MLmodel``, ``trainer_state.pt``...) differs; one line names that file. A
        changed ``trainer_state.pt`` is not loaded (the resume is then not bit-exact).
        Serving does not come here: it checks every byte (``fetch_verified``).

        Raises:
            CheckpointIntegrityError: an essential file or the manifest differs.
            CheckpointNotFoundError: an essential file or the manifest is gone.
        """
        with tempfile.TemporaryDirectory(prefix="mlflow-ddsp-restore-") as tmp:
            manifest, differences = inspect(self.store, version, tmp)
            essential = [d for d in differences if d.name in manifest.essential_files]
            if any(d.found is None for d in essential):
                raise CheckpointNotFoundError(f"{version.label}: " + "; ".join(d.describe() for d in essential))
            if essential:
                raise CheckpointIntegrityError(f"{version.label}: " + "; ".join(d.describe() for d in essential))
            if differences:
                log.warning("%s", auxiliary_note(version, differences))
            changed = {d.name for d in differences}
            checkpoint = load_checkpoint(Path(tmp) / manifest.checkpoint_file)
            config_path = Path(tmp) / CONFIG_FILE
            config_yaml = config_path.read_bytes() if config_path.exists() else b""
            trainer_state = None
            if TRAINER_STATE_FILE in manifest.files and TRAINER_STATE_FILE not in changed:
                trainer_state = torch.load(Path(tmp) / TRAINER_STATE_FILE, map_location="cpu", weights_only=True)
        return RestoredCheckpoint(
            version=version, checkpoint=checkpoint, config_yaml=config_yaml, trainer_state=trainer_state
        )
