"""A small synthetic singing dataset for demos and tests, deterministic for a seed.

No recordings ship with mlflow-ddsp, so ``make_demo_dataset`` synthesises two
"singers" that sound clearly different and lays them out the way upstream
DDSP-SVC reads a dataset (speaker folders ``1`` and ``2``)::

    <out_dir>/train/audio/1/take_000.wav ...   ~seconds_per_speaker s of speaker 1
    <out_dir>/train/audio/2/take_000.wav ...   ~seconds_per_speaker s of speaker 2
    <out_dir>/val/audio/1/val_00.wav, val_01.wav
    <out_dir>/val/audio/2/val_00.wav, val_01.wav

Each clip (16-bit mono WAV, 2.5 s or longer so upstream's 2 s crops fit) is a
source-filter voice:

- a melody of notes on a pentatonic scale within the singer's range, joined by
  short glides, with a scoop into each phrase, delayed vibrato and slow pitch drift;
- a band-limited pulse train at that pitch (closed-form Dirichlet kernel, so no
  per-harmonic loop and no aliasing), plus breath noise within phrases and an
  inhale before each phrase;
- shaped, frame by frame in the STFT domain, by a spectral envelope of four
  formant resonances that glide between the vowels a/e/i/o/u, times a source tilt
  that sets the brightness;
- phrases separated by silences (with a -80 dB noise floor, as a real recording has).

The speakers differ in pitch range (speaker 1 about D4-F5, speaker 2 about
A2-B3), formant scale (shorter vs longer vocal tract), brightness, vibrato and
breathiness. Everything is vectorised numpy; the default set (~160 s of audio)
takes a few seconds on two cores.

The audio is meant to exercise the pipeline (preprocess, train, checkpoint,
serve), not to judge voice conversion quality.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlflow_ddsp.audio import save_wav
from mlflow_ddsp.corpus import AUDIO_DIR
from mlflow_ddsp.errors import ConfigError

__all__ = [
    "DEFAULT_SECONDS_PER_SPEAKER",
    "MIN_CLIP_SECONDS",
    "VOICES",
    "DemoDataset",
    "SungClip",
    "Voice",
    "make_demo_dataset",
    "synthesize_clip",
    "synthesize_sung_clip",
]

DEFAULT_SECONDS_PER_SPEAKER = 75.0
MIN_CLIP_SECONDS = 2.5  # upstream trains on 2 s crops of clips at least 2.1 s long
VAL_FILES_PER_SPEAKER = 2
VAL_CLIP_SECONDS = 3.0
_CLIP_SECONDS = (3.5, 6.0)  # range of train clip lengths before rescaling to the total

_CONTROL_RATE = 1000  # Hz: pitch, loudness and formant tracks are built on a 1 ms grid
_N_FFT, _HOP = 2048, 512  # spectral-envelope filtering; hop = n_fft / 4 for sqrt-Hann OLA
_NOISE_FLOOR = 1e-4  # -80 dBFS: real recordings are never digital silence

# (F1..F4 Hz, bandwidths Hz) of an adult male voice; speakers scale the frequencies.
_VOWELS = {
    "a": ((730, 1090, 2440, 3400), (90, 110, 170, 250)),
    "e": ((530, 1840, 2480, 3400), (70, 100, 160, 250)),
    "i": ((280, 2250, 3000, 3500), (60, 100, 170, 250)),
    "o": ((570, 840, 2410, 3400), (80, 100, 160, 250)),
    "u": ((310, 870, 2240, 3400), (70, 100, 150, 250)),
}
_VOWEL_F = np.array([v[0] for v in _VOWELS.values()], dtype=np.float64)  # [5, 4]
_VOWEL_B = np.array([v[1] for v in _VOWELS.values()], dtype=np.float64)  # [5, 4]
_FORMANT_GAIN = np.array([1.0, 0.6, 0.3, 0.15])  # higher formants are weaker
_PENTATONIC = (0, 2, 4, 7, 9)  # major pentatonic: every melody sounds plausible


@dataclass(frozen=True)
class Voice:
    """What makes one demo singer sound like themselves.

    Attributes:
        midi_low, midi_high: melody range (MIDI note numbers, 69 = A4 = 440 Hz).
        formant_scale: vocal-tract length; > 1 is shorter (higher formants).
        tilt: source roll-off exponent above 500 Hz; higher is darker.
        vibrato_rate, vibrato_depth: Hz and semitones (peak).
        breath: aspiration noise relative to the voiced part.
        beat: seconds per beat of the melody.
    """

    name: str
    midi_low: int
    midi_high: int
    formant_scale: float
    tilt: float
    vibrato_rate: float
    vibrato_depth: float
    breath: float
    beat: float


VOICES: dict[int, Voice] = {
    1: Voice("bright soprano", 62, 77, 1.17, 0.55, 5.9, 0.45, 0.012, 0.28),
    2: Voice("dark baritone", 45, 59, 0.93, 0.95, 5.1, 0.30, 0.006, 0.34),
}


@dataclass(frozen=True)
class DemoDataset:
    """What ``make_demo_dataset`` wrote.

    Attributes:
        root: the output folder.
        sampling_rate: Hz of every file.
        files: ``{"train": {1: [paths], 2: [...]}, "val": {...}}``.
        seconds: ``{"train": {1: 75.0, 2: 75.0}, "val": {...}}``.
    """

    root: Path
    sampling_rate: int
    files: dict[str, dict[int, list[Path]]] = field(default_factory=dict)
    seconds: dict[str, dict[int, float]] = field(default_factory=dict)

    @property
    def n_files(self) -> int:
        return sum(len(paths) for split in self.files.values() for paths in split.values())

    @property
    def total_seconds(self) -> float:
        return sum(s for split in self.seconds.values() for s in split.values())

    def lines(self) -> list[str]:
        """Human-readable summary, one line per split."""
        out = []
        for split, per_spk in self.files.items():
            parts = ", ".join(
                f"speaker {spk}: {len(paths)} files, {self.seconds[split][spk]:.1f} s" for spk, paths in per_spk.items()
            )
            out.append(f"{split}: {parts}  ({self.root / split})")
        return out


# -- synthesis ----------------------------------------------------------------


def _smooth(x: np.ndarray, seconds: float) -> np.ndarray:
    """Low-pass control tracks (``[n]`` or ``[n, k]``) with a normalised Hann kernel."""
    n = max(3, int(seconds * _CONTROL_RATE) | 1)
    kernel = np.hanning(n + 2)[1:-1]
    kernel /= kernel.sum()
    # Edge padding keeps the ends at their values instead of fading them to zero.
    pad = n // 2
    if x.ndim == 1:
        return np.convolve(np.pad(x, pad, mode="edge"), kernel, mode="valid")
    return np.stack([_smooth(x[:, k], seconds) for k in range(x.shape[1])], axis=1)


def _plan_phrases(seconds: float, voice: Voice, rng: np.random.Generator):
    """Notes of a clip: ``starts, ends, midi, vowel, level, phrase_id`` (all ``[n_notes]``)."""
    lead, tail = rng.uniform(0.10, 0.30), rng.uniform(0.20, 0.40)
    t, end = lead, seconds - tail
    starts, ends, midi, vowel, level, phrase_id = [], [], [], [], [], []
    notes = [m for m in range(voice.midi_low, voice.midi_high + 1) if m % 12 in _PENTATONIC]
    pos = int(rng.integers(len(notes)))
    vow = int(rng.integers(len(_VOWELS)))
    phrase = 0
    while end - t > 0.6:
        length = rng.uniform(1.2, 2.8)
        if end - t - length < 1.2:  # no room for another phrase after a gap: fill up
            length = end - t
        p_end = t + length
        while t < p_end - 1e-9:  # a handful of notes per phrase
            # At least two notes per phrase, so every clip has a melody.
            dur = min(voice.beat * float(rng.choice([1, 1, 2, 2, 3, 4])), length / 2)
            if p_end - (t + dur) < 0.15:  # don't leave a sliver: the last note takes it
                dur = p_end - t
            step = int(rng.choice([-2, -1, -1, 1, 1, 2]))
            pos = pos + step if 0 <= pos + step < len(notes) else pos - step  # bounce off the range
            if rng.random() < 0.6:
                vow = int(rng.integers(len(_VOWELS)))
            starts.append(t)
            ends.append(t + dur)
            midi.append(notes[pos])
            vowel.append(vow)
            level.append(rng.uniform(0.65, 1.0))
            phrase_id.append(phrase)
            t += dur
        t += rng.uniform(0.30, 0.60)  # breath gap
        phrase += 1
    return tuple(np.asarray(a) for a in (starts, ends, midi, vowel, level, phrase_id))


def _control_tracks(seconds: float, voice: Voice, rng: np.random.Generator):
    """Pitch (Hz), voiced amplitude, breath amplitude ``[n_ctl]`` and formants ``[n_ctl, 4]``."""
    n_ctl = int(np.ceil(seconds * _CONTROL_RATE)) + 1
    t = np.arange(n_ctl) / _CONTROL_RATE
    starts, ends, midi, vowel, level, phrase_id = _plan_phrases(seconds, voice, rng)

    # Which note each control point belongs to (-1 before the first / in gaps).
    idx = np.searchsorted(starts, t, side="right") - 1
    inside = (idx >= 0) & (t < ends[np.maximum(idx, 0)])
    note = np.maximum(idx, 0)
    since = t - starts[note]  # seconds into the current note
    first_in_phrase = np.r_[True, phrase_id[1:] != phrase_id[:-1]][note]

    # Pitch: piecewise-constant notes, glides ~40 ms either side of a boundary,
    # a scoop from a semitone below into each phrase, and slow random drift.
    semis = _smooth(midi[note].astype(np.float64), 0.08)
    semis -= np.where(first_in_phrase, np.exp(-since / 0.05), 0.0)
    depth = voice.vibrato_depth * np.clip((since - 0.15) / 0.3, 0, 1) * (ends - starts > 0.4)[note]
    rate = voice.vibrato_rate + 3.0 * _smooth(rng.standard_normal(n_ctl), 0.5)  # +-0.2 Hz wander
    vib = np.sin(2 * np.pi * np.cumsum(rate) / _CONTROL_RATE + rng.uniform(0, 2 * np.pi))
    drift = 1.5 * _smooth(rng.standard_normal(n_ctl), 0.3)  # ~0.15 semitone
    semis = semis + depth * vib + drift
    f0 = 440.0 * 2.0 ** ((semis - 69.0) / 12.0)

    # Loudness: note levels inside phrases, 30 ms attacks/releases, a dip at note
    # changes (re-articulation) and a little amplitude vibrato.
    amp = np.where(inside, level[note], 0.0)
    amp = _smooth(amp, 0.06) * (1 - 0.3 * np.exp(-((since / 0.03) ** 2)) * ~first_in_phrase)
    amp *= 1 + 0.08 * depth / max(voice.vibrato_depth, 1e-6) * vib

    # Breath: aspiration while singing, plus an inhale in the 0.25 s before each phrase.
    breath = voice.breath * amp
    for s in starts[np.r_[True, phrase_id[1:] != phrase_id[:-1]]][1:]:
        window = (t > s - 0.3) & (t < s - 0.05)
        breath[window] += 0.008 * np.hanning(int(window.sum()) + 2)[1:-1]

    # Formants glide between the notes' vowels over ~60 ms.
    formants = _smooth(_VOWEL_F[vowel[note]], 0.06) * voice.formant_scale
    bandwidths = _smooth(_VOWEL_B[vowel[note]], 0.06) * voice.formant_scale
    return f0, amp, breath, formants, bandwidths


def _pulse_train(f0: np.ndarray, sample_rate: int) -> np.ndarray:
    """Band-limited pulse train ``[T]``: all harmonics of ``f0 [T]`` below 0.45 * rate, amplitude 1 each.

    Closed form of ``sum_{k=1..K} cos(k * phase)`` (the Dirichlet kernel), so the cost
    does not grow with the number of harmonics.
    """
    cycles = np.cumsum(f0 / sample_rate)
    phi = 2 * np.pi * (cycles % 1.0)  # wrapped phase keeps float64 accurate
    k = np.floor(0.45 * sample_rate / f0)
    den = 2 * np.sin(phi / 2)
    small = np.abs(den) < 1e-9
    ratio = np.sin((k + 0.5) * phi) / np.where(small, 1.0, den)
    return np.where(small, k + 0.5, ratio) - 0.5


def _envelopes(formants, bandwidths, voice: Voice, freqs: np.ndarray):
    """Spectral envelopes ``[n_frames, n_bins]``: voiced (source tilt) and breath noise."""
    f = freqs[None, :, None]
    resonance = 1.0 / (1.0 + ((f - formants[:, None, :]) / (bandwidths[:, None, :] / 2)) ** 2)
    tract = 0.01 + (resonance * _FORMANT_GAIN).sum(axis=-1)  # [n_frames, n_bins]
    voiced_tilt = (1 + (freqs / 500.0) ** 2) ** (-voice.tilt)
    # Breath noise is white at the glottis: a gentler tilt, no energy below ~300 Hz.
    noise_tilt = (freqs / (freqs + 300.0)) * (1 + (freqs / 4000.0) ** 2) ** -0.5
    return tract * voiced_tilt, tract * noise_tilt


def _frame_centres(length: int) -> np.ndarray:
    """Sample positions ``[n_frames]`` of the filtering frames' centres (may lie outside the clip).

    Frames reach ``n_fft / 2`` beyond both ends so that every sample of the clip is
    covered by the full four overlapping windows.
    """
    n_frames = (length + _N_FFT) // _HOP + 1
    return np.arange(n_frames) * _HOP - _N_FFT // 2


def _filter_stft(signals: np.ndarray, envelopes: np.ndarray) -> np.ndarray:
    """Time-varying filtering by STFT multiplication and sqrt-Hann overlap-add.

    ``signals [S, T]`` and ``envelopes [S, n_frames, n_fft // 2 + 1]`` (frame ``i``
    centred on sample ``_frame_centres(T)[i]``) -> filtered ``[S, T]``.
    """
    n_sig, length = signals.shape
    n_frames = envelopes.shape[1]
    window = np.sqrt(np.hanning(_N_FFT + 1)[:-1])  # periodic: sqrt-Hann^2 at hop n/4 sums to 2
    padded = np.pad(signals, ((0, 0), (_N_FFT, _N_FFT + _HOP)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT, axis=1)[:, ::_HOP][:, :n_frames]
    spec = np.fft.rfft(frames * window, axis=-1) * envelopes
    out_frames = np.fft.irfft(spec, n=_N_FFT, axis=-1) * window  # [S, F, n_fft]
    # Overlap-add without a per-frame loop: each frame is 4 hop-sized chunks.
    per_frame = _N_FFT // _HOP
    chunks = out_frames.reshape(n_sig, n_frames, per_frame, _HOP)
    acc = np.zeros((n_sig, n_frames + per_frame, _HOP))
    for j in range(per_frame):
        acc[:, j : j + n_frames] += chunks[:, :, j]
    out = acc.reshape(n_sig, -1) / 2.0
    return out[:, _N_FFT : _N_FFT + length]


def _synthesize(seconds: float, voice: Voice, rng: np.random.Generator, sampling_rate: int):
    """The clip float32 ``[n]`` and its 1 ms control tracks: f0 (Hz) and voiced amplitude."""
    n = round(seconds * sampling_rate)
    f0_c, amp_c, breath_c, formants_c, bandwidths_c = _control_tracks(seconds, voice, rng)
    t_ctl = np.arange(f0_c.size) / _CONTROL_RATE
    t = np.arange(n) / sampling_rate
    f0 = np.interp(t, t_ctl, f0_c)
    voiced = _pulse_train(f0, sampling_rate) * np.interp(t, t_ctl, amp_c)
    # The pulse train has K unit harmonics; scale the noise to a comparable loudness.
    noise = rng.standard_normal(n) * np.interp(t, t_ctl, breath_c) * np.sqrt(0.45 * sampling_rate / f0)

    centres = _frame_centres(n) / sampling_rate * _CONTROL_RATE
    frame_ctl = np.clip(np.round(centres), 0, f0_c.size - 1).astype(int)
    freqs = np.fft.rfftfreq(_N_FFT, 1.0 / sampling_rate)
    env_v, env_n = _envelopes(formants_c[frame_ctl], bandwidths_c[frame_ctl], voice, freqs)
    out = _filter_stft(np.stack([voiced, noise]), np.stack([env_v, env_n])).sum(axis=0)

    out *= rng.uniform(0.45, 0.8) / max(float(np.abs(out).max()), 1e-9)  # recording level varies
    out += _NOISE_FLOOR * rng.standard_normal(n)
    return np.clip(out, -1.0, 1.0).astype(np.float32), f0_c, amp_c


def synthesize_clip(seconds: float, voice: Voice, rng: np.random.Generator, sampling_rate: int = 44100) -> np.ndarray:
    """One sung clip of ``voice``: float32 ``[round(seconds * sampling_rate)]`` in [-1, 1]."""
    return _synthesize(seconds, voice, rng, sampling_rate)[0]


@dataclass(frozen=True)
class SungClip:
    """A synthetic sung clip with the pitch it was synthesised at (for scoring f0 trackers).

    Attributes:
        audio: float32 ``[T]``.
        f0: float64 ``[T // hop_size + 1]`` Hz, the synthesis pitch at sample ``n * hop_size``
            (defined in pauses too; see ``voiced``).
        voiced: bool ``[T // hop_size + 1]``: the voiced source is at least ``voiced_level``
            of its peak amplitude there (pauses, inhales and note fades below are unvoiced).
    """

    audio: np.ndarray
    f0: np.ndarray
    voiced: np.ndarray


def synthesize_sung_clip(
    seconds: float,
    voice: Voice,
    rng: np.random.Generator,
    sampling_rate: int = 44100,
    hop_size: int = 512,
    voiced_level: float = 0.2,
) -> SungClip:
    """``synthesize_clip`` (the same audio for the same ``rng`` state) plus its true f0 and voicing."""
    audio, f0_c, amp_c = _synthesize(seconds, voice, rng, sampling_rate)
    t_frames = np.arange(audio.size // hop_size + 1) * hop_size / sampling_rate
    t_ctl = np.arange(f0_c.size) / _CONTROL_RATE
    f0 = np.interp(t_frames, t_ctl, f0_c)
    amp = np.interp(t_frames, t_ctl, amp_c)
    return SungClip(audio=audio, f0=f0, voiced=amp >= voiced_level * max(float(amp_c.max()), 1e-9))


# -- the dataset --------------------------------------------------------------


def _clip_lengths(total: float, rng: np.random.Generator) -> list[float]:
    """Clip durations summing to ``total`` seconds, each at least MIN_CLIP_SECONDS."""
    n = max(1, round(float(total) / float(np.mean(_CLIP_SECONDS))))
    lengths = rng.uniform(*_CLIP_SECONDS, size=n)
    lengths *= total / lengths.sum()
    while n > 1 and lengths.min() < MIN_CLIP_SECONDS:  # rescaling can only shrink so far
        n -= 1
        lengths = np.full(n, total / n)
    return [float(x) for x in lengths]


def _plan(seconds_per_speaker: float, seed: int) -> list[tuple[str, int, str, float, np.random.SeedSequence]]:
    """Every file to write: ``(split, speaker, file name, seconds, seed sequence)``."""
    plan = []
    for spk in VOICES:
        # Independent streams per (speaker, split, clip): changing the train length
        # leaves the validation clips unchanged.
        lengths = _clip_lengths(seconds_per_speaker, np.random.default_rng([seed, spk, 0]))
        for i, sec in enumerate(lengths):
            plan.append(("train", spk, f"take_{i:03d}.wav", sec, np.random.SeedSequence([seed, spk, 1, i])))
        for i in range(VAL_FILES_PER_SPEAKER):
            plan.append(("val", spk, f"val_{i:02d}.wav", VAL_CLIP_SECONDS, np.random.SeedSequence([seed, spk, 2, i])))
    return plan


def _check_out_dir(root: Path, planned: set[Path]) -> None:
    """Refuse to mix demo clips into a folder that holds other recordings."""
    for split in ("train", "val"):
        audio = root / split / AUDIO_DIR
        if not audio.is_dir():
            continue
        for path in sorted(audio.rglob("*")):
            if path.is_file() and path not in planned:
                raise ConfigError(
                    f"{path}: not a file of this demo set (your own recording, or left by a run with "
                    "more --seconds-per-speaker); remove it or choose another output folder"
                )


def make_demo_dataset(
    out_dir: str | os.PathLike,
    *,
    seconds_per_speaker: float = DEFAULT_SECONDS_PER_SPEAKER,
    seed: int = 0,
    sampling_rate: int = 44100,
    progress: bool = True,
) -> DemoDataset:
    """Write the demo dataset (see the module doc) under ``out_dir``; same seed, same bytes.

    ``seconds_per_speaker`` is the training audio per speaker; validation adds
    two 3 s clips per speaker. Files of an earlier run with the same layout are
    overwritten.

    Raises:
        ConfigError: ``seconds_per_speaker`` below MIN_CLIP_SECONDS, a sampling
            rate too low for the melody, or ``out_dir`` holding other recordings.
    """
    from tqdm import tqdm

    if not seconds_per_speaker >= MIN_CLIP_SECONDS:
        raise ConfigError(
            f"seconds_per_speaker={seconds_per_speaker!r} must be >= {MIN_CLIP_SECONDS} "
            "(each clip must be long enough for a training crop)"
        )
    if int(sampling_rate) < 8000:
        raise ConfigError(f"sampling_rate={sampling_rate!r} must be >= 8000 Hz")
    root = Path(out_dir)
    plan = _plan(float(seconds_per_speaker), int(seed))
    targets = [root / split / AUDIO_DIR / str(spk) / name for split, spk, name, _, _ in plan]
    _check_out_dir(root, set(targets))

    files: dict[str, dict[int, list[Path]]] = {"train": {}, "val": {}}
    seconds: dict[str, dict[int, float]] = {"train": {}, "val": {}}
    bar = tqdm(list(zip(plan, targets)), desc="demo data", unit="file", disable=None if progress else True)
    for (split, spk, _, sec, seq), path in bar:
        audio = synthesize_clip(sec, VOICES[spk], np.random.default_rng(seq), int(sampling_rate))
        save_wav(path, audio, int(sampling_rate))
        files[split].setdefault(spk, []).append(path)
        seconds[split][spk] = seconds[split].get(spk, 0.0) + audio.size / sampling_rate
    return DemoDataset(root=root, sampling_rate=int(sampling_rate), files=files, seconds=seconds)
