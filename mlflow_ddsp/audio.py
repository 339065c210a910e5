"""Audio file I/O: mono float32 loading at a target rate, resampling, WAV writing.

Loading mirrors upstream DDSP-SVC (``librosa.load(path, sr=rate)``): channels are
averaged to mono, samples are float32 in [-1, 1] without normalisation, and the
resampler is soxr at "HQ" quality, which is what librosa >= 0.10 uses by default.
torchaudio is deliberately not used (it does not import beside torch 2.13 here).

Shapes: audio is a 1-D ``np.ndarray`` ``[T]`` of float32 samples.

It also measures whether a recording can fill a model's frequency band
(:func:`content_edge_hz`, :func:`band_shortfall`): a recording made at a lower rate
than ``data.sampling_rate``, or low-passed on its way (MP3, phone), gives the
model trained on it nothing above its edge.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from mlflow_ddsp.errors import AudioError, one_line

__all__ = [
    "ACTIVE_FRAME_DB",
    "BAND_FLOOR_DB",
    "BAND_STEP_HZ",
    "FAR_BELOW_NYQUIST",
    "band_shortfall",
    "content_edge_hz",
    "load_audio",
    "native_rate",
    "resample",
    "save_wav",
]

PathLike = str | os.PathLike[str]

# soundfile subtypes that store integers: float input must be clipped first,
# because libsndfile's float -> int conversion wraps around instead of clipping.
_INTEGER_SUBTYPES = {"PCM_16", "PCM_24", "PCM_32", "PCM_U8", "PCM_S8"}

#: Hz: the width of the bands :func:`content_edge_hz` compares
BAND_STEP_HZ = 250.0
#: dB: a band holds content when its mean power is within this of the strongest band's
BAND_FLOOR_DB = 80.0
#: dB: frames within this of the loudest frame's energy are measured (the voice, not the pauses)
ACTIVE_FRAME_DB = 40.0
#: a content edge below this fraction of the model's Nyquist frequency is reported
FAR_BELOW_NYQUIST = 0.5
_BAND_FFT = 2048  # samples per analysis frame (Hann window, no overlap)
_BAND_CHUNK = 256  # frames per FFT batch: bounded memory for long recordings


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample 1-D audio ``[T]`` from ``orig_sr`` to ``target_sr`` Hz with soxr (HQ).

    Returns float32 ``[round(T * target_sr / orig_sr)]``; the input itself when the
    rates are equal (after a float32 cast).
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"resample expects 1-D audio [T], got shape {audio.shape}")
    if int(orig_sr) == int(target_sr) or audio.size == 0:
        return audio
    out = soxr.resample(audio, int(orig_sr), int(target_sr), quality="HQ")
    return np.ascontiguousarray(out, dtype=np.float32)


def load_audio(path: PathLike, sample_rate: int) -> np.ndarray:
    """Read an audio file as mono float32 ``[T]`` at ``sample_rate`` Hz.

    Raises:
        AudioError: the file is missing or unreadable, holds no samples (also
            after resampling), or contains NaN/inf samples. The message is one
            line and names the file by its absolute path.
    """
    path = Path(path).absolute()  # messages name the file whatever the working folder
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        data, native_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{path}: cannot read audio ({one_line(exc)})") from exc
    if data.size == 0:
        raise AudioError(f"{path}: audio file is empty (0 samples)")
    # [T, C] -> [T]: average channels, as librosa.to_mono does.
    audio = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(audio).all():
        bad = int(np.count_nonzero(~np.isfinite(audio)))
        raise AudioError(f"{path}: audio contains {bad} non-finite (NaN/inf) samples")
    audio = resample(audio, native_sr, sample_rate)
    if audio.size == 0:
        raise AudioError(
            f"{path}: audio is too short ({data.shape[0]} samples at {native_sr} Hz) "
            f"to give any sample at {sample_rate} Hz"
        )
    return np.ascontiguousarray(audio, dtype=np.float32)


def save_wav(
    path: PathLike,
    audio: np.ndarray,
    sample_rate: int,
    *,
    subtype: str = "PCM_16",
) -> Path:
    """Write mono audio ``[T]`` (or ``[1, T]``; numpy or torch) to a WAV file.

    Integer subtypes (default 16-bit PCM, as upstream's ``soundfile.write``) are
    clipped to [-1, 1] first. Parent folders are created. Returns the path.

    Raises:
        AudioError: the audio is not mono, is empty, or has NaN/inf samples.
    """
    path = Path(path)
    if hasattr(audio, "detach"):  # a torch tensor, without importing torch here
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2 and audio.shape[0] == 1:
        audio = audio[0]
    if audio.ndim != 1:
        raise AudioError(f"{path}: expected mono audio [T] or [1, T], got shape {audio.shape}")
    if audio.size == 0:
        raise AudioError(f"{path}: refusing to write empty audio (0 samples)")
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: refusing to write audio with NaN/inf samples")
    if subtype.upper() in _INTEGER_SUBTYPES:
        audio = np.clip(audio, -1.0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, int(sample_rate), subtype=subtype, format="WAV")
    return path


def content_edge_hz(audio: np.ndarray, sample_rate: int) -> float | None:
    """The frequency (Hz) below which a recording's content lies: its spectral roll-off edge.

    The rule: cut ``audio`` ``[T]`` (float, ``sample_rate`` Hz) into frames of 2048
    samples (Hann window, no overlap; a shorter recording is zero-padded to one frame);
    keep the active frames, those whose energy is within ``ACTIVE_FRAME_DB`` (40 dB) of
    the loudest frame's; average their power spectra; group the bins into bands of
    ``BAND_STEP_HZ`` (250 Hz) from 0 Hz up to Nyquist. The edge is the upper frequency of
    the highest band whose mean power is within ``BAND_FLOOR_DB`` (80 dB) of the strongest
    band's.

    Why a level floor and not an energy fraction: a voice puts 99.9 % of its energy below
    4-5 kHz whether or not it was low-passed (measured on mlflow-ddsp's synthetic demo
    voices: 2.3-3.9 kHz), so an energy fraction cannot tell them apart. What tells them
    apart is what lies above: a recording's own noise floor, breath and sibilants reach
    Nyquist 50-75 dB below its strongest band, while a resampler's or codec's stop band
    sits 85-150 dB below it (16-bit quantization noise of a low-passed file included).

    Returns:
        The edge in Hz, at most ``sample_rate / 2``; None for audio without any energy
        (nothing to measure).
    """
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    n = _BAND_FFT
    if x.size < n:
        x = np.pad(x, (0, n - x.size))
    frames = x[: x.size // n * n].reshape(-1, n)
    window = np.hanning(n)
    energy = np.einsum("ij,ij->i", frames, frames)
    loudest = float(energy.max())
    if not loudest > 0.0:
        return None
    active = frames[energy >= loudest * 10.0 ** (-ACTIVE_FRAME_DB / 10.0)]
    power = np.zeros(n // 2 + 1)
    for start in range(0, active.shape[0], _BAND_CHUNK):
        spectrum = np.fft.rfft(active[start : start + _BAND_CHUNK] * window, axis=1)
        power += (spectrum.real**2 + spectrum.imag**2).sum(axis=0)
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    nyquist = sample_rate / 2.0
    band = np.minimum((freqs // BAND_STEP_HZ).astype(np.int64), int(np.ceil(nyquist / BAND_STEP_HZ)) - 1)
    sums = np.bincount(band, weights=power)
    counts = np.bincount(band)
    levels = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)  # mean power per band
    strongest = float(levels.max())
    if not strongest > 0.0:
        return None
    filled = np.nonzero(levels >= strongest * 10.0 ** (-BAND_FLOOR_DB / 10.0))[0]
    return float(min((int(filled[-1]) + 1) * BAND_STEP_HZ, nyquist))


def band_shortfall(native_rate: int, edge_hz: float | None, model_rate: int) -> str | None:
    """Why a recording cannot fill a model's band, in words; None when it can.

    Args:
        native_rate: the recording's own sample rate, Hz (from the file's header).
        edge_hz: :func:`content_edge_hz` of the recording loaded at ``model_rate``, Hz
            (None: not measured, or silent).
        model_rate: the model's ``data.sampling_rate``, Hz; its band reaches
            ``model_rate / 2``.

    The rule: a recording falls short when its ``native_rate`` is below ``model_rate``
    (nothing above ``native_rate / 2`` can be in it), or when its content edge is below
    ``FAR_BELOW_NYQUIST`` (half) of the model's Nyquist frequency (a 16 kHz MP3 or a
    phone recording resampled to 44.1 kHz). The returned text says where the model
    trained on it will stop, e.g. ``"8000 Hz recording: the model trained on it will
    have nothing above 4.0 kHz"``.
    """
    model_nyquist = model_rate / 2.0
    low_rate = native_rate < model_rate
    low_edge = edge_hz is not None and edge_hz < FAR_BELOW_NYQUIST * model_nyquist
    if not (low_rate or low_edge):
        return None
    limit = native_rate / 2.0 if low_rate else model_nyquist
    what = []
    if low_rate:
        what.append(f"{native_rate} Hz recording")
    # a content edge clearly below the file's own Nyquist is worth naming too
    if edge_hz is not None and edge_hz < 0.9 * limit:
        what.append(f"content stops at {edge_hz / 1000:.1f} kHz")
        limit = edge_hz
    return f"{', '.join(what)}: the model trained on it will have nothing above {limit / 1000:.1f} kHz"


def native_rate(path: PathLike) -> int:
    """The sample rate (Hz) in an audio file's header.

    Raises:
        AudioError: the file cannot be read as audio (one line naming it).
    """
    try:
        return int(sf.info(str(path)).samplerate)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{path}: cannot read audio ({one_line(exc)})") from exc
