"""Read checkpoints back from the registry, verified, without taking the writer lease.

Used by the queue's ``restore``, by DDP ranks other than 0, by evaluation
scripts and by model loading. A reader resolves an alias to a concrete
version number first and downloads that version: under churn the alias may
move (and its old version vanish) while a download is in progress, and the
number keeps the reader consistent.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import CheckpointIntegrityError, CheckpointNotFoundError, ConfigError
from ..optimizer import load_state
from ..state_dict import load_state_dict_checked
from .files import CONFIG_FILE, TRAINER_STATE_FILE, load_checkpoint
from .names import validate_alias
from .policy import DEFAULT_ALIAS
from .records import CheckpointVersion
from .registry import RegistryStore, auxiliary_note

__all__ = [
    "CheckpointReader",
    "RestoredCheckpoint",
    "ModelRef",
    "parse_model_uri",
    "unwrap_model",
    "load_into",
    "trained_architecture",
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


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose state_dict is saved: DDP/DataParallel/compile wrappers removed."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


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


def _architecture_in_config(config_yaml: bytes, label: str) -> Any:
    from ..config import parse_config
    from ..models import architecture

    if not config_yaml.strip():
        return None
    try:
        raw = yaml.safe_load(config_yaml)
        # an empty mapping is what a queue given no config stores: nothing to compare with
        return architecture(parse_config(raw)) if isinstance(raw, dict) and raw else None
    except (yaml.YAMLError, ConfigError) as exc:
        log.warning("%s: config.yaml not readable (%s); comparing the weights only", label, exc)
        return None


def trained_architecture(restored: RestoredCheckpoint) -> Any:
    """The :class:`~mlflow_ddsp.models.Architecture` in the checkpoint's config.yaml; None without one.

    A config.yaml that cannot be read is logged and treated as absent: the
    state_dict comparison still names any mismatch.
    """
    return _architecture_in_config(restored.config_yaml, restored.version.label)


_RESUME_ADVICE = (
    "set these keys as the checkpoint has them (mlflow-ddsp export writes its config.yaml), "
    "or train under another registered_model"
)


def load_into(
    restored: RestoredCheckpoint,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    strict: bool = True,
) -> None:
    """Load weights (and optimizer state when both sides have it) into live objects.

    A DDSP-SVC model is first compared with the architecture in the checkpoint's
    config.yaml (resume, ``--init-from``, other DDP ranks all come here); then the
    state_dict is compared key by key.

    Raises:
        ArchitectureMismatchError: the checkpoint was trained with other
            tensor-shaping config keys, every difference named.
        StateDictMismatchError: the weights do not fit ``model`` (keys and shapes named).
    """
    from ..models import DDSPModel, architecture_of, check_same_architecture, check_weights_fit

    target = unwrap_model(model)
    source = f"checkpoint {restored.version.label}"
    state = restored.checkpoint.get("model")
    hint = ""
    if isinstance(target, DDSPModel):
        current = architecture_of(target)
        trained = trained_architecture(restored)
        if trained is None:
            hint = "it has no readable config.yaml to build the model from"
            check_weights_fit(state, current, source=source, config_is="this config",
                              advice="set these keys as the weights have them")  # fmt: skip
        else:
            hint = "its weights do not match its own config.yaml"
            check_same_architecture(
                trained, current, trained_by=source, current_is="this config",
                advice=_RESUME_ADVICE,
            )  # fmt: skip
            check_weights_fit(state, trained, source=source)
    load_state_dict_checked(target, state, source=source, strict=strict, hint=hint)
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

    def check_architecture(self, current: Any, source: str | int | None = None) -> None:
        """Refuse early (before a run or a lease exists) to resume from another architecture.

        Reads only the resume point's config.yaml. A version whose files are
        missing is left to ``restore``, which falls back and reports it.

        Args:
            current: the :class:`~mlflow_ddsp.models.Architecture` about to be trained.
            source: the ``--init-from`` starting point, as for :meth:`restore`.

        Raises:
            ArchitectureMismatchError: every differing config key named.
            CheckpointNotFoundError: ``source`` does not exist.
        """
        from ..models import check_same_architecture

        version = self.resume_point(source)
        if version is None:
            return
        try:
            with tempfile.TemporaryDirectory(prefix="mlflow-ddsp-config-") as tmp:
                folder = self.store.download(self.store.files_of(version), [CONFIG_FILE], tmp)
                config_yaml = (folder / CONFIG_FILE).read_bytes()
        except CheckpointNotFoundError:
            return
        trained = _architecture_in_config(config_yaml, version.label)
        if trained is not None:
            check_same_architecture(trained, current, trained_by=f"checkpoint {version.label}", advice=_RESUME_ADVICE)

    def restore(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        source: str | int | None = None,
        strict: bool = True,
    ) -> int:
        """Load the newest intact checkpoint (or ``source``); return its step, 0 if none."""
        restored = self.fetch(source)
        if restored is None:
            return 0
        load_into(restored, model, optimizer, strict=strict)
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
            manifest, differences = self.store.inspect(version, tmp)
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
