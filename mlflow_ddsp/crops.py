"""Which training recordings are long enough to be cropped, by upstream DDSP-SVC's rule.

Training items are random crops of ``data.duration`` seconds. Upstream's
``data_loaders.AudioDataset.__getitem__`` skips a recording shorter than
``waveform_sec + 0.1`` s (``waveform_sec`` = ``data.duration``) and takes the next
one instead, silently: a speaker whose recordings are all that short is never
trained on. :func:`check_crops` names those recordings and refuses a speaker
left with none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .errors import ConfigError

__all__ = ["CROP_MARGIN_SECONDS", "ShortClips", "check_crops", "min_clip_seconds"]

CROP_MARGIN_SECONDS = 0.1  # upstream: `if duration < (self.waveform_sec + 0.1): skip`
_NAMED = 5  # recordings named in one line before "and N more"


def min_clip_seconds(crop_seconds: float) -> float:
    """Shortest recording (s) a crop of ``crop_seconds`` is taken from: ``crop_seconds + 0.1``."""
    return crop_seconds + CROP_MARGIN_SECONDS


@dataclass(frozen=True)
class ShortClips:
    """Recordings too short for a crop, and the speakers left with no usable one."""

    crop_seconds: float
    short: list[tuple[str, float]] = field(default_factory=list)  # (rel, seconds), longest first
    speakers_without_crops: dict[int, tuple[int, float]] = field(default_factory=dict)  # id -> (clips, longest s)

    def warning(self, where: str) -> str | None:
        """One line naming the skipped recordings (None when there are none)."""
        if not self.short:
            return None
        names = ", ".join(f"{rel} ({seconds:.2f} s)" for rel, seconds in self.short[:_NAMED])
        more = f" and {len(self.short) - _NAMED} more" if len(self.short) > _NAMED else ""
        return (
            f"{len(self.short)} recording(s) in {where} are shorter than data.duration + "
            f"{CROP_MARGIN_SECONDS} = {min_clip_seconds(self.crop_seconds):.2f} s and are never trained on: "
            f"{names}{more}"
        )

    def raise_if_a_speaker_has_none(self, where: str) -> None:
        """Raises ConfigError (one line) naming the first speaker with no recording long enough."""
        if not self.speakers_without_crops:
            return
        spk, (count, longest) = min(self.speakers_without_crops.items())
        who = f"speaker {spk}" if spk > 0 else "the data"
        others = len(self.speakers_without_crops) - 1
        also = f" (and {others} more speaker(s))" if others else ""
        raise ConfigError(
            f"data.duration={self.crop_seconds:g} s: {who} in {where} has no recording of at least "
            f"{min_clip_seconds(self.crop_seconds):.2f} s (its {count}, longest {longest:.2f} s, would never be "
            f"trained on){also}; lower data.duration or add longer recordings"
        )


def check_crops(
    durations: Mapping[str, float], crop_seconds: float, speaker_of: Callable[[str], int] | None = None
) -> ShortClips:
    """Sort recordings by upstream's rule.

    Args:
        durations: seconds per recording (relative path under ``audio/``).
        crop_seconds: ``data.duration``.
        speaker_of: 1-based speaker id of a recording (``corpus.speaker_id``); None:
            one speaker (reported as "the data"). A recording whose speaker cannot
            be told (the function raises ConfigError) is left out of the per-speaker check.
    """
    need = min_clip_seconds(crop_seconds)
    short = sorted(((rel, s) for rel, s in durations.items() if s < need), key=lambda item: (-item[1], item[0]))
    per_speaker: dict[int, list[float]] = {}
    for rel, seconds in durations.items():
        try:
            spk = speaker_of(rel) if speaker_of is not None else 0
        except ConfigError:
            continue
        per_speaker.setdefault(spk, []).append(seconds)
    without = {spk: (len(s), max(s)) for spk, s in per_speaker.items() if max(s) < need}
    return ShortClips(crop_seconds, short, without)
