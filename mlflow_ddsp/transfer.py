"""Move checkpoints between upstream DDSP-SVC experiment folders and the registry.

``import_experiment`` registers an upstream ``exp/<name>/`` folder
(``model_<N>.pt`` + ``config.yaml``): every checkpoint but the newest becomes a
force-saved version (upstream kept it, so it was meant to stay), the newest
takes the rolling alias. The files' bytes are registered unchanged, so
``export_version`` gives back exactly what was imported. Re-running an
import skips files already registered (matched by sha256).

``export_version`` writes ``model_<N>.pt`` + ``config.yaml`` for upstream's
inference scripts and GUI.
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
from .checkpoint import CheckpointQueue, CheckpointReader, RegistryStore
from .checkpoint.files import CONFIG_FILE, load_checkpoint, sha256_file
from .checkpoint.names import validate_experiment_name, validate_model_name
from .config import Config, parse_config, parse_yaml_config
from .errors import CheckpointIntegrityError, ConfigError, one_line
from .models import architecture, build_model_from_config, check_same_architecture, check_weights_fit
from .serving.model_files import pyfunc_files
from .state_dict import load_state_dict_checked
from .tracking import DEFAULT_EXPERIMENT

__all__ = ["ImportReport", "import_experiment", "export_version"]

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^model_(\d+)\.pt$")
IMPORTED_FROM = T.PREFIX + "imported_from"


@dataclass
class ImportReport:
    name: str
    imported: list[tuple[int, int, str]] = field(default_factory=list)  # (step, version, kind)
    skipped: list[tuple[int, int]] = field(default_factory=list)  # (step, existing version)


def _force_step(cfg: Config, step: int) -> bool:
    every = cfg.train.interval_force_save
    return every is not None and step % every == 0


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
        name, cfg.train.interval_val, None, cfg.mlflow.alias, config=config_yaml,
        store=store, experiment=experiment,
        lineage={IMPORTED_FROM: str(expdir.resolve())}, extra_files=pyfunc_files(cfg.data.sampling_rate),
    ) as queue:  # fmt: skip
        for step, path in files:
            digest = sha256_file(path).sha256
            if digest in registered:
                report.skipped.append((step, registered[digest].version))
                continue
            # Upstream kept every older file, so it stays; the newest is rolling unless its
            # step is one the config force-saves.
            keep = step != newest or queue.policy.is_force_save(step) or _force_step(cfg, step)
            kind = T.KIND_FORCE_SAVED if keep else T.KIND_ROLLING
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

    Both files are checked against their sha256 first, then written atomically.

    Raises:
        ConfigError: a file of that name exists in ``outdir`` and not ``force``
            (nothing is written), or ``outdir`` cannot be a folder.
        CheckpointIntegrityError, CheckpointNotFoundError: the version is damaged or absent.
    """
    from .checkpoint.reader import parse_model_uri
    from .destinations import check_output_dir

    ref = parse_model_uri(uri)
    reader = CheckpointReader(ref.name, tracking_uri=tracking_uri)
    version = reader.resolve(uri)
    outdir = check_output_dir(outdir, "OUTDIR")  # before any download
    names = [version.tags.get(T.CHECKPOINT_FILE) or f"model_{version.step}.pt", CONFIG_FILE]
    _check_targets(outdir, names, force)  # before any download: nothing partial on refusal
    with tempfile.TemporaryDirectory(prefix="mlflow-ddsp-export-") as tmp:
        manifest = reader.store.fetch_verified(version, tmp)  # sha256-checked
        names = [manifest.checkpoint_file, CONFIG_FILE]
        _check_targets(outdir, names, force)
        try:
            outdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the folder {outdir}: {exc.strerror or exc}") from exc
        for name in names:
            _write_atomically(Path(tmp) / name, outdir / name)
        cfg = parse_config(yaml.safe_load((Path(tmp) / CONFIG_FILE).read_text()))
    if cfg.data.encoder == "logmel":
        log.warning("%s uses the 'logmel' units of mlflow-ddsp; upstream's inference cannot compute them", version.label)
    log.info("exported %s to %s", version.label, outdir / manifest.checkpoint_file)
    return outdir / manifest.checkpoint_file
