"""Split-at-silence and cross-fade joining against a line-by-line port of upstream.

The references below are deliberately naive: ``librosa.feature.rms`` as a framing
loop, ``slicer.Slicer.slice`` walking frame by frame, and ``main.py``'s
``np.append`` / ``cross_fade`` loop, so the vectorised code is checked against
upstream's own control flow.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlflow_ddsp.inference.slicing import (
    DEFAULT_SLICER,
    SlicerSettings,
    cross_fade,
    frame_rms,
    join_segments,
    segment_frames,
    split_at_silence,
)

SR = 44100
BLOCK = 512


# ---------------------------------------------------------------- references (upstream, ported)


def ref_rms(y: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """librosa.feature.rms(y, frame_length, hop_length, center=True, pad_mode='constant')."""
    y = np.pad(y.astype(np.float64), frame_length // 2)
    n = 1 + (y.size - frame_length) // hop_length
    return np.array([np.sqrt(np.mean(y[k * hop_length : k * hop_length + frame_length] ** 2)) for k in range(n)])


def ref_slice(waveform: np.ndarray, sr: int, threshold=-40.0, min_length=5000, min_interval=300, hop_size=20, max_sil_kept=5000):
    """slicer.Slicer(sr, threshold, min_length).slice(waveform) -> [(start, end)] sample ranges."""
    min_interval = sr * min_interval / 1000
    threshold = 10 ** (threshold / 20.0)
    hop_size = round(sr * hop_size / 1000)
    win_size = min(round(min_interval), 4 * hop_size)
    min_length = round(sr * min_length / 1000 / hop_size)
    min_interval = round(min_interval / hop_size)
    max_sil_kept = round(sr * max_sil_kept / 1000 / hop_size)
    if waveform.shape[0] <= min_length:
        return [(0, len(waveform))]
    rms_list = ref_rms(waveform, win_size, hop_size)
    sil_tags = []
    silence_start = None
    clip_start = 0
    for i, rms in enumerate(rms_list):
        if rms < threshold:
            if silence_start is None:
                silence_start = i
            continue
        if silence_start is None:
            continue
        is_leading_silence = silence_start == 0 and i > max_sil_kept
        need_slice_middle = i - silence_start >= min_interval and i - clip_start >= min_length
        if not is_leading_silence and not need_slice_middle:
            silence_start = None
            continue
        if i - silence_start <= max_sil_kept:
            pos = rms_list[silence_start : i + 1].argmin() + silence_start
            if silence_start == 0:
                sil_tags.append((0, pos))
            else:
                sil_tags.append((pos, pos))
            clip_start = pos
        elif i - silence_start <= max_sil_kept * 2:
            pos = rms_list[i - max_sil_kept : silence_start + max_sil_kept + 1].argmin()
            pos += i - max_sil_kept
            pos_l = rms_list[silence_start : silence_start + max_sil_kept + 1].argmin() + silence_start
            pos_r = rms_list[i - max_sil_kept : i + 1].argmin() + i - max_sil_kept
            if silence_start == 0:
                sil_tags.append((0, pos_r))
                clip_start = pos_r
            else:
                sil_tags.append((min(pos_l, pos), max(pos_r, pos)))
                clip_start = max(pos_r, pos)
        else:
            pos_l = rms_list[silence_start : silence_start + max_sil_kept + 1].argmin() + silence_start
            pos_r = rms_list[i - max_sil_kept : i + 1].argmin() + i - max_sil_kept
            if silence_start == 0:
                sil_tags.append((0, pos_r))
            else:
                sil_tags.append((pos_l, pos_r))
            clip_start = pos_r
        silence_start = None
    total_frames = rms_list.shape[0]
    if silence_start is not None and total_frames - silence_start >= min_interval:
        silence_end = min(total_frames, silence_start + max_sil_kept)
        pos = rms_list[silence_start : silence_end + 1].argmin() + silence_start
        sil_tags.append((pos, total_frames + 1))
    if len(sil_tags) == 0:
        return [(0, len(waveform))]
    chunks = []
    if sil_tags[0][0]:
        chunks.append((0, min(waveform.shape[0], sil_tags[0][0] * hop_size)))
    for i in range(len(sil_tags)):
        if i:
            chunks.append((sil_tags[i - 1][1] * hop_size, min(waveform.shape[0], sil_tags[i][0] * hop_size)))
        chunks.append((sil_tags[i][0] * hop_size, min(waveform.shape[0], sil_tags[i][1] * hop_size)))
    if sil_tags[-1][1] * hop_size < len(waveform):
        chunks.append((sil_tags[-1][1] * hop_size, len(waveform)))
    return [(int(a), int(b)) for a, b in chunks]


def ref_split(audio: np.ndarray, sr: int, hop_size: int) -> list[tuple[int, int]]:
    """main.split, returning (start_frame, end_frame) instead of the audio slice."""
    result = []
    for start, end in ref_slice(audio, sr):
        if start != end:
            start_frame, end_frame = int(start // hop_size), int(end // hop_size)
            if end_frame > start_frame:
                result.append((start_frame, end_frame))
    return result


def ref_cross_fade(a, b, idx):
    result = np.zeros(idx + b.shape[0])
    fade_len = a.shape[0] - idx
    np.copyto(dst=result[:idx], src=a[:idx])
    k = np.linspace(0, 1.0, num=fade_len, endpoint=True)
    result[idx : a.shape[0]] = (1 - k) * a[idx:] + k * b[:fade_len]
    np.copyto(dst=result[a.shape[0] :], src=b[fade_len:])
    return result


def ref_join(pieces):
    """main.py's loop (output rate == model rate)."""
    result = np.zeros(0)
    current_length = 0
    for start, seg_output in pieces:
        silent_length = start - current_length
        if silent_length >= 0:
            result = np.append(result, np.zeros(silent_length))
            result = np.append(result, seg_output)
        else:
            result = ref_cross_fade(result, seg_output, current_length + silent_length)
        current_length = current_length + silent_length + len(seg_output)
    return result


# ---------------------------------------------------------------- signals


def tone(seconds: float, level: float = 0.3, f0: float = 220.0) -> np.ndarray:
    t = np.arange(int(round(seconds * SR))) / SR
    return (level * np.sin(2 * np.pi * f0 * t)).astype(np.float32)


def quiet(seconds: float, level: float = 1e-4, seed: int = 0) -> np.ndarray:
    """A -80 dB noise floor: silent to the slicer, like a real recording's pauses."""
    return (level * np.random.default_rng(seed).standard_normal(int(round(seconds * SR)))).astype(np.float32)


def concat(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts).astype(np.float32)


SIGNALS = {
    "no_silence": lambda: tone(12.0),
    "all_silence": lambda: quiet(8.0),
    "digital_silence": lambda: np.zeros(3 * SR, np.float32),
    "very_short": lambda: tone(0.004),  # 176 samples: below min_length, never sliced
    "short_with_tail": lambda: concat(tone(1.0), quiet(1.0)),
    "gap_too_short_to_cut": lambda: concat(tone(6.0), quiet(0.2), tone(3.0)),
    "gap_before_min_length": lambda: concat(tone(3.0), quiet(1.0), tone(3.0)),
    "one_second_gap": lambda: concat(tone(6.0), quiet(1.0), tone(4.0)),
    "gap_6s": lambda: concat(tone(6.0), quiet(6.0), tone(2.0)),
    "gap_12s": lambda: concat(tone(6.0), quiet(12.0), tone(2.0)),
    "long_leading_silence": lambda: concat(quiet(6.0), tone(3.0)),
    "very_long_leading_silence": lambda: concat(quiet(11.0), tone(3.0)),
    "many_phrases": lambda: concat(*[concat(tone(5.5, f0=200 + 30 * i), quiet(0.5 + 0.3 * i, seed=i)) for i in range(5)]),
    "fade_out": lambda: tone(8.0) * np.linspace(1, 0, 8 * SR, dtype=np.float32),
}


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "frame_length, hop, n",
    [(3528, 882, 44100), (3528, 882, 10), (2048, 512, 5000), (7, 3, 100), (4, 4, 1)],
)
def test_frame_rms_matches_librosa_definition(frame_length, hop, n):
    y = np.random.default_rng(n).uniform(-1, 1, n).astype(np.float32)
    ours = frame_rms(y, frame_length, hop)
    ref = ref_rms(y, frame_length, hop)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_split_matches_upstream_slicer(name):
    audio = SIGNALS[name]()
    assert split_at_silence(audio, SR) == ref_slice(audio, SR)
    assert segment_frames(audio, SR, BLOCK) == ref_split(audio, SR, BLOCK)


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_segments_tile_the_frame_grid(name):
    audio = SIGNALS[name]()
    segments = segment_frames(audio, SR, BLOCK)
    if audio.size < BLOCK:
        assert segments == []
        return
    assert segments[0][0] == 0 and segments[-1][1] == audio.size // BLOCK
    assert all(prev[1] == nxt[0] for prev, nxt in zip(segments, segments[1:]))
    assert all(end > start for start, end in segments)


@pytest.mark.parametrize(
    "name, n_segments",
    [("no_silence", 1), ("very_short", 0), ("gap_too_short_to_cut", 1), ("gap_before_min_length", 1),
     ("one_second_gap", 2), ("gap_12s", 3), ("many_phrases", 5)],
)  # fmt: skip
def test_cuts_happen_only_where_upstream_would(name, n_segments):
    """Expected counts, so a reference and implementation that agree on nonsense still fail."""
    assert len(segment_frames(SIGNALS[name](), SR, BLOCK)) == n_segments


def test_cut_lies_inside_the_silence():
    audio = concat(tone(6.0), quiet(1.0), tone(4.0))
    chunks = split_at_silence(audio, SR)
    assert len(chunks) == 3 and chunks[1][0] == chunks[1][1]  # a 1 s pause is cut at one point: (pos, pos)
    first, second = chunks[0], chunks[2]
    assert first[0] == 0 and second[1] == audio.size and first[1] == second[0]
    assert 6.0 * SR < first[1] < 7.0 * SR


def test_threshold_is_respected():
    # A -30 dB "pause" is sound at -40 dB and silence at -20 dB.
    audio = concat(tone(6.0), tone(1.0, level=10 ** (-30 / 20) * np.sqrt(2)), tone(4.0))
    assert len(segment_frames(audio, SR, BLOCK)) == 1
    assert len(segment_frames(audio, SR, BLOCK, SlicerSettings(threshold_db=-20.0))) == 2


def test_settings_are_validated():
    with pytest.raises(ValueError, match="min_length_ms >= min_interval_ms >= hop_ms"):
        SlicerSettings(min_length_ms=100)
    with pytest.raises(ValueError, match="max_silence_kept_ms"):
        SlicerSettings(max_silence_kept_ms=10)
    with pytest.raises(ValueError, match="mono"):
        split_at_silence(np.zeros((2, 100)), SR)
    assert DEFAULT_SLICER.in_frames(SR) == (882, 3528, 250, 15, 250)


@pytest.mark.parametrize("idx", [0, 5, 99, 100])
def test_cross_fade_matches_upstream(idx):
    rng = np.random.default_rng(idx)
    a, b = rng.standard_normal(100), rng.standard_normal(150)
    np.testing.assert_allclose(cross_fade(a, b, idx), ref_cross_fade(a, b, idx))
    with pytest.raises(ValueError, match="cross_fade needs"):
        cross_fade(a, b[:10], 50)


def test_join_matches_upstream_loop_with_gaps_and_overlaps():
    rng = np.random.default_rng(0)
    pieces = [(0, rng.standard_normal(1024)), (512, rng.standard_normal(2048)), (3000, rng.standard_normal(700)),
              (3500, rng.standard_normal(1536)), (4000, rng.standard_normal(1100)), (5100, rng.standard_normal(1))]  # fmt: skip
    ours = join_segments(pieces, dtype=np.float64)
    ref = ref_join(pieces)
    assert ours.shape == ref.shape == (5101,)
    np.testing.assert_allclose(ours, ref)
    assert join_segments([]).shape == (0,)
    # a piece ending inside the previous one: upstream's cross_fade fails on it too
    with pytest.raises(ValueError, match="shorter than its overlap"):
        join_segments([(0, np.ones(1000)), (100, np.ones(500))])


def test_join_of_tiled_segments_keeps_the_length_and_has_no_clicks():
    """Segments overlapping by one block, each a sine with its own phase (as a model
    restarting its oscillator would give): the joins stay within the sine's slope."""
    f, amp = 330.0, 0.5
    segments = [(0, 40), (40, 97), (97, 130)]
    pieces = []
    for i, (start, end) in enumerate(segments):
        n = (end - start + 1) * BLOCK
        pieces.append((start * BLOCK, amp * np.sin(2 * np.pi * f * np.arange(n) / SR + 2.0 * i)))
    out = join_segments(pieces)
    assert out.shape == ((130 + 1) * BLOCK,)
    max_slope = amp * 2 * np.pi * f / SR  # largest sample step of the sine itself
    # linear fade: |dy| <= max slope + |a - b| / (fade - 1) <= max slope + 2 amp / (BLOCK - 1)
    bound = max_slope + 2 * amp / (BLOCK - 1)
    assert np.abs(np.diff(out)).max() <= bound * 1.0001
    # a hard cut at the same places would click
    hard = np.concatenate([seg[: (end - start) * BLOCK] for (start, end), (_, seg) in zip(segments, pieces)])
    assert np.abs(np.diff(hard)).max() > 3 * bound
