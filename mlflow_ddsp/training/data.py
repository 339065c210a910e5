"""Training and validation data with upstream DDSP-SVC's semantics.

* Training items are random crops of ``data.duration`` seconds; recordings shorter
  than ``duration + 0.1`` s are skipped (the next recording is used instead).
* Training crops get a random gain: audio and volume are scaled by
  ``10 ** u``, ``u ~ U(-1, min(1, log10(1 / peak)))``, so the loud end never clips.
* Validation items are whole recordings, one per batch.
* The order of training items and their random crop and gain are functions of
  ``train.seed``, the epoch and the item's place in it (:class:`EpochSampler`),
  so a resumed run sees exactly the data an uninterrupted run would, whatever
  the number of loader workers.
* ``train.cache_all_data`` keeps audio and units in memory; f0 and volume are
  always in memory. With ``cache_fp16`` the *training* audio and units are kept
  as float16 and the training audio stays float16 through the random gain (the
  product is rounded to float16, then widened to float32 for the loss), as
  upstream's ``data_loaders.py`` does; the validation set is never cached in
  float16 (upstream builds it without ``fp16``).

Item shapes: ``audio [N]``, ``units [T, C]``, ``f0 [T, 1]``, ``volume [T, 1]``,
``spk_id [1]`` (long), with ``N = T * block_size``; a batch adds a leading ``B``.

Models trained on the vocoder's mel (``cfg.uses_mel``: RectifiedFlow, DiffusionFast)
follow upstream's ``reflow/data_loaders.py`` (branch master) instead:

* An item is ``mel [T, M]``, ``units [T, C]``, ``f0 [T, 1]``, ``volume [T, 1]``,
  ``spk_id [1]`` (long), ``aug_shift [1, 1]`` (float, semitones), ``name``; all
  float tensors are float32. The mel has one frame fewer than the units (see
  :mod:`mlflow_ddsp.preprocess`): every frame-rate array is cut to the shorter.
* A training item takes the augmented copy with probability 0.5 (upstream's
  ``random.choice([True, False])``, here from the item's own generator):
  ``mel = aug_mel``, ``volume = aug_vol``, ``f0 * 2 ** (shift / 12)``,
  ``aug_shift = shift``; otherwise ``aug_shift = 0``. There is no random gain (the
  gained copy is the augmentation) and training items read no audio at all.
* Validation items are whole recordings, never augmented, and also carry
  ``audio [T * block_size]``: the ground truth to listen to.
* ``cache_all_data`` keeps mel, aug_mel and units in memory (float16 with
  ``cache_fp16``, training set only, as upstream); f0, volume, aug_vol and the key
  shift are always in memory; the validation audio is cached as float32.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

from ..audio import load_audio
from ..config import Config
from ..corpus import AUDIO_DIR, FEATURE_KINDS, MEL_FEATURE_KINDS, feature_path, list_audio, speaker_id
from ..crops import check_crops
from ..errors import AudioError, ConfigError
from ..preprocess import failed_recordings, record_dependency, recorded_dependencies
from ..weights import Dependency, feature_weight_files, file_dependency

__all__ = ["AudioDataset", "EpochSampler", "FeatureProvenance", "check_feature_provenance", "check_recordings",
           "make_loaders"]  # fmt: skip

log = logging.getLogger(__name__)


def _no_recordings(root: Path, extensions) -> ConfigError:
    return ConfigError(
        f"no recordings in {(root / AUDIO_DIR).absolute()} with extensions {list(extensions)}; "
        "put your .wav files there (see data.train_path / data.valid_path)"
    )


def check_recordings(cfg: Config) -> FeatureProvenance:
    """Refuse a config whose ``data.train_path`` or ``data.valid_path`` holds no recording, or
    whose features were made by other weight files than the ones it names
    (:func:`check_feature_provenance`).

    Cheap (a folder listing, a stat of each weight file; a file is hashed only when its size or
    mtime is not the one preprocess recorded): training calls it before it creates a run or a
    registered model, so these mistakes leave nothing behind (issue 23, point 8; issue 21, point 2).

    Returns:
        The weight files that made the features (:class:`FeatureProvenance`).

    Raises:
        ConfigError: the same one line the dataset would raise, with the absolute folder; or the
            one line of :func:`check_feature_provenance`.
    """
    for root in (cfg.data.train_path, cfg.data.valid_path):
        if not list_audio(root, cfg.data.extensions):
            raise _no_recordings(Path(root), cfg.data.extensions)
    return check_feature_provenance(cfg)


@dataclass(frozen=True)
class FeatureProvenance:
    """The weight files that made the training features, checked against the config's.

    Attributes:
        dependencies: one :class:`~mlflow_ddsp.weights.Dependency` per role the config names a
            file for (``encoder``, then ``f0``), whose sha256 preprocess recorded for every
            folder; ``path``, ``size`` and ``mtime_ns`` are the file's where the config names it
            (the recorded ones when it is not there). Roles of folders that record nothing are
            left out.
        unchecked: the folders whose features record no digest (preprocessed before digests
            were recorded, or by upstream's preprocess): nothing could be checked for them.
    """

    dependencies: tuple[Dependency, ...] = ()
    unchecked: tuple[str, ...] = ()

    @property
    def checked(self) -> bool:
        """True when every folder recorded the files that made its features."""
        return not self.unchecked

    def get(self, role: str) -> Dependency | None:
        """The dependency of ``role`` (``encoder``, ``f0``), None when there is none."""
        return next((d for d in self.dependencies if d.role == role), None)


def _feature_roots(cfg: Config) -> list[Path]:
    """``data.train_path`` and ``data.valid_path`` as absolute folders, a folder named twice once."""
    roots: list[Path] = []
    for value in (cfg.data.train_path, cfg.data.valid_path):
        root = Path(value).expanduser().absolute()
        if all(root.resolve() != r.resolve() for r in roots):
            roots.append(root)
    return roots


_REDO = "run `mlflow-ddsp preprocess -c CONFIG`"


def check_feature_provenance(cfg: Config, *, progress: bool = True) -> FeatureProvenance:
    """Check that the features under ``data.train_path``/``data.valid_path`` were made by the
    weight files ``cfg`` names (:func:`mlflow_ddsp.weights.feature_weight_files`), by sha256.

    Each file is hashed at most once, and not at all when its path, size and mtime are those
    preprocess recorded (a touched file of the same bytes is hashed once and its new mtime
    recorded, so the next start does not hash it). Roles a folder records but the config names
    no file for are not checked. Logs one warning line for folders that record nothing
    (features from before the digests were recorded: they keep working), and one per file the
    config names that is not on this machine (the recorded digest is kept, unchecked).

    Args:
        progress: show a progress bar while hashing a large file (see :func:`mlflow_ddsp.weights.sha256_of`).

    Raises:
        ConfigError: one line naming the key and role, the folder, both paths and both digests
            (first 12 hex digits), and the command that remakes the features: a folder's features
            were made by another file than the config names, or without one.
    """
    needed = feature_weight_files(cfg)
    recorded = {root: recorded_dependencies(root) for root in _feature_roots(cfg)}
    unchecked = tuple(str(root) for root, deps in recorded.items() if deps is None)
    checkable = {root: deps for root, deps in recorded.items() if deps is not None}
    known = [d for deps in checkable.values() for d in deps]
    found: list[Dependency] = []
    for role, key, path in needed:
        if not checkable:
            break  # nothing recorded to compare with: not even hashed
        current = None
        try:
            current = file_dependency(role, path, known=known, progress=progress)
        except OSError as exc:
            missing = f"{path} ({exc.strerror or exc})"
        for root, deps in checkable.items():
            made_by = next((d for d in deps if d.role == role), None)
            if made_by is None:
                named = f"{current.path} (sha256 {current.short})" if current is not None else str(path)
                raise ConfigError(
                    f"{key}: the features in {root} were made without an {role} "
                    f"weight file, not with {named} that the config names (data.encoder: {cfg.data.encoder}, "
                    f"data.f0_extractor: {cfg.data.f0_extractor}); {_REDO} to remake them with it"
                )
            if current is None:
                continue
            if made_by.sha256 != current.sha256:
                if made_by.path == current.path:
                    what = (f"the {role} file {current.path} when it held sha256 {made_by.short}; it now holds "
                            f"sha256 {current.short}")  # fmt: skip
                else:
                    what = (f"the {role} file {made_by.path or '(path not recorded)'} (sha256 {made_by.short}), not "
                            f"by {current.path} (sha256 {current.short}) that the config names")  # fmt: skip
                raise ConfigError(
                    f"{key}: the features in {root} were made by {what}; {_REDO} to remake them with it, "
                    f"or set {key} to the file that made them"
                )
            if made_by != current:  # the same bytes, touched or moved: record them where they are now
                record_dependency(root, current)
        if current is not None:
            found.append(current)
        else:
            first = next(d for d in next(iter(checkable.values())) if d.role == role)
            found.append(first)
            log.warning(
                "%s: %s is not on this machine: the features in %s (made by the %s file of sha256 %s) could not be "
                "checked against it", key, missing, ", ".join(str(r) for r in checkable), role, first.short,
            )  # fmt: skip
    if unchecked and needed:
        log.warning(
            "the features in %s record no digest of the weight files that made them (%s): they could not be "
            "checked against the config's; %s to record them (unchanged features are not recomputed)",
            ", ".join(unchecked), ", ".join(sorted({key for _, key, _ in needed})), _REDO,
        )  # fmt: skip
    return FeatureProvenance(tuple(found), unchecked)


@dataclass
class _Record:
    rel: str
    duration: float  # seconds
    f0: torch.Tensor  # [T, 1]
    volume: torch.Tensor  # [T, 1]
    spk_id: torch.Tensor  # [1]
    audio: torch.Tensor | None = None  # [N] when cached
    units: torch.Tensor | None = None  # [T, C] when cached
    # mel models only
    aug_vol: torch.Tensor | None = None  # [T, 1]
    aug_shift: float = 0.0  # semitones of the augmented copy
    mel: torch.Tensor | None = None  # [T - 1, M] when cached
    aug_mel: torch.Tensor | None = None  # [T - 1, M] when cached (training set)


class AudioDataset(Dataset):
    """Preprocessed recordings under ``root`` (see :mod:`mlflow_ddsp.corpus`).

    Args:
        root: ``data.train_path`` or ``data.valid_path``.
        whole_audio: yield whole recordings (validation) instead of random crops.
        augment: apply the random gain (training); for mel models, use the augmented
            copy half of the time.
        cache: keep audio and units in memory; default ``train.cache_all_data``.
        fp16: cache them as float16; default ``train.cache_fp16`` (:func:`make_loaders`
            passes False for the validation set, as upstream).
    """

    def __init__(
        self,
        root: str | Path,
        cfg: Config,
        *,
        whole_audio: bool,
        augment: bool,
        cache: bool | None = None,
        fp16: bool | None = None,
    ):
        self.root = Path(root)
        self.sampling_rate = cfg.data.sampling_rate
        self.block = cfg.data.block_size
        self.crop_seconds = cfg.data.duration
        self.whole_audio = whole_audio
        self.augment = augment
        self.uses_mel = cfg.uses_mel
        cache = cfg.train.cache_all_data if cache is None else cache
        fp16 = cfg.train.cache_fp16 if fp16 is None else fp16
        self.cache_dtype = torch.float16 if (cache and fp16) else torch.float32
        self.rels = list_audio(self.root, cfg.data.extensions)
        if not self.rels:
            raise _no_recordings(self.root, cfg.data.extensions)
        missing = [r for r in self.rels if not all(feature_path(self.root, k, r).is_file() for k in FEATURE_KINDS)]
        if self.uses_mel and not missing:
            no_mel = [
                r for r in self.rels if not all(feature_path(self.root, k, r).is_file() for k in MEL_FEATURE_KINDS)
            ]
            if no_mel:
                raise ConfigError(
                    f"{len(no_mel)} recording(s) in {(self.root / AUDIO_DIR).absolute()} have no mel features (first: {no_mel[0]}), "
                    f"which model.type {cfg.model.type} trains on; run `mlflow-ddsp preprocess -c CONFIG`"
                )
        failed = failed_recordings(self.root)
        unusable = [r for r in missing if r in failed]
        if unusable:
            raise AudioError(
                f"{len(unusable)} recording(s) in {(self.root / AUDIO_DIR).absolute()} could not be preprocessed "
                f"(first: {failed[unusable[0]]}); fix or remove them, then run `mlflow-ddsp preprocess -c CONFIG` again"
            )
        if missing:
            raise ConfigError(
                f"{len(missing)} recording(s) in {(self.root / AUDIO_DIR).absolute()} are not preprocessed "
                f"(first: {missing[0]}); run `mlflow-ddsp preprocess -c CONFIG` first"
            )
        self.records = [self._load(rel, cfg.model.n_spk, cache) for rel in self.rels]
        if not whole_audio:
            self._check_crops(cfg.model.n_spk)

    def _check_crops(self, n_spk: int) -> None:
        """Warn about recordings too short to crop; ConfigError when a speaker has none (see crops.py)."""
        spk = {r.rel: int(r.spk_id) for r in self.records}
        found = check_crops({r.rel: r.duration for r in self.records}, self.crop_seconds,
                            spk.__getitem__ if n_spk > 1 else None)  # fmt: skip
        where = str((self.root / AUDIO_DIR).absolute())
        found.raise_if_a_speaker_has_none(where)
        if (line := found.warning(where)) is not None:
            log.warning("%s", line)

    def _load(self, rel: str, n_spk: int, cache: bool) -> _Record:
        path = self.root / AUDIO_DIR / rel
        try:
            info = sf.info(str(path))
        except (RuntimeError, sf.LibsndfileError) as exc:
            raise AudioError(f"{path.absolute()}: cannot read audio ({exc})") from exc
        f0 = torch.from_numpy(np.load(feature_path(self.root, "f0", rel))).float().unsqueeze(-1)
        volume = torch.from_numpy(np.load(feature_path(self.root, "volume", rel))).float().unsqueeze(-1)
        record = _Record(
            rel=rel,
            duration=info.frames / info.samplerate,
            f0=f0,
            volume=volume,
            spk_id=torch.tensor([speaker_id(rel, n_spk, root=self.root)], dtype=torch.long),
        )
        if self.uses_mel:
            return self._load_mel(record, cache)
        if cache:
            record.audio = torch.from_numpy(load_audio(path, self.sampling_rate)).to(self.cache_dtype)
            record.units = torch.from_numpy(np.load(feature_path(self.root, "units", rel))).to(self.cache_dtype)
        return record

    def _load_mel(self, record: _Record, cache: bool) -> _Record:
        rel = record.rel
        record.aug_vol = torch.from_numpy(np.load(feature_path(self.root, "aug_vol", rel))).float().unsqueeze(-1)
        record.aug_shift = float(np.load(feature_path(self.root, "aug_shift", rel)).reshape(-1)[0])
        if cache:
            record.units = torch.from_numpy(np.load(feature_path(self.root, "units", rel))).to(self.cache_dtype)
            record.mel = torch.from_numpy(np.load(feature_path(self.root, "mel", rel))).to(self.cache_dtype)
            if self.augment:
                record.aug_mel = torch.from_numpy(np.load(feature_path(self.root, "aug_mel", rel))).to(self.cache_dtype)
            if self.whole_audio:  # validation: the ground truth to listen to (training reads no audio)
                path = self.root / AUDIO_DIR / rel
                record.audio = torch.from_numpy(load_audio(path, self.sampling_rate)).to(self.cache_dtype)
        return record

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """One item; ``key`` is an index, or ``(index, seed)`` from :class:`EpochSampler`
        (the crop and gain are then drawn from that seed, not from the global ``random``)."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        rng = random.Random(seed) if seed is not None else random
        if not self.whole_audio:
            # Upstream skips recordings too short for a crop by taking the next one.
            for offset in range(len(self.records)):
                record = self.records[(index + offset) % len(self.records)]
                if record.duration >= self.crop_seconds + 0.1:
                    break
        else:
            record = self.records[index]
        return self._item(record, rng)

    def _crop(self, record: _Record, rng) -> tuple[int, int]:
        """``(start_frame, n_frames)`` of an item: the whole recording or a random crop."""
        if self.whole_audio:
            return 0, record.f0.shape[0]
        frame_seconds = self.block / self.sampling_rate
        start = rng.uniform(0, record.duration - self.crop_seconds - 0.1)
        return int(start / frame_seconds), int(self.crop_seconds / frame_seconds)

    def _frames(self, kind: str, record: _Record, cached: torch.Tensor | None, frames: slice) -> torch.Tensor:
        """Rows ``frames`` of a frame-rate feature, from memory or read from its .npy, as float32."""
        if cached is None:
            cached = torch.from_numpy(np.load(feature_path(self.root, kind, record.rel), mmap_mode="r")[frames].copy())
        else:
            cached = cached[frames]
        return cached.float()

    def _mel_item(self, record: _Record, rng=random) -> dict[str, Any]:
        """An item of a mel model (upstream ``reflow/data_loaders.py`` ``get_data``, branch master)."""
        start_frame, n_frames = self._crop(record, rng)
        frames = slice(start_frame, start_frame + n_frames)
        # Upstream draws the choice for every item and ignores it where augmentation is off.
        augmented = rng.choice((True, False)) and self.augment
        mel_kind = "aug_mel" if augmented else "mel"
        mel = self._frames(mel_kind, record, record.aug_mel if augmented else record.mel, frames)
        units = self._frames("units", record, record.units, frames)
        shift = record.aug_shift if augmented else 0.0
        f0 = record.f0[frames]
        if augmented:
            f0 = 2 ** (shift / 12) * f0
        volume = (record.aug_vol if augmented else record.volume)[frames]
        # The mel has one frame fewer than units, f0 and volume: cut all to the shortest.
        t = min(mel.shape[0], units.shape[0], f0.shape[0], volume.shape[0])
        item = {
            "mel": mel[:t],
            "units": units[:t],
            "f0": f0[:t],
            "volume": volume[:t],
            "spk_id": record.spk_id,
            "aug_shift": torch.tensor([[shift]], dtype=torch.float32),
            "name": record.rel,
        }
        if self.whole_audio:
            audio = record.audio
            if audio is None:
                audio = torch.from_numpy(load_audio(self.root / AUDIO_DIR / record.rel, self.sampling_rate))
            audio = audio[start_frame * self.block : (start_frame + t) * self.block].float()
            t = min(t, audio.shape[0] // self.block)
            item = {k: (v[:t] if k in ("mel", "units", "f0", "volume") else v) for k, v in item.items()}
            item["audio"] = audio[: t * self.block]
        return item

    def _item(self, record: _Record, rng=random) -> dict[str, Any]:
        if self.uses_mel:
            return self._mel_item(record, rng)
        start_frame, n_frames = self._crop(record, rng)
        frames = slice(start_frame, start_frame + n_frames)

        audio = record.audio
        if audio is None:
            audio = torch.from_numpy(load_audio(self.root / AUDIO_DIR / record.rel, self.sampling_rate))
        units = record.units
        if units is None:
            units = torch.from_numpy(np.load(feature_path(self.root, "units", record.rel), mmap_mode="r")[frames].copy())
        else:
            units = units[frames]
        f0, volume = record.f0[frames], record.volume[frames]
        n_frames = min(n_frames, f0.shape[0], units.shape[0])
        audio = audio[start_frame * self.block : (start_frame + n_frames) * self.block]  # cached dtype
        n_frames = min(n_frames, audio.shape[0] // self.block)
        audio = audio[: n_frames * self.block]
        f0, volume, units = f0[:n_frames], volume[:n_frames], units[:n_frames].float()

        if self.augment:
            peak = float(audio.abs().max()) + 1e-5
            gain = 10 ** rng.uniform(-1, min(1.0, math.log10(1 / peak)))
            # In the cached dtype: float16 audio is rounded to float16 after the gain, as upstream.
            audio, volume = audio * gain, volume * gain
        audio = audio.float()
        return {"audio": audio, "units": units, "f0": f0, "volume": volume, "spk_id": record.spk_id, "name": record.rel}


class EpochSampler(torch.utils.data.Sampler):
    """A shuffle that is a function of (seed, epoch), one share per process, resumable mid-epoch.

    Yields ``(index, item_seed)``: the dataset draws an item's random crop and
    gain from ``item_seed``, itself a function of (seed, epoch, place in the
    epoch). Under DDP every process draws the same permutation and takes every
    ``world_size``-th item from ``rank`` on (padded like ``DistributedSampler``).

    Args:
        size: items in the dataset.
        seed: ``train.seed``.
        rank, world_size: this process's share.
    """

    def __init__(self, size: int, seed: int, *, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.rank, self.world_size = size, int(seed), rank, world_size
        self.epoch = 0
        self.skip = 0  # items of this epoch already trained (a resume)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Iterate epoch ``epoch`` next, leaving out its first ``skip`` items of this process."""
        self.epoch, self.skip = int(epoch), int(skip)

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size)

    def __iter__(self):
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
        order = torch.randperm(self.size, generator=g).tolist()
        order += order[: len(self) * self.world_size - len(order)]  # pad so every process gets as many
        mine = order[self.rank :: self.world_size]
        seeds = torch.randint(0, 2**62, (len(order),), generator=g).tolist()[self.rank :: self.world_size]
        start, self.skip = self.skip, 0  # only the resumed epoch starts late
        return iter(list(zip(mine, seeds))[start:])


def make_loaders(
    cfg: Config, *, cache: bool | None = None, rank: int = 0, world_size: int = 1
) -> tuple[DataLoader, DataLoader]:
    """Training loader (random crops, shuffled) and validation loader (whole files, batch 1).

    With ``world_size > 1`` each process draws its own share of the training files
    (``batch_size`` per process, as upstream's batch size is per GPU).
    """
    train = AudioDataset(cfg.data.train_path, cfg, whole_audio=False, augment=True, cache=cache)
    # Upstream caches the validation set without fp16 whatever train.cache_fp16 says.
    valid = AudioDataset(cfg.data.valid_path, cfg, whole_audio=True, augment=False, cache=cache, fp16=False)
    workers = cfg.train.num_workers
    train_loader = DataLoader(
        train,
        batch_size=cfg.train.batch_size,
        sampler=EpochSampler(len(train), cfg.train.seed, rank=rank, world_size=world_size),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        # Its own generator: starting an epoch must not draw from the global RNG,
        # which a resume restores from the checkpoint.
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    valid_loader = DataLoader(valid, batch_size=1, shuffle=False, num_workers=0)
    return train_loader, valid_loader
