"""The weight files a version converts with, resolved wherever a version is used (issue 21, point 3).

A version whose manifest records dependencies (:class:`~mlflow_ddsp.checkpoint.dependencies.DependencyRecord`:
``encoder``, ``f0``, ``vocoder``) is used with exactly those bytes: ``infer``, ``serve``, the pyfunc
loader (``mlflow.pyfunc.load_model``, ``mlflow models serve``), ``compare`` and ``export`` all call
:func:`resolve_dependencies`, which returns the version's config with ``data.encoder_ckpt``,
``data.f0_ckpt`` and ``vocoder.ckpt`` naming verified local files. For each record, in this order:

1. an explicit override: the command's flag (``--encoder-ckpt``, ``--vocoder-ckpt``), else
   ``MLFLOW_DDSP_ENCODER_CKPT`` / ``MLFLOW_DDSP_VOCODER_CKPT`` (:data:`OVERRIDE_ENV`). It must exist and
   hold the recorded bytes (sha256), else the command stops in one line naming the setting and both
   digests: the user asked for that file, it is never silently replaced;
2. the config's own path (the training machine's): used if present with the recorded bytes; present
   with other bytes, refused naming both digests (a different file at the same path is exactly the
   silent garbage issue 21 is about); absent, the next step;
3. the per-user cache, else a download from the store into it
   (:func:`~mlflow_ddsp.checkpoint.dependency_cache.resolve_dependency`: verified, atomic).

A record's companions (the vocoder's ``config.json``, which its loader reads beside the weights:
:data:`~mlflow_ddsp.checkpoint.dependencies.COMPANIONS`) are checked with its file in steps 1 and 2:
one beside it with other bytes is refused naming it and both digests; one absent sends the record to
step 3, which fetches the file and its companions together. Records written before companions (a
vocoder without) are resolved as before: its ``config.json`` must then be local.

The store is opened only when step 3 has to download: a serving box whose cache holds the files
starts without reaching the tracking server. An f0 network shipped inside a Python package (fcpe,
crepe) cannot be pointed elsewhere: its installed file is checked when present, and left to the
extractor's own error when not.

Versions written before issue 21 (no record in their manifest) are left exactly as they were:
nothing is hashed, nothing opened, local paths and environment as before.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..checkpoint.dependencies import ROLES, DependencyRecord, companions_beside
from ..checkpoint.dependency_cache import resolve_dependency
from ..checkpoint.dependency_attach import version_dependencies as recorded_dependencies
from ..checkpoint.files import Manifest, sha256_file
from ..checkpoint.verify import trusted_manifest
from ..config import Config, parse_config
from ..errors import CheckpointIntegrityError, ConfigError
from ..features.f0 import F0_CKPT_EXTRACTORS
from ..features.rmvpe import DEFAULT_RMVPE_CKPT
from ..store import RegistryStore
from ..store.records import CheckpointVersion
from ..weights import feature_weight_files, weight_source

__all__ = [
    "OVERRIDE_ENV",
    "manifest_dependencies",
    "fetched_dependencies",
    "registered_dependencies",
    "resolve_files",
    "resolve_dependencies",
    "converter_files",
    "check_same_dependencies",
    "upstream_paths",
]

#: role -> the environment variable that names its file on this machine (checked like a flag)
OVERRIDE_ENV = {"encoder": "MLFLOW_DDSP_ENCODER_CKPT", "vocoder": "MLFLOW_DDSP_VOCODER_CKPT"}

StoreSource = RegistryStore | Callable[[], RegistryStore]


def _records(items: Iterable[Any], label: str) -> list[DependencyRecord]:
    try:
        return [r if isinstance(r, DependencyRecord) else DependencyRecord.from_dict(dict(r)) for r in items]
    except ConfigError as exc:
        raise CheckpointIntegrityError(f"{label}: manifest.json has an invalid dependency record: {exc}") from None


def manifest_dependencies(manifest: Manifest, *, label: str = "the version") -> list[DependencyRecord]:
    """The dependency records of ``manifest`` alone (``[]`` for one written before issue 21): what a
    downloaded model folder knows without its store (the pyfunc loader).

    Raises:
        CheckpointIntegrityError: a record is not role/sha256/size/file (one line, naming ``label``).
    """
    return _records(manifest.dependencies or (), label)


def fetched_dependencies(store: RegistryStore, version: CheckpointVersion, manifest: Manifest) -> list[DependencyRecord]:
    """:func:`registered_dependencies` of a version whose verified ``manifest`` is at hand (no download).

    Raises:
        CheckpointIntegrityError, CheckpointNotFoundError: as :func:`registered_dependencies`.
    """
    return _records(recorded_dependencies(store, version, manifest), version.label)


def registered_dependencies(store: RegistryStore, version: CheckpointVersion) -> list[DependencyRecord]:
    """The dependency records of a registered ``version``: its manifest's (checked against the
    sha256 recorded at registration; one small download, ``manifest.json`` alone), else those
    ``mlflow-ddsp attach-dependencies`` tagged its LoggedModel with
    (:func:`mlflow_ddsp.checkpoint.dependency_attach.version_dependencies`); ``[]``: none.

    Raises:
        CheckpointIntegrityError: the manifest changed since registration, or a record is invalid.
        CheckpointNotFoundError: the manifest (or the LoggedModel) is gone, or the tag names a
            dependency the store no longer holds.
    """
    with tempfile.TemporaryDirectory(prefix="mlflow-ddsp-manifest-") as tmp:
        _, _, manifest = trusted_manifest(store, version, tmp)
    return fetched_dependencies(store, version, manifest)


class _LazyStore:
    """Opens the store on first use: resolving from a local file or the cache needs none."""

    def __init__(self, source: StoreSource):
        self._source, self._store = source, source if isinstance(source, RegistryStore) else None

    def __getattr__(self, name: str) -> Any:
        if self._store is None:
            self._store = self._source()
        return getattr(self._store, name)


def _absolute(value: str | os.PathLike) -> Path:
    return Path(value).expanduser().absolute()  # relative to the current folder, as the loaders take it


def _candidate(role: str, cfg: Config, overrides: Mapping[str, tuple[str, str | None]]) -> tuple[str, Path | None, bool]:
    """``(setting, local path or None, explicit)`` for ``role``: a flag, else its variable, else the config."""
    setting, value = overrides.get(role, ("", None))
    if value:
        return setting, _absolute(value), True
    env = OVERRIDE_ENV.get(role)
    if env and os.environ.get(env):
        return env, _absolute(os.environ[env]), True
    if role == "encoder":
        return ROLES[role], _absolute(cfg.data.encoder_ckpt) if cfg.data.encoder_ckpt else None, False
    if role == "vocoder":
        return ROLES[role], _absolute(cfg.vocoder.ckpt) if cfg.vocoder.ckpt else None, False
    if cfg.f0_extractor in F0_CKPT_EXTRACTORS:
        return ROLES[role], _absolute(cfg.data.f0_ckpt or DEFAULT_RMVPE_CKPT), False
    packaged = [path for r, _, path in feature_weight_files(cfg) if r == "f0"]
    return "data.f0_extractor", packaged[0] if packaged else None, False


def _explicit(setting: str, path: Path, record: DependencyRecord, label: str, store: Any) -> Path:
    if not path.is_file():
        raise ConfigError(
            f"{setting}={path}: no such file; {label} needs {record.label} ({record.file}, {record.size} bytes): "
            "name that file, or unset it to fetch the version's own from the store"
        )
    found = sha256_file(path, progress=True).sha256
    if found != record.sha256:
        raise CheckpointIntegrityError(
            f"{setting}={path} has sha256 {found[:12]}, but {label} was trained with {record.role} weights "
            f"sha256 {record.sha256[:12]}; name that file, or unset {setting} to fetch it from the store"
        )
    if companions_beside(record, path, setting=setting):
        return path
    return resolve_dependency(store, record)  # its companions are not beside it: both from the cache or store


def resolve_files(
    store: StoreSource, records: Sequence[DependencyRecord], cfg: Config, *,
    overrides: Mapping[str, tuple[str, str | None]] | None = None, label: str = "the version",
) -> dict[str, Path]:  # fmt: skip
    """``{role: verified local file}`` for each of ``records`` (the order in the module docstring).

    Args:
        store: the version's store, or a function opening it (called only to download).
        overrides: ``{role: (setting, path or None)}`` from the command line, e.g.
            ``{"encoder": ("--encoder-ckpt", "/w/cv.pt")}``.
        label: how messages name the version (``voice v3 (step 4000)``).
    Raises:
        ConfigError: an explicit override names no file.
        CheckpointIntegrityError: an override or the config's file holds other bytes, or a
            companion beside it does (the file and both digests), or the stored copy is damaged.
        CheckpointNotFoundError: the file is nowhere (role, digest, how to provide it).
        TrackingServerUnreachable: a download was needed and the store does not answer.
    """
    lazy = _LazyStore(store)
    out: dict[str, Path] = {}
    for record in records:
        setting, local, explicit = _candidate(record.role, cfg, overrides or {})
        if explicit:
            out[record.role] = _explicit(setting, local, record, label, lazy)
        elif setting == "data.f0_extractor":  # a packaged network: checked where it is, never replaced
            if local is not None and local.is_file():
                out[record.role] = resolve_dependency(lazy, record, local=local)
        else:
            out[record.role] = resolve_dependency(lazy, record, local=local)
    return out


def _parse(config: Config | bytes | str) -> Config:
    if isinstance(config, Config):
        return config
    raw = yaml.safe_load(config) if config and config.strip() else None
    if not isinstance(raw, dict):
        raise ConfigError("the version's config.yaml must contain a mapping of config sections")
    return parse_config(raw)


def resolve_dependencies(
    store: StoreSource, records: Sequence[DependencyRecord], cfg: Config | bytes | str, *,
    overrides: Mapping[str, tuple[str, str | None]] | None = None, label: str = "the version",
) -> Config | bytes | str:  # fmt: skip
    """The version's config with ``data.encoder_ckpt``, ``data.f0_ckpt`` (rmvpe) and ``vocoder.ckpt``
    naming the verified local files of ``records`` (:func:`resolve_files`).

    With no records (a version written before issue 21) ``cfg`` is returned as it was given
    (yaml bytes stay bytes), and nothing is hashed or opened.

    Raises:
        ConfigError, CheckpointIntegrityError, CheckpointNotFoundError: see :func:`resolve_files`.
    """
    if not records:
        return cfg
    cfg = _parse(cfg)
    paths = resolve_files(store, records, cfg, overrides=overrides, label=label)
    data: dict[str, str] = {}
    if "encoder" in paths:
        data["encoder_ckpt"] = str(paths["encoder"])
    if "f0" in paths and cfg.f0_extractor in F0_CKPT_EXTRACTORS:
        data["f0_ckpt"] = str(paths["f0"])
    cfg = cfg.replace(data=dataclasses.replace(cfg.data, **data))
    if "vocoder" in paths:
        cfg = cfg.replace(vocoder=dataclasses.replace(cfg.vocoder, ckpt=str(paths["vocoder"])))
    return cfg


def converter_files(
    records: Iterable[DependencyRecord], cfg: Config, *, encoder_ckpt: str | None = None,
    vocoder_ckpt: str | None = None,
) -> dict[str, str | None]:
    """The ``encoder_ckpt`` and ``vocoder_ckpt`` to hand ``VoiceConverter.from_checkpoint`` once
    :func:`resolve_dependencies` gave ``cfg``: for a role the version records, the verified file
    ``cfg`` now names (an override was checked, and consumed, there: passing it again, or letting
    the converter read ``MLFLOW_DDSP_VOCODER_CKPT`` itself, would bypass what resolution chose,
    e.g. the cached weights with their ``config.json`` when the named ones have none beside
    them); for a role it does not record (versions from before issue 21), the override as given.
    """
    roles = {r.role for r in records}
    return {
        "encoder_ckpt": cfg.data.encoder_ckpt if "encoder" in roles else encoder_ckpt,
        "vocoder_ckpt": cfg.vocoder.ckpt if "vocoder" in roles else vocoder_ckpt,
    }


def check_same_dependencies(
    records: Iterable[DependencyRecord], current: Iterable[tuple[str, str]], *, label: str, setting: str = "the config"
) -> None:
    """Refuse to continue ``label`` (a resume) with other weight files than it was trained with.

    Args:
        records: the version's dependency records.
        current: ``(role, sha256)`` of the files the run uses now (e.g. its features' dependencies).
    Raises:
        ConfigError: a role recorded by both with other digests (one line, both named).
    """
    now = dict(current)
    for record in records:
        if record.role in now and now[record.role] != record.sha256:
            raise ConfigError(
                f"{label} was trained with {record.role} weights sha256 {record.sha256[:12]}, {setting} names "
                f"sha256 {now[record.role][:12]} ({ROLES[record.role]}); continue with the same file, or start a "
                "new registered model"
            )


def upstream_paths(cfg: Config, records: Iterable[DependencyRecord]) -> dict[str, str]:
    """``{role: path relative to an exported folder}`` where upstream's configs name each file.

    ``pretrain/contentvec/checkpoint_best_legacy_500.pt`` (``hubert/hubert-soft-0d54a1f4.pt``),
    ``pretrain/rmvpe/model.pt`` (upstream's fixed path), ``pretrain/nsf_hifigan/model``: the release
    paths in :data:`mlflow_ddsp.weights.WEIGHT_SOURCES` (upstream's README, "Configuring the
    pretrained model"); an encoder without one goes to ``pretrain/<data.encoder>/<file>``. A packaged
    f0 network (fcpe, crepe) is left out: upstream installs it with its package.
    """
    out: dict[str, str] = {}
    for record in records:
        if record.role == "encoder":
            source = weight_source(cfg.data.encoder)
            known = source is not None and source.file.startswith("pretrain/")
            out["encoder"] = source.file if known else f"pretrain/{cfg.data.encoder}/{record.file}"
        elif record.role == "f0" and cfg.f0_extractor in F0_CKPT_EXTRACTORS:
            out["f0"] = DEFAULT_RMVPE_CKPT
        elif record.role == "vocoder":
            out["vocoder"] = weight_source("nsf-hifigan").file
    return out
