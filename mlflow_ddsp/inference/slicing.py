"""Split long inputs at silences and join the converted pieces, as upstream's ``main.py``.

Upstream DDSP-SVC converts a long file piece by piece: ``slicer.Slicer`` finds
silences, every chunk between cut points (silent ones included) becomes a segment
on the model's frame grid, each segment is synthesised on its own, and the
outputs are laid back at their start positions, a linear cross-fade over the
overlap joining neighbours. This module reproduces that, in numpy:

- :func:`frame_rms`: RMS per ``hop`` samples (``librosa.feature.rms`` with
  ``center=True`` and zero padding, upstream's librosa default), vectorised with a
  cumulative sum instead of framing the signal.
- :func:`find_silences`: ``Slicer.slice``'s cut decisions. Upstream walks frame by
  frame; the decision only ever happens where a silent run ends, so this walks the
  silent runs (found with ``np.diff``) instead: same cuts, a handful of iterations.
- :func:`split_at_silence`: the chunks as sample ranges ``[start, end)`` tiling the
  input, silent chunks included (upstream's ``main.split`` keeps them all).
- :func:`segment_frames`: those chunks quantised to model frames of ``hop_size``
  samples, ``(start_frame, end_frame)``, chunks shorter than a frame dropped.
- :func:`cross_fade` and :func:`join_segments`: upstream's assembly loop.

Upstream's settings (:class:`SlicerSettings` defaults): threshold -40 dB, RMS every
20 ms over a window of ``min(300 ms, 4 hops)`` = 80 ms, a silence must last 300 ms
to cut, a segment must be 5 s long before a mid-clip silence may end it, and at
most 5 s of silence stays attached to a cut.

Why segments overlap by exactly one frame: a segment of ``n = end - start`` frames
holds ``n * hop`` samples, which the feature grid turns into ``n + 1`` frames
(``T // hop + 1``), so its output is ``(n + 1) * hop`` samples long and runs one
frame into the next segment. That frame is the cross-fade (``hop`` samples, e.g.
512 at 44.1 kHz = 11.6 ms), and the joined output of a tiled input is
``(T // hop + 1) * hop`` samples, the same length as converting it in one piece.

Shapes: audio ``[T]`` float; RMS ``[1 + T // hop]``; segments are plain ints.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SlicerSettings",
    "DEFAULT_SLICER",
    "frame_rms",
    "find_silences",
    "split_at_silence",
    "segment_frames",
    "cross_fade",
    "join_segments",
]


@dataclass(frozen=True)
class SlicerSettings:
    """Upstream ``Slicer``'s parameters, in dB and milliseconds (its defaults).

    ``main.py`` overrides only ``threshold`` (-40) and ``min_length`` (5000).

    Attributes:
        threshold_db: a frame is silent when its RMS is below ``10 ** (threshold_db / 20)``.
        min_length_ms: a silence in mid-clip cuts only once the current segment is
            at least this long.
        min_interval_ms: the shortest silence that may cut.
        hop_ms: RMS hop.
        max_silence_kept_ms: at most this much silence stays on either side of a cut.
    """

    threshold_db: float = -40.0
    min_length_ms: float = 5000.0
    min_interval_ms: float = 300.0
    hop_ms: float = 20.0
    max_silence_kept_ms: float = 5000.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.threshold_db):
            raise ValueError(f"Invalid value for threshold_db={self.threshold_db!r}: must be finite")
        if not self.min_length_ms >= self.min_interval_ms >= self.hop_ms > 0:
            raise ValueError(
                "Invalid slicer settings: need min_length_ms >= min_interval_ms >= hop_ms > 0, got "
                f"{self.min_length_ms}, {self.min_interval_ms}, {self.hop_ms}"
            )
        if not self.max_silence_kept_ms >= self.hop_ms:
            raise ValueError(
                f"Invalid value for max_silence_kept_ms={self.max_silence_kept_ms}: must be >= hop_ms={self.hop_ms}"
            )

    def in_frames(self, sample_rate: int) -> tuple[int, int, int, int, int]:
        """``(hop, win, min_length, min_interval, max_sil_kept)``: hop and window in
        samples, the rest in hops, rounded exactly as upstream (Python's ``round``)."""
        min_interval_samples = sample_rate * self.min_interval_ms / 1000
        hop = round(sample_rate * self.hop_ms / 1000)
        win = min(round(min_interval_samples), 4 * hop)
        min_length = round(sample_rate * self.min_length_ms / 1000 / hop)
        min_interval = round(min_interval_samples / hop)
        max_sil_kept = round(sample_rate * self.max_silence_kept_ms / 1000 / hop)
        return hop, win, min_length, min_interval, max_sil_kept


DEFAULT_SLICER = SlicerSettings()


def _as_mono(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio [T], got shape {audio.shape}")
    return audio


def frame_rms(audio: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """RMS of ``audio [T]`` per hop -> float64 ``[1 + (T + 2 * (frame_length // 2) - frame_length) // hop_length]``.

    Frame ``k`` covers samples ``[k * hop - frame_length // 2, ... + frame_length)``,
    zeros outside the signal (``librosa.feature.rms(center=True)``); for an even
    ``frame_length`` that is ``1 + T // hop`` frames.
    """
    audio = _as_mono(audio)
    if frame_length <= 0 or hop_length <= 0:
        raise ValueError(f"frame_length and hop_length must be positive, got {frame_length}, {hop_length}")
    half = frame_length // 2
    power = np.square(audio, dtype=np.float64)
    # A cumulative sum of the zero-padded power gives every window's sum in O(T)
    # without materialising [n_frames, frame_length].
    csum = np.concatenate(([0.0], np.cumsum(np.pad(power, (half, half)))))
    n_frames = 1 + (audio.size + 2 * half - frame_length) // hop_length
    if n_frames <= 0:
        return np.zeros(0)
    starts = np.arange(n_frames) * hop_length
    window_power = (csum[starts + frame_length] - csum[starts]) / frame_length
    return np.sqrt(np.maximum(window_power, 0.0))  # cancellation can leave -1e-20


def find_silences(
    audio: np.ndarray, sample_rate: int, settings: SlicerSettings = DEFAULT_SLICER
) -> tuple[list[tuple[int, int]], int]:
    """Upstream ``Slicer.slice``'s silent ranges, in RMS hops.

    Returns:
        ``(tags, hop)``: ``tags`` are ``(begin, end)`` hop indices of the silences to
        cut out, in order (``end`` may be ``n_frames + 1`` for trailing silence);
        ``hop`` is the RMS hop in samples. ``tags`` is empty when nothing is cut.
    """
    audio = _as_mono(audio)
    hop, win, min_length, min_interval, max_sil_kept = settings.in_frames(int(sample_rate))
    # Upstream compares the *sample* count with min_length in *hops* here, so only
    # clips of at most min_length samples (250 at 44.1 kHz) skip slicing. Kept as is
    # so segment boundaries match upstream's.
    if audio.shape[0] <= min_length:
        return [], hop
    rms = frame_rms(audio, win, hop)
    threshold = 10 ** (settings.threshold_db / 20.0)
    silent = rms < threshold
    edges = np.diff(silent.astype(np.int8), prepend=0, append=0)
    run_starts = np.flatnonzero(edges == 1)
    run_ends = np.flatnonzero(edges == -1)  # exclusive; == n_frames for a trailing run
    total = rms.shape[0]

    tags: list[tuple[int, int]] = []
    clip_start = 0
    trailing_start: int | None = None
    for start, i in zip(run_starts.tolist(), run_ends.tolist()):
        if i == total:  # silence up to the end: handled after the loop, as upstream
            trailing_start = start
            break
        # Frame i is the first voiced frame after silence [start, i): upstream's decision point.
        is_leading_silence = start == 0 and i > max_sil_kept
        need_slice_middle = i - start >= min_interval and i - clip_start >= min_length
        if not is_leading_silence and not need_slice_middle:
            continue
        if i - start <= max_sil_kept:
            pos = int(rms[start : i + 1].argmin()) + start
            tags.append((0, pos) if start == 0 else (pos, pos))
            clip_start = pos
        elif i - start <= max_sil_kept * 2:
            pos = int(rms[i - max_sil_kept : start + max_sil_kept + 1].argmin()) + i - max_sil_kept
            pos_l = int(rms[start : start + max_sil_kept + 1].argmin()) + start
            pos_r = int(rms[i - max_sil_kept : i + 1].argmin()) + i - max_sil_kept
            if start == 0:
                tags.append((0, pos_r))
                clip_start = pos_r
            else:
                tags.append((min(pos_l, pos), max(pos_r, pos)))
                clip_start = max(pos_r, pos)
        else:
            pos_l = int(rms[start : start + max_sil_kept + 1].argmin()) + start
            pos_r = int(rms[i - max_sil_kept : i + 1].argmin()) + i - max_sil_kept
            tags.append((0, pos_r) if start == 0 else (pos_l, pos_r))
            clip_start = pos_r
    if trailing_start is not None and total - trailing_start >= min_interval:
        silence_end = min(total, trailing_start + max_sil_kept)
        pos = int(rms[trailing_start : silence_end + 1].argmin()) + trailing_start
        tags.append((pos, total + 1))
    return tags, hop


def split_at_silence(
    audio: np.ndarray, sample_rate: int, settings: SlicerSettings = DEFAULT_SLICER
) -> list[tuple[int, int]]:
    """Upstream's chunks as sample ranges ``[start, end)``, silent chunks included.

    Consecutive ranges share their boundary and together cover ``[0, T)`` (upstream's
    ``split_time`` strings, minus the "is it silent" flag ``main.py`` ignores). Ranges
    may be empty; :func:`segment_frames` drops them.
    """
    audio = _as_mono(audio)
    length = audio.shape[0]
    tags, hop = find_silences(audio, sample_rate, settings)
    if not tags:
        return [(0, length)]
    chunks: list[tuple[int, int]] = []
    if tags[0][0]:
        chunks.append((0, min(length, tags[0][0] * hop)))
    for i, (begin, end) in enumerate(tags):
        if i:
            chunks.append((tags[i - 1][1] * hop, min(length, begin * hop)))
        chunks.append((begin * hop, min(length, end * hop)))
    if tags[-1][1] * hop < length:
        chunks.append((tags[-1][1] * hop, length))
    return chunks


def segment_frames(
    audio: np.ndarray,
    sample_rate: int,
    hop_size: int,
    settings: SlicerSettings = DEFAULT_SLICER,
) -> list[tuple[int, int]]:
    """Upstream ``main.split``: chunks quantised to model frames of ``hop_size`` samples.

    Returns:
        ``[(start_frame, end_frame)]`` with ``end_frame > start_frame``; segment ``k``
        is ``audio[start_frame * hop_size : end_frame * hop_size]`` and its converted
        output (``end - start + 1`` frames) starts at sample ``start_frame * hop_size``.
    """
    if hop_size <= 0:
        raise ValueError(f"hop_size must be positive, got {hop_size}")
    segments = []
    for start, end in split_at_silence(audio, sample_rate, settings):
        if start == end:
            continue
        start_frame, end_frame = start // hop_size, end // hop_size
        if end_frame > start_frame:
            segments.append((start_frame, end_frame))
    return segments


def cross_fade(a: np.ndarray, b: np.ndarray, idx: int) -> np.ndarray:
    """Upstream's ``cross_fade``: ``a [Na]`` then ``b [Nb]`` starting at ``idx``.

    Returns ``[idx + Nb]``: ``a[:idx]``, then over the overlap ``a[idx:]`` fades out
    linearly (``np.linspace(0, 1, Na - idx)``, both ends included) while ``b`` fades
    in, then the rest of ``b``. Needs ``0 <= idx <= Na <= idx + Nb``.
    """
    a, b = _as_mono(a), _as_mono(b)
    fade = a.shape[0] - idx
    if not 0 <= fade <= b.shape[0]:
        raise ValueError(f"cross_fade needs 0 <= idx <= len(a) <= idx + len(b); got idx={idx}, {a.shape[0]}, {b.shape[0]}")
    k = np.linspace(0.0, 1.0, num=fade, endpoint=True)
    out = np.empty(idx + b.shape[0], dtype=np.result_type(a, b))
    out[:idx] = a[:idx]
    out[idx : a.shape[0]] = (1.0 - k) * a[idx:] + k * b[:fade]
    out[a.shape[0] :] = b[fade:]
    return out


def join_segments(pieces: Iterable[tuple[int, np.ndarray]], dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Upstream ``main.py``'s assembly of converted segments -> ``[start_last + N_last]``.

    ``pieces`` are ``(start_sample, output [N])`` in order. A piece that starts
    after the current end is preceded by zeros; one that starts inside it is
    cross-faded in over the overlap (:func:`cross_fade`) and must reach past the
    current end (upstream fails otherwise too). Writes into one preallocated buffer
    instead of upstream's ``np.append`` per piece, which is quadratic in the pieces.
    """
    pieces = [(int(start), _as_mono(seg)) for start, seg in pieces]
    if not pieces:
        return np.zeros(0, dtype=dtype)
    out = np.zeros(max(start + seg.shape[0] for start, seg in pieces), dtype=dtype)
    current = 0
    for start, seg in pieces:
        if start < 0:
            raise ValueError(f"segment start must be >= 0, got {start}")
        end = start + seg.shape[0]
        if start >= current:
            out[start:end] = seg  # the gap before it is still zero: the output only grows
        else:
            fade = current - start
            if fade > seg.shape[0]:
                raise ValueError(
                    f"segment at {start} ({seg.shape[0]} samples) is shorter than its overlap of {fade} samples"
                )
            k = np.linspace(0.0, 1.0, num=fade, endpoint=True)
            out[start:current] = (1.0 - k) * out[start:current] + k * seg[:fade]
            out[current:end] = seg[fade:]
        current = end
    return out[:current]
