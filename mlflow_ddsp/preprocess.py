"""Preprocess a dataset: per-recording f0, volume and units, as upstream DDSP-SVC stores them.

For each of ``data.train_path`` and ``data.valid_path`` (layout in
:mod:`mlflow_ddsp.corpus`), every recording ``<root>/audio/<rel>`` is loaded mono at
``data.sampling_rate`` and gets

- ``<root>/volume/<rel>.npy``  float32 ``[n_frames]``      RMS per ``block_size`` frame;
- ``<root>/f0/<rel>.npy``      float32 ``[n_frames]``      Hz from ``cfg.f0_extractor``
  between ``f0_min`` and ``f0_max``, unvoiced frames linearly interpolated;
- ``<root>/units/<rel>.npy``   float32 ``[n_frames, C]``   content units of ``data.encoder``;

with ``n_frames = n_samples // block_size + 1``. Models trained on the vocoder's mel
(``model.type`` RectifiedFlow or DiffusionFast, upstream 5.0/6.x ``preprocess.py``,
branch master) also get

- ``<root>/mel/<rel>.npy``       float32 ``[n_frames - 1, M]``  the vocoder's log-mel
  (:meth:`mlflow_ddsp.vocoder.Vocoder.extract`) of the recording;
- ``<root>/aug_mel/<rel>.npy``   float32 ``[n_frames - 1, M]``  the same of the recording
  times ``10 ** u``, ``u ~ U(-1, min(1, log10(1 / peak)))``, key-shifted by ``k ~ U(-5, 5)``
  semitones when ``model.use_pitch_aug`` (else ``k = 0``);
- ``<root>/aug_vol/<rel>.npy``   float32 ``[n_frames]``         volume of the gained copy;
- ``<root>/aug_shift/<rel>.npy`` float64 ``[1]``                ``k`` (upstream: ``pitch_aug_dict.npy``).

``u`` and ``k`` are drawn from a generator seeded by ``(train.seed, rel)``, so the
same data and config give the same bytes. The vocoder's ``config.json`` (beside
``vocoder.ckpt``; its weights are not needed) must match ``data.sampling_rate``,
``data.block_size`` and have 128 mel bins: otherwise preprocess refuses to start
(upstream silently writes no mels). As upstream does, a recording in
which no frame is voiced is moved to ``<root>/skip/<rel>``. Unlike upstream, an
unreadable or empty recording does not stop the batch: it is reported by name and
the others are processed.

Re-running is cheap. ``<root>/.mlflow_ddsp_preprocess.json`` records, for every
finished recording, its size, mtime and sha256, the byte sizes of its three
outputs, and (once for the folder) a digest of every setting that shapes the
features (for mel models also the vocoder's config.json, ``use_pitch_aug`` and
``train.seed``). Beside it, ``dependencies`` lists the weight files that made the
features (:func:`mlflow_ddsp.weights.feature_weight_files`: the content encoder, role
``encoder``; the f0 network, role ``f0``, for rmvpe/fcpe/crepe), each with its role,
sha256, size, path and mtime, and ``content_digest`` is the settings' digest with
those sha256 in place of the files' paths (:meth:`FeatureSettings.content_digest`).
Each file is hashed once per run, and not at all when its path, size and mtime are
the recorded ones. A recording is skipped when the content digest is unchanged, its size and
mtime match (or, after a ``touch``/copy, its sha256 does) and its three outputs
exist with the recorded sizes. Changing a feature setting, or a weight file's bytes,
recomputes everything; touching or moving a weight file recomputes nothing. A manifest
written before the digests were recorded is taken as it was (its settings digest, with the
weight files' size and mtime, decides) and gets the digests of the current files.
Training checks them (:func:`mlflow_ddsp.training.data.check_recordings`).
Each ``.npy`` is written to a temporary name and renamed into place, and a
recording enters the manifest only after all its outputs are in place, so a crash never
leaves output that passes for finished; stale outputs of a recording are removed
before it is recomputed, so the trainer never pairs new f0 with old units.

Before any extraction, every recording is checked against the model's band
(:func:`mlflow_ddsp.audio.band_shortfall`): one recorded at a lower rate than
``data.sampling_rate``, or whose content stops below half the model's Nyquist
frequency (low-passed: MP3, phone), is named in a warning with what the model trained
on it will lack, and listed in full in ``<root>/band_limited.txt``; ``strict=True``
refuses to start instead. The measurement (the file's rate and its content edge) is
kept in the manifest, so a re-run measures only new or changed recordings.

Work runs in ``workers`` processes (``spawn`` context: torch and ``fork`` do not
mix), each loading the content encoder once; ``workers=1`` runs in-process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import multiprocessing
import os
import random
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from mlflow_ddsp.audio import band_shortfall, content_edge_hz, load_audio, native_rate
from mlflow_ddsp.config import Config
from mlflow_ddsp.corpus import (
    ALL_FEATURE_KINDS,
    AUDIO_DIR,
    SKIP_DIR,
    feature_kinds,
    feature_path,
    list_audio,
    speaker_id,
)
from mlflow_ddsp.crops import check_crops
from mlflow_ddsp.device import resolve_device
from mlflow_ddsp.errors import AudioError, ConfigError, MlflowDdspError, one_line
from mlflow_ddsp.features import extract_volume, frame_count, get_encoder_spec, get_f0_extractor, load_units_encoder
from mlflow_ddsp.features.encoders.checkpoint import require_checkpoint_path
from mlflow_ddsp.features.f0 import F0_CKPT_EXTRACTORS
from mlflow_ddsp.features.rmvpe import DEFAULT_RMVPE_CKPT
from mlflow_ddsp.progress import Progress
from mlflow_ddsp.subnormals import flushed_subnormals
from mlflow_ddsp.vocoder import load_vocoder
from mlflow_ddsp.vocoder.fit import MEL_BINS, open_vocoder
from mlflow_ddsp.weights import Dependency, feature_dependencies, sha256_of

__all__ = [
    "FEATURE_FORMAT",
    "MANIFEST_NAME",
    "BAND_LIST_NAME",
    "MEL_BINS",
    "MEL_FORMAT",
    "FeatureSettings",
    "PreprocessReport",
    "SplitReport",
    "aug_rng",
    "default_workers",
    "failed_recordings",
    "preprocess",
    "record_dependency",
    "recorded_dependencies",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = ".mlflow_ddsp_preprocess.json"
LOCK_NAME = ".mlflow_ddsp_preprocess.lock"
#: ``<root>/band_limited.txt``: every recording that cannot fill the model's band, one per line
BAND_LIST_NAME = "band_limited.txt"
_BAND_NAMED = 3  # recordings named in the one-line report; the rest are in the list file
# Bump when extraction code changes what it writes: every folder is then recomputed.
FEATURE_FORMAT = 1
# The same for the mel outputs of mel models (kept apart so pure-DDSP folders keep their digest).
MEL_FORMAT = 1
_MANIFEST_VERSION = 1
_TMP_SUFFIX = ".mlflow_ddsp-tmp"
_MANIFEST_SAVE_EVERY = 5.0  # seconds; a crash costs at most this much recomputation
_DEFAULT_MAX_WORKERS = 4  # beyond this the encoder's own threads already use the cores


# -- settings -----------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSettings:
    """Everything that decides the bytes preprocess writes (and nothing else).

    ``encoder_ckpt_stat`` is ``(size, mtime_ns)`` of the checkpoint file: the fast key
    (:meth:`digest`) of manifests written before weight files were recorded by sha256
    (:meth:`content_digest` is the key now). ``device`` is where the
    encoder runs; it is left out of the digest (CPU/GPU differ only in rounding).
    """

    sampling_rate: int
    block_size: int
    f0_extractor: str
    f0_min: float
    f0_max: float
    encoder: str
    encoder_ckpt: str | None
    encoder_ckpt_stat: tuple[int, int] | None
    encoder_sample_rate: int
    encoder_hop_size: int
    encoder_out_channels: int
    feature_format: int = FEATURE_FORMAT
    device: str = "cpu"
    # rmvpe's weights file and its (size, mtime_ns); None for the other extractors,
    # and then left out of the digest so that their folders keep theirs.
    f0_ckpt: str | None = None
    f0_ckpt_stat: tuple[int, int] | None = None
    # Mel models only (None otherwise, and then left out of the digest): the vocoder's
    # config.json (the keys it reads) as canonical JSON text, use_pitch_aug and train.seed (they decide the
    # aug_* bytes). The weights path and vocoder type only say how to load it: not digested.
    vocoder_config: str | None = None
    use_pitch_aug: bool | None = None
    aug_seed: int | None = None
    mel_format: int | None = None
    vocoder_ckpt: str | None = None
    vocoder_type: str | None = None

    @property
    def uses_mel(self) -> bool:
        return self.vocoder_config is not None

    @property
    def kinds(self) -> tuple[str, ...]:
        """The feature kinds written for every recording."""
        return feature_kinds(self.uses_mel)

    @classmethod
    def from_config(cls, cfg: Config) -> FeatureSettings:
        d = cfg.data
        ckpt, stat = _file_and_stat(d.encoder_ckpt)
        f0_ckpt = f0_stat = None
        if cfg.f0_extractor in F0_CKPT_EXTRACTORS:
            f0_ckpt, f0_stat = _file_and_stat(d.f0_ckpt or DEFAULT_RMVPE_CKPT)
        return cls(
            sampling_rate=d.sampling_rate,
            block_size=d.block_size,
            f0_extractor=cfg.f0_extractor,
            f0_min=d.f0_min,
            f0_max=d.f0_max,
            encoder=d.encoder,
            encoder_ckpt=ckpt,
            encoder_ckpt_stat=stat,
            encoder_sample_rate=d.encoder_sample_rate,
            encoder_hop_size=d.encoder_hop_size,
            encoder_out_channels=d.encoder_out_channels,
            device=_encoder_device(cfg.device),
            f0_ckpt=f0_ckpt,
            f0_ckpt_stat=f0_stat,
            **_mel_settings(cfg),
        )

    def describe(self) -> dict[str, Any]:
        """The settings that shape the output, as JSON-able values."""
        out = asdict(self)
        del out["device"]
        if self.f0_ckpt is None:
            del out["f0_ckpt"], out["f0_ckpt_stat"]
        del out["vocoder_ckpt"], out["vocoder_type"]
        if self.vocoder_config is None:
            for key in ("vocoder_config", "use_pitch_aug", "aug_seed", "mel_format"):
                del out[key]
        else:
            out["vocoder_config"] = json.loads(self.vocoder_config)
        return out

    def digest(self) -> str:
        """The fast cache key: :meth:`describe`, weight files by path, size and mtime."""
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()

    def content_digest(self, dependencies: list[Dependency]) -> str:
        """The cache key by content: :meth:`describe` with each weight file's sha256 (by role)
        in place of its path, size and mtime. A touched or moved file of the same bytes keeps it;
        another file of the same architecture changes it."""
        out = self.describe()
        for key in ("encoder_ckpt", "encoder_ckpt_stat", "f0_ckpt", "f0_ckpt_stat"):
            out.pop(key, None)
        out["dependencies"] = {d.role: d.sha256 for d in dependencies}
        return hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()


def _file_and_stat(path_text: str | None) -> tuple[str | None, tuple[int, int] | None]:
    """The resolved path of a weights file and its ``(size, mtime_ns)`` (None when unset/missing)."""
    if not path_text:
        return None, None
    path = Path(path_text).expanduser()
    with contextlib.suppress(OSError):  # a missing file is reported when the network loads
        st = path.stat()
        return str(path.resolve()), (st.st_size, st.st_mtime_ns)
    return str(path.resolve()), None


def _mel_settings(cfg: Config) -> dict[str, Any]:
    """The FeatureSettings fields of a mel model (none for pure DDSP), after checking its vocoder.

    Reads only ``config.json`` beside ``vocoder.ckpt`` (upstream
    ``nsf_hifigan/models.py`` ``load_config``, branch master); the weights are not needed.

    Raises:
        ConfigError: no readable config.json; its sampling rate or hop differs from
            ``data.sampling_rate`` / ``data.block_size``; its ``num_mels`` is not 128.
    """
    if not cfg.uses_mel:
        return {}
    ckpt = Path(cfg.vocoder.ckpt).expanduser()
    vocoder = open_vocoder(cfg)  # ConfigError (one line): no config.json, another rate, hop or mel size
    return {
        "vocoder_config": json.dumps(vocoder.config.to_dict(), sort_keys=True),
        "use_pitch_aug": bool(cfg.model.use_pitch_aug),
        "aug_seed": int(cfg.train.seed),
        "mel_format": MEL_FORMAT,
        "vocoder_ckpt": str(ckpt.resolve()),
        "vocoder_type": cfg.vocoder.type,
    }


def aug_rng(seed: int, rel: str) -> random.Random:
    """The generator of one recording's volume and key augmentation: a function of ``(seed, rel)``."""
    digest = hashlib.sha256(f"{int(seed)}\0{rel}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _encoder_device(device: str) -> str:
    """``cfg.device`` as a concrete device; raises DeviceError when this machine lacks it."""
    return str(resolve_device(device))


def _check_settings(settings: FeatureSettings) -> None:
    """Fail fast, before any worker starts, on settings that can be checked cheaply."""
    get_f0_extractor(
        settings.f0_extractor,
        sample_rate=settings.sampling_rate,
        hop_size=settings.block_size,
        f0_min=settings.f0_min,
        f0_max=settings.f0_max,
        ckpt=settings.f0_ckpt,
    )
    spec = get_encoder_spec(settings.encoder)
    if spec.needs_checkpoint:
        require_checkpoint_path(settings.encoder_ckpt, settings.encoder)


# -- the work on one recording (runs in a worker) -------------------------------


@dataclass(frozen=True)
class _Result:
    rel: str
    status: str  # "done" | "no_voice" | "failed" | "fatal"
    message: str = ""
    entry: dict[str, Any] | None = None  # the manifest entry, when done
    seconds: float = 0.0  # audio duration



def _file_identity(path: Path) -> dict[str, Any]:
    """``size``, ``mtime_ns`` (stat taken before reading) and ``sha256`` of a file."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_of(path)}


def _save_npy(path: Path, array: np.ndarray) -> int:
    """Write ``array`` to ``path`` atomically (temp name, then rename); return the byte size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


def _remove_outputs(root: Path, rel: str) -> None:
    for kind in ALL_FEATURE_KINDS:
        feature_path(root, kind, rel).unlink(missing_ok=True)


class _Extractor:
    """The f0 extractor and content encoder of one process, loaded once."""

    def __init__(self, settings: FeatureSettings) -> None:
        self.settings = settings
        self.f0 = get_f0_extractor(
            settings.f0_extractor,
            sample_rate=settings.sampling_rate,
            hop_size=settings.block_size,
            f0_min=settings.f0_min,
            f0_max=settings.f0_max,
            ckpt=settings.f0_ckpt,
        )
        self.encoder = load_units_encoder(
            settings.encoder,
            settings.encoder_ckpt,
            encoder_sample_rate=settings.encoder_sample_rate,
            encoder_hop_size=settings.encoder_hop_size,
            out_channels=settings.encoder_out_channels,
            device=settings.device,
        )
        self.vocoder = None
        if settings.uses_mel:
            self.vocoder = load_vocoder(settings.vocoder_ckpt, settings.vocoder_type, device=settings.device)

    def features(self, audio: np.ndarray, rel: str = "") -> dict[str, np.ndarray] | None:
        """``{"f0": [n], "volume": [n], "units": [n, C]}`` float32 (plus the mel outputs of
        a mel model, see the module docstring), or None without a voiced frame."""
        s = self.settings
        track = self.f0.extract(audio)
        if not track.has_voice:
            return None
        volume = extract_volume(audio, s.block_size)
        units = self.encoder.encode(audio, s.sampling_rate, s.block_size)[0].cpu().numpy()
        n = frame_count(audio.size, s.block_size)
        if not track.f0.shape == volume.shape == (n,) or units.shape[0] != n:
            raise RuntimeError(
                f"frame counts disagree: f0 {track.f0.shape}, volume {volume.shape}, units {units.shape}, "
                f"expected {n} frames"
            )
        arrays = {
            "f0": track.f0.astype(np.float32),
            "volume": volume.astype(np.float32),
            "units": np.ascontiguousarray(units, dtype=np.float32),
        }
        if self.vocoder is not None:
            arrays.update(self.mel_features(audio, rel))
        return arrays

    def mel_features(self, audio: np.ndarray, rel: str) -> dict[str, np.ndarray]:
        """``mel``, ``aug_mel`` ``[frames, M]``, ``aug_vol`` ``[n]`` float32 and ``aug_shift`` ``[1]``
        float64 of one recording (upstream ``preprocess.py``, branch master), the gain and
        key shift drawn from :func:`aug_rng` ``(train.seed, rel)``."""
        s = self.settings
        assert self.vocoder is not None
        x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).unsqueeze(0).to(s.device)  # [1, N]
        with torch.no_grad():
            mel = self.vocoder.extract(x, s.sampling_rate)[0]
            peak = float(x.abs().max()) + 1e-5
            rng = aug_rng(s.aug_seed or 0, rel)
            log10_gain = rng.uniform(-1.0, min(1.0, math.log10(1.0 / peak)))
            shift = rng.uniform(-5.0, 5.0) if s.use_pitch_aug else 0.0
            gain = 10**log10_gain
            aug_mel = self.vocoder.extract(x * gain, s.sampling_rate, keyshift=shift)[0]
        aug_vol = extract_volume(audio * gain, s.block_size)
        n = frame_count(audio.size, s.block_size)
        for name, m in (("mel", mel), ("aug_mel", aug_mel)):
            if m.dim() != 2 or m.shape[1] != MEL_BINS or not 0 < m.shape[0] <= n:
                raise RuntimeError(f"{name} has shape {tuple(m.shape)}, expected [<= {n}, {MEL_BINS}]")
        return {
            "mel": np.ascontiguousarray(mel.float().cpu().numpy()),
            "aug_mel": np.ascontiguousarray(aug_mel.float().cpu().numpy()),
            "aug_vol": aug_vol.astype(np.float32),
            "aug_shift": np.array([shift], dtype=np.float64),
        }

    def run(self, root: Path, rel: str) -> _Result:
        path = root / AUDIO_DIR / rel
        try:
            identity = _file_identity(path)
            audio = load_audio(path, self.settings.sampling_rate)
            # f0 networks and the encoder compute with torch: on the CPU with subnormals flushed,
            # as training and conversion do (mlflow_ddsp.subnormals).
            with flushed_subnormals(self.settings.device == "cpu"):
                arrays = self.features(audio, rel)
        except AudioError as exc:
            _remove_outputs(root, rel)  # stale features of a file that no longer reads
            return _Result(rel, "failed", str(exc))
        except OSError as exc:
            _remove_outputs(root, rel)
            return _Result(rel, "failed", f"{path}: cannot read ({exc.strerror or one_line(exc)})")
        except Exception as exc:  # noqa: BLE001 -- an extractor choking on one file must not stop the batch
            _remove_outputs(root, rel)
            return _Result(rel, "failed", f"{path}: {type(exc).__name__}: {one_line(exc)}")
        seconds = audio.size / self.settings.sampling_rate
        _remove_outputs(root, rel)
        if arrays is None:
            return _Result(rel, "no_voice", f"{path}: no voiced frame", seconds=seconds)
        outputs = {kind: _save_npy(feature_path(root, kind, rel), arrays[kind]) for kind in self.settings.kinds}
        entry = {**identity, "n_frames": int(arrays["f0"].size), "outputs": outputs}
        return _Result(rel, "done", entry=entry, seconds=seconds)


# Worker-process state: the settings arrive with the pool's initializer, the
# (possibly slow) encoder loads on the first task so a load error is reported
# as a result instead of breaking the pool.
_WORKER_SETTINGS: FeatureSettings | None = None
_WORKER: _Extractor | None = None


def _init_worker(settings: FeatureSettings, torch_threads: int) -> None:
    global _WORKER_SETTINGS
    # Workers share the cores: without this each would start one thread per core.
    torch.set_num_threads(torch_threads)
    _WORKER_SETTINGS = settings


def _work(root: str, rel: str) -> _Result:
    global _WORKER
    if _WORKER is None:
        assert _WORKER_SETTINGS is not None, "_init_worker did not run"
        try:
            _WORKER = _Extractor(_WORKER_SETTINGS)
        except MlflowDdspError as exc:
            return _Result(rel, "fatal", str(exc))
    return _WORKER.run(Path(root), rel)


# -- the manifest -------------------------------------------------------------


def _read_manifest(root: Path) -> dict[str, Any] | None:
    """The manifest of ``root`` as written, None when missing, unreadable or of another version."""
    try:
        data = json.loads((root / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == _MANIFEST_VERSION else None


def _dependencies_of(data: dict[str, Any] | None) -> list[Dependency] | None:
    """The weight files a manifest records; None when it records none (written before they were)."""
    listed = data.get("dependencies") if data is not None else None
    if not isinstance(listed, list) or not isinstance(data.get("content_digest"), str):
        return None
    found = [Dependency.from_dict(item) for item in listed]
    return None if any(d is None for d in found) else found


def recorded_dependencies(root: str | os.PathLike) -> list[Dependency] | None:
    """The weight files (:class:`~mlflow_ddsp.weights.Dependency`, one per role) that made the
    features under ``root``, as its preprocess manifest records them.

    Returns:
        The list (empty when the features need no file: ``logmel`` and parselmouth), or None
        when nothing is recorded: no readable manifest, or one written before digests were
        recorded (re-running preprocess records them without recomputing unchanged features).
    """
    return _dependencies_of(_read_manifest(Path(root)))


def record_dependency(root: str | os.PathLike, dependency: Dependency) -> bool:
    """Record where ``dependency``'s file is now (path, size, mtime) in ``root``'s manifest, when
    the manifest records the same role with the same sha256, so later checks need not hash it.

    Skipped (False) while a preprocess holds the folder (it writes the manifest itself), or
    when the manifest records another file for the role. The write is atomic.
    """
    root = Path(root)
    try:
        with _folder_lock(root):
            data = _read_manifest(root)
            recorded = _dependencies_of(data)
            if data is None or recorded is None:
                return False
            if not any(d.role == dependency.role and d.sha256 == dependency.sha256 for d in recorded):
                return False
            data["dependencies"] = [dependency.to_dict() if d.role == dependency.role else d.to_dict() for d in recorded]
            _write_json(root / MANIFEST_NAME, data)
            return True
    except (MlflowDdspError, OSError):
        return False  # another preprocess works on it, or the folder is read-only: hash again next time


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


class _Manifest:
    """``<root>/.mlflow_ddsp_preprocess.json``: which recordings are finished, for which settings
    and weight files.

    The folder's features stand when the manifest's ``content_digest`` (the settings with the
    sha256 of each weight file, :meth:`FeatureSettings.content_digest`) is the current one. A
    manifest written before digests were recorded (no ``content_digest``) stands when its
    ``settings_digest`` (weight files by path, size and mtime) is the current one; it then
    records the current files' digests.
    """

    def __init__(self, root: Path, settings: FeatureSettings, dependencies: list[Dependency]) -> None:
        self.root = root
        self.path = root / MANIFEST_NAME
        self.settings = settings
        self.digest = settings.digest()
        self.dependencies = list(dependencies)
        self.content_digest = settings.content_digest(self.dependencies)
        self.files: dict[str, dict[str, Any]] = {}
        self.failed: dict[str, str] = {}  # rel -> the one-line reason the last run gave
        self.settings_changed = False
        self.dirty = False
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            self.dirty = True  # unreadable (e.g. hand-edited): start over, rewrite it
            return
        if not isinstance(data, dict) or data.get("version") != _MANIFEST_VERSION:
            self.dirty = True
            return
        recorded = _dependencies_of(data)
        if recorded is not None:
            same = data.get("content_digest") == self.content_digest
        else:  # written before the digests were: the fast key decides, once
            same = data.get("settings_digest") == self.digest
        if not same:
            self.settings_changed = True
            self.dirty = True
            return
        if recorded != self.dependencies or data.get("settings_digest") != self.digest:
            self.dirty = True  # the same bytes, touched or moved (or not recorded yet): record them as they are
        files = data.get("files")
        self.files = files if isinstance(files, dict) else {}
        failed = data.get("failed")
        self.failed = {str(k): str(v) for k, v in failed.items()} if isinstance(failed, dict) else {}

    def is_done(self, rel: str) -> bool:
        """True when ``rel``'s outputs exist, are intact and were made from its current bytes."""
        entry = self.files.get(rel)
        if not isinstance(entry, dict):
            return False
        try:
            outputs = entry["outputs"]
            for kind in self.settings.kinds:
                if feature_path(self.root, kind, rel).stat().st_size != outputs[kind]:
                    return False  # missing, truncated or replaced
            st = (self.root / AUDIO_DIR / rel).stat()
            if st.st_size != entry["size"]:
                return False
            if st.st_mtime_ns == entry["mtime_ns"]:
                return True
            # Same size, new mtime (touched, copied, restored): the bytes decide.
            identity = _file_identity(self.root / AUDIO_DIR / rel)
        except (OSError, KeyError, TypeError):
            return False
        if identity["sha256"] != entry.get("sha256"):
            return False
        entry["mtime_ns"] = identity["mtime_ns"]
        self.dirty = True
        return True

    def record(self, rel: str, entry: dict[str, Any] | None, failure: str | None = None) -> None:
        """Record ``rel`` as done (``entry``), not done, or failed with a one-line reason."""
        if entry is None:
            if self.files.pop(rel, None) is not None:
                self.dirty = True
        else:
            self.files[rel] = entry
            self.dirty = True
        if failure is not None:
            self.failed[rel] = failure
            self.dirty = True
        elif self.failed.pop(rel, None) is not None:
            self.dirty = True

    def prune(self, rels: set[str]) -> None:
        """Forget recordings no longer under ``audio/``."""
        for rel in [r for r in self.files if r not in rels]:
            del self.files[rel]
            self.dirty = True
        for rel in [r for r in self.failed if r not in rels]:
            del self.failed[rel]
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        data = {
            "version": _MANIFEST_VERSION,
            "settings": self.settings.describe(),
            "settings_digest": self.digest,
            "dependencies": [d.to_dict() for d in self.dependencies],
            "content_digest": self.content_digest,
            "files": dict(sorted(self.files.items())),
            "failed": dict(sorted(self.failed.items())),
        }
        _write_json(self.path, data)
        self.dirty = False


@contextlib.contextmanager
def _folder_lock(root: Path) -> Iterator[None]:
    """Hold ``<root>/.mlflow_ddsp_preprocess.lock`` so two runs never write one folder."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as upstream
        yield
        return
    with open(root / LOCK_NAME, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MlflowDdspError(
                f"{root}: another mlflow-ddsp preprocess is working on this folder; wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_temp_files(root: Path) -> None:
    """Delete temporary files a crashed run left in the feature folders."""
    for kind in ALL_FEATURE_KINDS:
        folder = root / kind
        if folder.is_dir():
            for tmp in folder.rglob(f"*{_TMP_SUFFIX}"):
                tmp.unlink(missing_ok=True)


# -- the report ---------------------------------------------------------------


@dataclass
class SplitReport:
    """What preprocess did to one dataset folder.

    Attributes:
        name: ``train`` (``data.train_path``) or ``val`` (``data.valid_path``).
        root: the folder.
        processed: recordings whose features were (re)computed.
        skipped: recordings already up to date (nothing recomputed).
        moved_to_skip: recordings without a voiced frame, moved to ``<root>/skip/``.
        failed: ``(rel, one-line message naming the file)`` for recordings that
            could not be processed.
        settings_changed: an earlier run used other feature settings, so every
            recording was recomputed.
        audio_seconds: duration of the processed recordings.
        band_limited: ``(rel, what the model will lack)`` for recordings that cannot fill
            the model's band (a lower sample rate, or content that stops far below
            Nyquist; see :func:`mlflow_ddsp.audio.band_shortfall`), also listed in
            ``<root>/band_limited.txt``.
    """

    name: str
    root: Path
    processed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    moved_to_skip: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    settings_changed: bool = False
    audio_seconds: float = 0.0
    band_limited: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        text = (
            f"{self.name} ({self.root}): {len(self.processed)} processed, {len(self.skipped)} already done, "
            f"{len(self.moved_to_skip)} moved to {SKIP_DIR}/, {len(self.failed)} failed"
        )
        if self.band_limited:
            text += f", {len(self.band_limited)} cannot fill the model's band (list: {self.root / BAND_LIST_NAME})"
        if self.settings_changed:
            text += " (feature settings changed: recomputed all)"
        return text


@dataclass
class PreprocessReport:
    """Per-split results of ``preprocess`` plus the run's totals."""

    splits: list[SplitReport]
    workers: int
    elapsed: float  # seconds

    @property
    def ok(self) -> bool:
        """True when no recording failed (recordings moved to skip/ are not failures)."""
        return not any(s.failed for s in self.splits)

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [item for s in self.splits for item in s.failed]

    def lines(self) -> list[str]:
        """Summary lines: one per split, then the totals."""
        out = [s.line() for s in self.splits]
        n = sum(len(s.processed) for s in self.splits)
        audio = sum(s.audio_seconds for s in self.splits)
        out.append(
            f"{n} recordings ({audio:.1f} s of audio) processed in {self.elapsed:.1f} s "
            f"with {self.workers} worker{'s' if self.workers != 1 else ''}"
        )
        return out


# -- the driver ---------------------------------------------------------------


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """Worker processes when none are asked for: the usable cores, at most 4."""
    return max(1, min(_usable_cores(), _DEFAULT_MAX_WORKERS))


def _audio_size(root: Path, rel: str) -> int:
    try:
        return (root / AUDIO_DIR / rel).stat().st_size
    except OSError:
        return 0  # vanished: its task reports it


def _check_crops(cfg: Config, splits: list[tuple[str, Path]]) -> None:
    """Before extracting anything: name training recordings too short for a ``data.duration``
    crop (a warning) and refuse a speaker with none long enough (ConfigError); see crops.py."""
    for name, root in splits:
        if name != "train":
            continue
        durations = {}
        for rel in list_audio(root, cfg.data.extensions):
            with contextlib.suppress(RuntimeError, sf.LibsndfileError):  # unreadable: reported per file later
                info = sf.info(str(root / AUDIO_DIR / rel))
                durations[rel] = info.frames / info.samplerate
        n_spk = cfg.model.n_spk
        found = check_crops(durations, cfg.data.duration, (lambda rel: speaker_id(rel, n_spk, root=root)) if n_spk > 1 else None)
        where = str(root / AUDIO_DIR)
        found.raise_if_a_speaker_has_none(where)
        if (line := found.warning(where)) is not None:
            log.warning("%s", line)


def _splits(cfg: Config) -> list[tuple[str, Path]]:
    """``(name, root)`` for train and val; a folder named twice is processed once."""
    out: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    for name, key, value in (
        ("train", "data.train_path", cfg.data.train_path),
        ("val", "data.valid_path", cfg.data.valid_path),
    ):
        root = Path(value).expanduser().absolute()  # messages name the folder, whatever the cwd
        if not (root / AUDIO_DIR).is_dir():
            raise ConfigError(f"{key}={value!r}: no folder {root / AUDIO_DIR}; put the recordings there")
        if root.resolve() in seen:
            continue
        seen.add(root.resolve())
        out.append((name, root))
    return out


def _measure_band(path: Path, sample_rate: int) -> dict[str, Any] | None:
    """``{"rate": Hz in the file's header, "edge_hz": content edge at sample_rate}`` of one
    recording (:func:`mlflow_ddsp.audio.content_edge_hz`); None when it cannot be read
    (its extraction task reports that by name)."""
    try:
        rate = native_rate(path)
        edge = content_edge_hz(load_audio(path, sample_rate), sample_rate)
    except (AudioError, OSError):
        return None
    return {"rate": rate, "edge_hz": edge}


def _check_bands(cfg: Config, splits: list[tuple[str, Path]], split_rels: dict[Path, list[str]],
                 manifests: dict[Path, _Manifest], reports: dict[Path, SplitReport], *,
                 progress: bool) -> dict[tuple[Path, str], dict[str, Any]]:  # fmt: skip
    """Measure every recording's band (reusing the manifest's measurement of a finished
    one), fill each SplitReport's ``band_limited`` and write (or remove) ``band_limited.txt``.

    Returns ``{(root, rel): measurement}`` of the recordings measured now, for their
    manifest entries once their features are written.
    """
    rate = cfg.data.sampling_rate
    measured: dict[tuple[Path, str], dict[str, Any]] = {}
    done = {root: set(reports[root].skipped) for _, root in splits}  # finished and unchanged
    todo = []
    for _, root in splits:
        for rel in split_rels[root]:
            entry = manifests[root].files.get(rel)
            band = entry.get("band") if isinstance(entry, dict) and rel in done[root] else None
            if not (isinstance(band, dict) and isinstance(band.get("rate"), int)):
                todo.append((root, rel))
    with Progress("band check", len(todo), unit="file", enabled=progress and bool(todo), leave=False) as bar:
        for root, rel in todo:
            band = _measure_band(root / AUDIO_DIR / rel, rate)
            bar.update(1)
            if band is None:
                continue
            measured[(root, rel)] = band
            entry = manifests[root].files.get(rel)
            if isinstance(entry, dict) and rel in done[root]:  # finished earlier: keep it now
                entry["band"] = band
                manifests[root].dirty = True
    for _, root in splits:
        report = reports[root]
        for rel in split_rels[root]:
            band = measured.get((root, rel))
            if band is None and rel in done[root]:
                band = manifests[root].files[rel].get("band")
            if isinstance(band, dict) and isinstance(band.get("rate"), int):
                edge = band.get("edge_hz")
                reason = band_shortfall(band["rate"], float(edge) if isinstance(edge, (int, float)) else None, rate)
                if reason is not None:
                    report.band_limited.append((rel, reason))
        listing = root / BAND_LIST_NAME
        if report.band_limited:
            tmp = listing.with_name(listing.name + _TMP_SUFFIX)
            tmp.write_text("".join(f"{root / AUDIO_DIR / rel}\t{reason}\n" for rel, reason in report.band_limited))
            os.replace(tmp, listing)
        else:
            listing.unlink(missing_ok=True)  # an earlier run's list must not outlive its recordings
    return measured


def _report_bands(cfg: Config, reports: list[SplitReport], *, strict: bool) -> None:
    """Warn (one line per folder) about recordings that cannot fill the model's band;
    with ``strict``, raise AudioError (one line for all folders) instead."""
    rate = cfg.data.sampling_rate
    parts = []
    for report in reports:
        if not report.band_limited:
            continue
        named = ", ".join(f"{rel} ({reason})" for rel, reason in report.band_limited[:_BAND_NAMED])
        more = len(report.band_limited) - _BAND_NAMED
        parts.append(
            f"{len(report.band_limited)} recording(s) in {report.root / AUDIO_DIR}: {named}"
            f"{f' and {more} more' if more > 0 else ''} (all listed in {report.root / BAND_LIST_NAME})"
        )
    if not parts:
        return
    band = f"the model's band (data.sampling_rate={rate}: up to {rate / 2000:g} kHz)"
    if strict:
        raise AudioError(
            f"--strict: recordings that cannot fill {band}: {'; '.join(parts)}; "
            "replace them with full-band recordings or remove them, or run without --strict"
        )
    for part in parts:
        log.warning("cannot fill %s: %s; the model trained on them will lack those frequencies (--strict refuses them)",
                    band, part)  # fmt: skip


def failed_recordings(root: str | os.PathLike) -> dict[str, str]:
    """``{rel: one-line reason}`` of the recordings under ``root/audio`` the last preprocess could not use.

    Read from ``root``'s preprocess manifest; empty when there is none or it is unreadable.
    """
    try:
        data = json.loads((Path(root) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return {}
    failed = data.get("failed") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in failed.items()} if isinstance(failed, dict) else {}


def _apply(result: _Result, root: Path, manifest: _Manifest, report: SplitReport,
           band: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Record one finished recording (runs in the main process, which owns the manifest);
    ``band`` is its band measurement (:func:`_measure_band`), kept in its manifest entry."""
    if result.status == "done":
        entry = result.entry if band is None or result.entry is None else {**result.entry, "band": band}
        manifest.record(result.rel, entry)
        report.processed.append(result.rel)
        report.audio_seconds += result.seconds
    elif result.status == "no_voice":
        manifest.record(result.rel, None)
        target = root / SKIP_DIR / result.rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(root / AUDIO_DIR / result.rel, target)
        except OSError as exc:
            report.failed.append((result.rel, f"{result.message}, but cannot move it to {target}: {exc.strerror}"))
            return
        report.moved_to_skip.append(result.rel)
    else:
        manifest.record(result.rel, None, failure=result.message)
        report.failed.append((result.rel, result.message))


def preprocess(
    cfg: Config, *, workers: int | None = None, progress: bool = True, strict: bool = False
) -> PreprocessReport:
    """Extract f0, volume and units for ``data.train_path`` and ``data.valid_path``.

    Args:
        cfg: the training config; ``data.*`` and ``cfg.f0_extractor`` decide the features.
        workers: processes (each loads the encoder once); 1 runs in this process;
            None: ``default_workers()``, never more than there are recordings to do.
        progress: show a tqdm bar on stderr when it is a terminal, else log a line
            every MLFLOW_DDSP_PROGRESS_SECONDS (30 s; see :mod:`mlflow_ddsp.progress`).
        strict: refuse recordings that cannot fill the model's band (see the module
            docstring) before extracting anything, instead of warning about them.

    Returns:
        A PreprocessReport; recordings that failed are listed there, not raised.

    Raises:
        ConfigError: a missing ``audio/`` folder, an unusable f0 extractor or
            encoder setting (named by its key), an unreadable weight file, ``workers < 1``,
            or (mel models) a vocoder config.json that is missing or does not fit ``data.*``.
        AudioError: ``strict`` and some recordings cannot fill the model's band (one line
            naming the first few and the file listing all).
        MlflowDdspError: another preprocess holds the folder's lock.
    """
    if workers is not None and workers < 1:
        raise ConfigError(f"workers={workers} must be >= 1")
    started = time.monotonic()
    settings = FeatureSettings.from_config(cfg)
    _check_settings(settings)
    splits = _splits(cfg)
    _check_crops(cfg, splits)

    with contextlib.ExitStack() as stack:
        for _, root in splits:
            stack.enter_context(_folder_lock(root))
        # Each weight file hashed once per run, and not at all when a manifest records it at its size and mtime.
        known = [d for _, root in splits for d in (recorded_dependencies(root) or ())]
        dependencies = feature_dependencies(cfg, known=known, progress=progress)
        reports: dict[Path, SplitReport] = {}
        manifests: dict[Path, _Manifest] = {}
        tasks: list[tuple[Path, str]] = []
        split_rels: dict[Path, list[str]] = {}
        for name, root in splits:
            _remove_temp_files(root)
            manifest = _Manifest(root, settings, dependencies)
            rels = list_audio(root, cfg.data.extensions)
            split_rels[root] = rels
            manifest.prune(set(rels))
            report = SplitReport(name, root, settings_changed=manifest.settings_changed)
            for rel in rels:
                if manifest.is_done(rel):
                    report.skipped.append(rel)
                else:
                    tasks.append((root, rel))
            reports[root], manifests[root] = report, manifest
        bands = _check_bands(cfg, splits, split_rels, manifests, reports, progress=progress)
        try:
            _report_bands(cfg, [reports[root] for _, root in splits], strict=strict)
        except AudioError:
            for m in manifests.values():
                m.save()  # keep the measurements: the next run need not measure again
            raise
        # Longest recordings first: the pool then ends with short tasks, not one long tail.
        tasks.sort(key=lambda t: -_audio_size(*t))
        n_workers = max(1, min(workers or default_workers(), len(tasks)))
        bar = stack.enter_context(
            Progress("preprocess", len(tasks), unit="file", enabled=progress, leave=False)
        )
        last_save = time.monotonic()

        def finish(root: Path, result: _Result) -> None:
            nonlocal last_save
            if result.status == "fatal":
                raise ConfigError(result.message)
            _apply(result, root, manifests[root], reports[root], bands.get((root, result.rel)))
            bar.update(1)
            if time.monotonic() - last_save > _MANIFEST_SAVE_EVERY:
                for m in manifests.values():
                    m.save()
                last_save = time.monotonic()

        try:
            if tasks and n_workers == 1:
                extractor = _Extractor(settings)
                for root, rel in tasks:
                    finish(root, extractor.run(root, rel))
            elif tasks:
                _run_pool(tasks, settings, n_workers, finish)
        finally:
            for m in manifests.values():
                m.save()
    return PreprocessReport(
        splits=[reports[root] for _, root in splits], workers=n_workers, elapsed=time.monotonic() - started
    )


def _run_pool(tasks: list[tuple[Path, str]], settings: FeatureSettings, n_workers: int, finish) -> None:
    """Run ``tasks`` in ``n_workers`` spawned processes, handing each result to ``finish``."""
    threads = max(1, _usable_cores() // n_workers) if settings.device == "cpu" else 1
    pool = ProcessPoolExecutor(
        max_workers=n_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(settings, threads),
    )
    try:
        pending: dict[Future, Path] = {pool.submit(_work, str(root), rel): root for root, rel in tasks}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                finish(pending.pop(future), future.result())
    except BrokenProcessPool as exc:
        # A worker died (killed for memory, or it could not start: with 'spawn' the
        # main script must be importable, which a script piped to stdin is not).
        raise MlflowDdspError(
            f"a preprocess worker process died ({one_line(exc)}); finished recordings are kept, "
            "run again, with workers=1 (--workers 1) to process in this process"
        ) from exc
    finally:
        # On an error or Ctrl-C, drop what has not started; running tasks finish
        # (their outputs are complete files, just not in the manifest).
        pool.shutdown(wait=True, cancel_futures=True)
