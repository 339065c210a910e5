"""Move checkpoints between upstream DDSP-SVC experiment folders and the registry.

``import_experiment`` registers an upstream ``exp/<name>/`` folder
(``model_<N>.pt`` + ``config.yaml``): every checkpoint but the newest becomes a
force-saved version (upstream kept it, so it was meant to stay), the newest
takes the rolling alias (and is force-saved too when the config's
``train.interval_force_save`` force-saves its step). The files' bytes are
registered unchanged, so ``export_version`` gives back exactly what was imported. Re-running an
import skips files already registered (matched by sha256).

``export_version`` writes ``model_<N>.pt`` + ``config.yaml`` for upstream's
inference scripts and GUI, and, for a version that records its weight files, those
files under ``pretrain/`` where upstream's configs name them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import tags as T
from .checkpoint import CheckpointQueue, CheckpointReader
from .checkpoint.dependencies import COMPANIONS, DependencyRecord
from .checkpoint.files import CONFIG_FILE, load_checkpoint, sha256_file
from .checkpoint.reader import parse_model_uri
from .checkpoint.verify import fetch_verified
from .config import Config, parse_config, parse_yaml_config
from .destinations import check_output_dir
from .errors import CheckpointIntegrityError, ConfigError, one_line
from .models import architecture, build_model_from_config, check_same_architecture, check_weights_fit
from .names import validate_experiment_name, validate_model_name
from .serving.dependencies import fetched_dependencies, resolve_files, upstream_paths
from .serving.model_files import pyfunc_files
from .state_dict import load_state_dict_checked
from .store import DEFAULT_EXPERIMENT, RegistryStore

__all__ = ["ImportReport", "import_experiment", "export_version"]

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^model_(\d+)\.pt$")


@dataclass
class ImportReport:
    name: str
    imported: list[tuple[int, int, str]] = field(default_factory=list)  # (step, version, kind)
    skipped: list[tuple[int, int]] = field(default_factory=list)  # (step, existing version)


def _check_fits(path: Path, payload: dict, cfg: Config) -> None:
    """Load the weights into the architecture the config describes; name every mismatch."""
    advice = "copy the config.yaml it was trained with beside it"
    check_weights_fit(payload.get("model"), architecture(cfg), source=str(path), advice=advice)
    model = build_model_from_config(cfg)
    load_state_dict_checked(
        model, payload.get("model"), source=str(path), hint=f"its config.yaml does not fit; {advice}"
    )


def _check_same_architecture(store: RegistryStore, name: str, cfg: Config, config_path: Path) -> None:
    """Refuse to mix architectures in one registered model (e.g. window 1024 vs 2048)."""
    reader = CheckpointReader(name, store=store)
    versions = [v for v in reader.candidates() if v.is_queue_version]
    if not versions:
        return
    with tempfile.TemporaryDirectory(prefix="mlflow-ddsp-import-") as tmp:
        store.download(store.files_of(versions[0]), [CONFIG_FILE], tmp)
        theirs = parse_config(yaml.safe_load((Path(tmp) / CONFIG_FILE).read_text()))
    check_same_architecture(
        architecture(theirs), architecture(cfg),
        trained_by=f"registered model {name!r} ({versions[0].label})", current_is=str(config_path),
        advice="a registered model holds one architecture; import into a new name",
    )  # fmt: skip


def import_experiment(
    expdir: str | Path, name: str, *, tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT
) -> ImportReport:
    """Register the checkpoints of an upstream experiment folder as versions of ``name``.

    Raises:
        ConfigError: a bad name, a missing or unreadable config or checkpoint, or a
            checkpoint that does not fit its config (StateDictMismatchError, keys and
            shapes named) or the registered model's architecture
            (ArchitectureMismatchError); nothing is registered.
    """
    validate_model_name(name)
    validate_experiment_name(experiment)
    expdir = Path(expdir)
    config_path = expdir / CONFIG_FILE
    if not config_path.is_file():
        raise ConfigError(
            f"{config_path} not found: upstream writes config.yaml beside the checkpoints; "
            "copy the config the model was trained with there"
        )
    files = sorted(
        ((int(m.group(1)), p) for p in expdir.iterdir() if (m := _CHECKPOINT.match(p.name))), key=lambda x: x[0]
    )
    for path in [config_path, *(p for _, p in files)]:
        if path.is_symlink() or not path.is_file():
            raise ConfigError(
                f"{path} is {'a symlink' if path.is_symlink() else 'not a regular file'}; import reads only "
                "regular files inside the experiment folder (copy the file there)"
            )
    config_yaml = config_path.read_bytes()
    raw = parse_yaml_config(config_yaml, str(config_path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path} must contain a mapping of config sections, got {type(raw).__name__}")
    cfg = parse_config(raw)
    if not files:
        raise ConfigError(f"no model_<N>.pt checkpoints in {expdir}")
    payloads = {}
    for step, path in files:
        try:
            payloads[step] = load_checkpoint(path)
        except (CheckpointIntegrityError, OSError) as exc:
            raise ConfigError(f"{path} is not a readable DDSP-SVC checkpoint: {one_line(exc)[:200]}") from exc
        _check_fits(path, payloads[step], cfg)

    store = RegistryStore(tracking_uri)
    report = ImportReport(name)
    _check_same_architecture(store, name, cfg, config_path)
    registered = {v.sha256: v for v in store.list_versions(name)} if store.registered_model_exists(name) else {}
    newest = files[-1][0]
    with CheckpointQueue(
        name, cfg.train.interval_val, cfg.train.interval_force_save, cfg.mlflow.alias, config=config_yaml,
        store=store, experiment=experiment, keep_last=cfg.train.keep_last, best_metric=cfg.train.best_metric,
        best_mode=cfg.train.best_mode, lineage={T.IMPORTED_FROM: str(expdir.resolve())},
        extra_files=pyfunc_files(cfg.data.sampling_rate),
    ) as queue:  # fmt: skip
        for step, path in files:
            digest = sha256_file(path).sha256
            if digest in registered:
                report.skipped.append((step, registered[digest].version))
                continue
            # Upstream kept every older file, so it stays; the newest gets the kind a save at
            # its step gets: force-saved at a multiple of the config's train.interval_force_save
            # (or step 0), rolling otherwise (the queue's policy: rules.ForceSaved).
            kind = T.KIND_FORCE_SAVED if step != newest else queue.policy.kind(step)
            version = queue.register_file(step, path, kind=kind)  # the LoggedModel records where from
            report.imported.append((step, version.version, kind))
    return report


def _check_targets(outdir: Path, names: list[str], force: bool) -> None:
    """Refuse to replace files in ``outdir`` unless ``force``; never anything but plain files."""
    existing = [n for n in names if os.path.lexists(outdir / n)]
    odd = [n for n in existing if (outdir / n).is_dir() and not (outdir / n).is_symlink()]
    if odd:
        raise ConfigError(f"{outdir / odd[0]} is a folder; export writes a file of that name: choose another OUTDIR")
    if existing and not force:
        raise ConfigError(
            f"{outdir} already holds {', '.join(existing)}; export never overwrites your files: "
            "choose an empty folder, or pass --force to replace them"
        )


def _write_atomically(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a temp file in the same folder, then rename.

    ``os.replace`` replaces a symlink at ``target`` with the file itself: it never
    writes through the link to whatever it points at.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain copy would be (mkstemp makes 0600)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def export_version(uri: str, outdir: str | Path, *, tracking_uri: str | None = None, force: bool = False) -> Path:
    """Write ``model_<N>.pt`` and ``config.yaml`` of a version into ``outdir`` (upstream layout).

    Both files are checked against their sha256 first, then written atomically. A version whose
    manifest records its weight files (issue 21) also gets each of them, verified
    (:func:`~mlflow_ddsp.serving.dependencies.resolve_files`: a local file, the cache or the store),
    at the path upstream's configs name (``pretrain/contentvec/checkpoint_best_legacy_500.pt``,
    ``pretrain/rmvpe/model.pt``, ``pretrain/nsf_hifigan/model`` with its companions beside it: the
    recorded ``config.json``, or for a record without companions the one found beside the
    local weights), and its ``config.yaml`` names them by those relative paths, as upstream's configs do, so
    upstream's scripts run in ``outdir``. Older versions: the two files, bytes unchanged.

    Raises:
        ConfigError: a file of that name exists in ``outdir`` and not ``force``
            (nothing is written), or ``outdir`` cannot be a folder.
        CheckpointIntegrityError, CheckpointNotFoundError: the version or a weight file it
            records is damaged or absent (nothing is written).
    """
    ref = parse_model_uri(uri)
    reader = CheckpointReader(ref.name, tracking_uri=tracking_uri)
    version = reader.resolve(uri)
    outdir = check_output_dir(outdir, "OUTDIR")  # before any download
    names = [version.tags.get(T.CHECKPOINT_FILE) or f"model_{version.step}.pt", CONFIG_FILE]
    _check_targets(outdir, names, force)  # before any download: nothing partial on refusal
    with tempfile.TemporaryDirectory(prefix="mlflow-ddsp-export-") as tmp:
        manifest = fetch_verified(reader.store, version, tmp)  # sha256-checked
        cfg = parse_config(yaml.safe_load((Path(tmp) / CONFIG_FILE).read_text()))
        sources = {manifest.checkpoint_file: Path(tmp) / manifest.checkpoint_file, CONFIG_FILE: Path(tmp) / CONFIG_FILE}
        records = fetched_dependencies(reader.store, version, manifest)
        sources.update(_upstream_dependencies(reader.store, version.label, records, Path(tmp)))
        _check_targets(outdir, list(sources), force)
        try:
            for name in sources:
                (outdir / name).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the folder {outdir}: {exc.strerror or exc}") from exc
        for name, source in sources.items():
            _write_atomically(source, outdir / name)
    if cfg.data.encoder == "logmel":
        log.warning("%s uses the 'logmel' units of mlflow-ddsp; upstream's inference cannot compute them", version.label)
    log.info("exported %s to %s", version.label, outdir / manifest.checkpoint_file)
    return outdir / manifest.checkpoint_file


def _upstream_dependencies(store: RegistryStore, label: str, records: list[DependencyRecord], tmp: Path) -> dict[str, Path]:
    """``{relative path in the export: verified source}`` for the weight files a version records,
    with ``config.yaml`` replaced by one naming them there (``tmp/config.yaml`` is rewritten);
    ``{}`` for a version without records. Every file is resolved before anything is written."""
    if not records:
        return {}
    config_yaml = (tmp / CONFIG_FILE).read_bytes()
    cfg = parse_config(parse_yaml_config(config_yaml, CONFIG_FILE))
    raw = parse_yaml_config(config_yaml, CONFIG_FILE)  # rewritten: its own copy, as the user wrote it
    paths = resolve_files(store, records, cfg, label=label)
    layout = {role: rel for role, rel in upstream_paths(cfg, records).items() if role in paths}
    out = {rel: paths[role] for role, rel in layout.items()}
    by_role = {record.role: record for record in records}
    for role, rel in layout.items():  # the companions beside their file (resolved with it, verified)
        names = [c.file for c in by_role[role].companions] or COMPANIONS.get(role, ())  # older records: as found
        for name in names:
            if (paths[role].parent / name).is_file():
                out[str(Path(rel).parent / name)] = paths[role].parent / name
            else:
                log.warning("%s: no %s beside its %s weights %s; upstream needs it beside %s",
                            label, name, role, paths[role], rel)  # fmt: skip
    if "encoder" in layout:
        raw.setdefault("data", {})["encoder_ckpt"] = layout["encoder"]
    if "f0" in layout and "f0_ckpt" in (raw.get("data") or {}):  # upstream's rmvpe path is fixed: the key is ours
        raw["data"]["f0_ckpt"] = layout["f0"]
    if "vocoder" in layout:
        raw.setdefault("vocoder", {})["ckpt"] = layout["vocoder"]
    (tmp / CONFIG_FILE).write_bytes(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True).encode())
    return out
