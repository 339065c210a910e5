"""Frame volume: RMS of the signal over ``block_size``-sample windows.

Matches upstream's ``Volume_Extractor`` exactly: square the signal, reflect-pad it
by ``hop // 2`` on the left and ``(hop + 1) // 2`` on the right, and take the root of
the mean over ``[n * hop, (n + 1) * hop)`` for each of ``T // hop + 1`` frames, so
frame ``n`` is centred on sample ``n * hop``.
"""

from __future__ import annotations

import numpy as np

from mlflow_ddsp.features.frames import frame_count

__all__ = ["extract_volume"]


def extract_volume(audio: np.ndarray, hop_size: int) -> np.ndarray:
    """RMS volume of mono audio ``[T]`` -> float32 ``[T // hop_size + 1]``.

    Padding the *squared* signal (not the signal) is upstream's order; it only
    matters at the two edges.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(f"extract_volume expects non-empty 1-D audio [T], got shape {audio.shape}")
    hop = int(hop_size)
    n_frames = frame_count(audio.size, hop)
    power = np.pad(np.square(audio), (hop // 2, (hop + 1) // 2), mode="reflect")
    # The padded signal is T + hop long and n_frames * hop <= T + hop, so the
    # windows tile its head exactly: one reshape replaces upstream's Python loop.
    windows = power[: n_frames * hop].reshape(n_frames, hop)
    return np.sqrt(windows.mean(axis=1, dtype=np.float64)).astype(np.float32)
