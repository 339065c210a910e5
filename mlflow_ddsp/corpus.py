"""The on-disk layout of a DDSP-SVC dataset folder, as upstream defines it.

::

    <root>/audio/<rel>            recordings (speaker folders allowed: audio/1/..., audio/2/...)
    <root>/f0/<rel>.npy           f0 per frame, Hz, unvoiced frames interpolated   [n_frames]
    <root>/volume/<rel>.npy       RMS volume per frame                             [n_frames]
    <root>/units/<rel>.npy        content units                                    [n_frames, C]
    <root>/skip/<rel>             recordings moved aside: no voiced frame at all

and, for models trained on the vocoder's mel (``model.type`` RectifiedFlow or
DiffusionFast, upstream 5.0/6.x; ``M`` = the vocoder's ``num_mels``)::

    <root>/mel/<rel>.npy          log-mel of the recording                         [n_frames - 1, M]
    <root>/aug_mel/<rel>.npy      log-mel of the gained (and key-shifted) copy     [n_frames - 1, M]
    <root>/aug_vol/<rel>.npy      RMS volume of the gained copy                    [n_frames]
    <root>/aug_shift/<rel>.npy    the copy's key shift, semitones (0: none)        [1]

Upstream keeps the key shifts of a folder in one ``pitch_aug_dict.npy``; here each
recording has its own file, so a crash can never leave it out of step with the mels.

``<rel>`` keeps the file's extension (``a/b.wav`` -> ``units/a/b.wav.npy``).
With ``model.n_spk > 1`` the speaker id is the number the top folder name starts
with (``audio/2_alto/x.wav`` -> 2), as upstream reads it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from .errors import ConfigError

__all__ = [
    "AUDIO_DIR",
    "FEATURE_KINDS",
    "MEL_FEATURE_KINDS",
    "ALL_FEATURE_KINDS",
    "SKIP_DIR",
    "feature_kinds",
    "list_audio",
    "feature_path",
    "speaker_id",
    "dataset_digest",
]

AUDIO_DIR = "audio"
SKIP_DIR = "skip"
FEATURE_KINDS = ("f0", "volume", "units")
#: the extra outputs of mel models (upstream 5.0/6.x: ``mel``, ``aug_mel``, ``aug_vol``, the key shift)
MEL_FEATURE_KINDS = ("mel", "aug_mel", "aug_vol", "aug_shift")
ALL_FEATURE_KINDS = FEATURE_KINDS + MEL_FEATURE_KINDS


def feature_kinds(uses_mel: bool) -> tuple[str, ...]:
    """The feature kinds preprocess writes for a model: ``FEATURE_KINDS``, plus the mel ones."""
    return ALL_FEATURE_KINDS if uses_mel else FEATURE_KINDS


def list_audio(root: str | os.PathLike, extensions: Sequence[str]) -> list[str]:
    """Relative paths (POSIX, sorted) of the recordings under ``<root>/audio``."""
    base = Path(root) / AUDIO_DIR
    suffixes = tuple(f".{e.lstrip('.').lower()}" for e in extensions)
    if not base.is_dir():
        return []
    return sorted(
        p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes)
    )


def feature_path(root: str | os.PathLike, kind: str, rel: str) -> Path:
    if kind not in ALL_FEATURE_KINDS:
        raise ValueError(f"feature kind {kind!r} must be one of {ALL_FEATURE_KINDS}")
    return Path(root) / kind / f"{rel}.npy"


def speaker_id(rel: str, n_spk: int, *, root: str | os.PathLike | None = None) -> int:
    """1-based speaker id of a recording; always 1 for single-speaker models.

    ``root`` (the dataset folder) only makes the error name the recording's absolute path.

    Raises:
        ConfigError: the folder does not name a speaker in 1..n_spk.
    """
    if n_spk <= 1:
        return 1
    folder = Path(rel).parent.as_posix()
    head = re.split(r"[_\-/]", folder, maxsplit=1)[0] if folder != "." else ""
    spk = int(head) if head.isdigit() else 0
    if not 1 <= spk <= n_spk:
        where = (Path(root) / AUDIO_DIR / rel).absolute() if root is not None else f"{AUDIO_DIR}/{rel}"
        raise ConfigError(
            f"{where}: with model.n_spk={n_spk} recordings must sit in speaker folders named "
            f"1..{n_spk} (e.g. audio/1/, audio/2_alto/); found folder {folder!r}"
        )
    return spk


def dataset_digest(root: str | os.PathLike, rels: Iterable[str]) -> str:
    """sha256 over every recording's relative path and bytes: equal digests, equal data."""
    h = hashlib.sha256()
    base = Path(root) / AUDIO_DIR
    for rel in sorted(rels):
        h.update(rel.encode() + b"\0")
        with open(base / rel, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
