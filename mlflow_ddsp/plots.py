"""Spectrogram images for validation and for comparing versions (matplotlib, Agg).

``spectrogram_image`` renders side-by-side log-magnitude spectrograms, optionally
with the difference of each panel from the first, into an RGB array
``[H, W, 3]`` uint8 that MLflow logs as an image.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["log_spectrogram", "spectrogram_image", "mel_image"]

N_FFT = 2048
HOP = 512


def log_spectrogram(audio: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """dB magnitude spectrogram ``[n_fft // 2 + 1, frames]`` of mono audio ``[N]``."""
    import torch

    x = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    if x.numel() < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.numel()))
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs()
    return (20 * torch.log10(spec + 1e-5)).numpy()


def spectrogram_image(
    panels: Sequence[tuple[str, np.ndarray]],
    sampling_rate: int,
    *,
    difference: bool = True,
    title: str | None = None,
) -> np.ndarray:
    """Render ``[(label, audio [N]), ...]`` side by side; the first panel is the reference.

    With ``difference``, each later panel gets a companion showing its dB
    difference from the reference (cropped to the shorter length).

    Returns:
        RGB image ``[H, W, 3]`` uint8.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    specs = [(label, log_spectrogram(audio)) for label, audio in panels]
    columns = list(specs)
    if difference and len(specs) > 1:
        reference = specs[0][1]
        for label, spec in specs[1:]:
            frames = min(reference.shape[1], spec.shape[1])
            columns.append((f"{label} - {specs[0][0]}", spec[:, :frames] - reference[:, :frames]))
    fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3.2), squeeze=False, dpi=80)
    top_hz = sampling_rate / 2
    for ax, (label, spec) in zip(axes[0], columns):
        is_difference = " - " in label
        seconds = spec.shape[1] * HOP / sampling_rate
        ax.imshow(
            spec, origin="lower", aspect="auto", extent=(0, seconds, 0, top_hz / 1000),
            cmap="coolwarm" if is_difference else "magma",
            vmin=-30 if is_difference else -100, vmax=30 if is_difference else 20,
        )  # fmt: skip
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("s", fontsize=8)
        ax.set_ylabel("kHz", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def mel_image(panels: Sequence[tuple[str, np.ndarray]], *, title: str | None = None) -> np.ndarray:
    """Render ``[(label, log-mel [T, M]), ...]`` side by side (natural-log mels, as the vocoder's).

    The cascade models' validation picture (upstream's ``saver.log_spec``): target,
    the DDSP stage and the final output, on one colour scale (ln 1e-5 .. ln 100).

    Returns:
        RGB image ``[H, W, 3]`` uint8.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False, dpi=80)
    for ax, (label, mel) in zip(axes[0], panels):
        ax.imshow(np.asarray(mel).T, origin="lower", aspect="auto", cmap="magma", vmin=-11.5, vmax=4.6)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("frame", fontsize=8)
        ax.set_ylabel("mel bin", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image
