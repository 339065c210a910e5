"""Training and validation data with upstream DDSP-SVC's semantics.

* Training items are random crops of ``data.duration`` seconds; recordings shorter
  than ``duration + 0.1`` s are skipped (the next recording is used instead).
* Training crops get a random gain: audio and volume are scaled by
  ``10 ** u``, ``u ~ U(-1, min(1, log10(1 / peak)))``, so the loud end never clips.
* Validation items are whole recordings, one per batch.
* ``train.cache_all_data`` keeps audio and units in memory (``cache_fp16``:
  as float16); f0 and volume are always in memory.

Item shapes: ``audio [N]``, ``units [T, C]``, ``f0 [T, 1]``, ``volume [T, 1]``,
``spk_id [1]`` (long), with ``N = T * block_size``; a batch adds a leading ``B``.
"""

from __future__ import annotations

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
from ..corpus import AUDIO_DIR, FEATURE_KINDS, feature_path, list_audio, speaker_id
from ..errors import AudioError, ConfigError

__all__ = ["AudioDataset", "make_loaders"]


@dataclass
class _Record:
    rel: str
    duration: float  # seconds
    f0: torch.Tensor  # [T, 1]
    volume: torch.Tensor  # [T, 1]
    spk_id: torch.Tensor  # [1]
    audio: torch.Tensor | None = None  # [N] when cached
    units: torch.Tensor | None = None  # [T, C] when cached


class AudioDataset(Dataset):
    """Preprocessed recordings under ``root`` (see :mod:`mlflow_ddsp.corpus`).

    Args:
        root: ``data.train_path`` or ``data.valid_path``.
        whole_audio: yield whole recordings (validation) instead of random crops.
        augment: apply the random gain (training).
    """

    def __init__(self, root: str | Path, cfg: Config, *, whole_audio: bool, augment: bool, cache: bool | None = None):
        self.root = Path(root)
        self.sampling_rate = cfg.data.sampling_rate
        self.block = cfg.data.block_size
        self.crop_seconds = cfg.data.duration
        self.whole_audio = whole_audio
        self.augment = augment
        cache = cfg.train.cache_all_data if cache is None else cache
        self.cache_dtype = torch.float16 if cfg.train.cache_fp16 else torch.float32
        self.rels = list_audio(self.root, cfg.data.extensions)
        if not self.rels:
            raise ConfigError(
                f"no recordings in {self.root / AUDIO_DIR} with extensions {cfg.data.extensions}; "
                "put your .wav files there (see data.train_path / data.valid_path)"
            )
        missing = [r for r in self.rels if not all(feature_path(self.root, k, r).is_file() for k in FEATURE_KINDS)]
        if missing:
            raise ConfigError(
                f"{len(missing)} recording(s) in {self.root / AUDIO_DIR} are not preprocessed "
                f"(first: {missing[0]}); run `mlflow-ddsp preprocess -c CONFIG` first"
            )
        self.records = [self._load(rel, cfg.model.n_spk, cache) for rel in self.rels]
        if not whole_audio and not any(r.duration >= self.crop_seconds + 0.1 for r in self.records):
            raise ConfigError(
                f"data.duration={self.crop_seconds} s is too long: no recording in {self.root / AUDIO_DIR} "
                f"lasts {self.crop_seconds + 0.1:.1f} s; lower data.duration or add longer recordings"
            )

    def _load(self, rel: str, n_spk: int, cache: bool) -> _Record:
        path = self.root / AUDIO_DIR / rel
        try:
            info = sf.info(str(path))
        except (RuntimeError, sf.LibsndfileError) as exc:
            raise AudioError(f"{path}: cannot read audio ({exc})") from exc
        f0 = torch.from_numpy(np.load(feature_path(self.root, "f0", rel))).float().unsqueeze(-1)
        volume = torch.from_numpy(np.load(feature_path(self.root, "volume", rel))).float().unsqueeze(-1)
        record = _Record(
            rel=rel,
            duration=info.frames / info.samplerate,
            f0=f0,
            volume=volume,
            spk_id=torch.tensor([speaker_id(rel, n_spk)], dtype=torch.long),
        )
        if cache:
            record.audio = torch.from_numpy(load_audio(path, self.sampling_rate)).to(self.cache_dtype)
            record.units = torch.from_numpy(np.load(feature_path(self.root, "units", rel))).to(self.cache_dtype)
        return record

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not self.whole_audio:
            # Upstream skips recordings too short for a crop by taking the next one.
            for offset in range(len(self.records)):
                record = self.records[(index + offset) % len(self.records)]
                if record.duration >= self.crop_seconds + 0.1:
                    break
        else:
            record = self.records[index]
        return self._item(record)

    def _item(self, record: _Record) -> dict[str, Any]:
        frame_seconds = self.block / self.sampling_rate
        if self.whole_audio:
            start_frame = 0
            n_frames = record.f0.shape[0]
        else:
            start = random.uniform(0, record.duration - self.crop_seconds - 0.1)
            start_frame = int(start / frame_seconds)
            n_frames = int(self.crop_seconds / frame_seconds)
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
        audio = audio[start_frame * self.block : (start_frame + n_frames) * self.block].float()
        n_frames = min(n_frames, audio.shape[0] // self.block)
        audio = audio[: n_frames * self.block]
        f0, volume, units = f0[:n_frames], volume[:n_frames], units[:n_frames].float()

        if self.augment:
            peak = float(audio.abs().max()) + 1e-5
            gain = 10 ** random.uniform(-1, min(1.0, math.log10(1 / peak)))
            audio, volume = audio * gain, volume * gain
        return {"audio": audio, "units": units, "f0": f0, "volume": volume, "spk_id": record.spk_id, "name": record.rel}


def make_loaders(
    cfg: Config, *, cache: bool | None = None, rank: int = 0, world_size: int = 1
) -> tuple[DataLoader, DataLoader]:
    """Training loader (random crops, shuffled) and validation loader (whole files, batch 1).

    With ``world_size > 1`` each process draws its own share of the training files
    (``batch_size`` per process, as upstream's batch size is per GPU).
    """
    from torch.utils.data import DistributedSampler

    train = AudioDataset(cfg.data.train_path, cfg, whole_audio=False, augment=True, cache=cache)
    valid = AudioDataset(cfg.data.valid_path, cfg, whole_audio=True, augment=False, cache=cache)
    workers = cfg.train.num_workers
    sampler = DistributedSampler(train, num_replicas=world_size, rank=rank, shuffle=True) if world_size > 1 else None
    train_loader = DataLoader(
        train,
        batch_size=cfg.train.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    valid_loader = DataLoader(valid, batch_size=1, shuffle=False, num_workers=0)
    return train_loader, valid_loader
