"""Audio file I/O: mono float32 loading at a target rate, resampling, WAV writing.

Loading mirrors upstream DDSP-SVC (``librosa.load(path, sr=rate)``): channels are
averaged to mono, samples are float32 in [-1, 1] without normalisation, and the
resampler is soxr at "HQ" quality, which is what librosa >= 0.10 uses by default.
torchaudio is deliberately not used (it does not import beside torch 2.13 here).

Shapes: audio is a 1-D ``np.ndarray`` ``[T]`` of float32 samples.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from mlflow_ddsp.errors import AudioError, one_line

__all__ = ["load_audio", "save_wav", "resample"]

PathLike = str | os.PathLike[str]

# soundfile subtypes that store integers: float input must be clipped first,
# because libsndfile's float -> int conversion wraps around instead of clipping.
_INTEGER_SUBTYPES = {"PCM_16", "PCM_24", "PCM_32", "PCM_U8", "PCM_S8"}



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
            line and names the file.
    """
    path = Path(path)
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
