"""Time-varying filtering for DDSP-SVC: framing, FFT filtering, overlap-add.

Three filter paths, one per model family, each reproducing upstream's arithmetic:

- :func:`frame_rfft` / :func:`frame_irfft_ola` (CombSubFast): frames of
  ``2 * block_size`` at hop ``block_size`` under a sqrt-Hann window on both
  analysis and synthesis, so the product is a Hann window whose 50 %-overlap sum
  is exactly 1 (a unit filter reconstructs the input).
- :func:`stft_analysis` / :func:`stft_synthesis` (CombSubSuperFast): centred
  ``torch.stft``/``torch.istft`` with window ``win_length`` and hop ``block_size``.
- :func:`frequency_filter` (Sins, CombSub): per-frame FIR filters designed from
  frequency responses (windowed impulse responses), applied by FFT convolution of
  Bartlett-windowed frames and overlap-add.

Shape letters: ``B`` batch, ``T`` frames, ``N = T * hop`` samples, ``K`` bins.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mlflow_ddsp.dsp.underflow import exp_floored

__all__ = [
    "complex_gain",
    "hold_last_frame",
    "overlap_add",
    "frame_rfft",
    "frame_irfft_ola",
    "stft_analysis",
    "stft_synthesis",
    "frequency_impulse_response",
    "fft_convolve",
    "frequency_filter",
]


def complex_gain(log_magnitude: Tensor | None, phase: Tensor) -> Tensor:
    """``exp(log_magnitude + i * phase)``, a filter's complex gain per bin (``exp(i * phase)`` without a magnitude).

    Upstream writes ``torch.exp(torch.complex(a, b))``; this is the same number as
    ``torch.polar(exp(a), b)``, which on the CPU runs PyTorch's vectorised real
    ``exp``, ``cos`` and ``sin`` instead of its complex ``exp``: 3.4x faster
    forward, 1.4x forward and backward for ``[4, 86, 513]`` (this 2-core CPU,
    torch 2.13); the values agree to float rounding (5e-7). The log magnitude is
    floored (:func:`~mlflow_ddsp.dsp.underflow.exp_floored`).

    Args:
        log_magnitude: natural-log magnitude, any shape; None for unit magnitude.
        phase: radians, the same shape.

    Returns:
        Complex tensor of that shape.
    """
    magnitude = torch.ones_like(phase) if log_magnitude is None else exp_floored(log_magnitude)
    return torch.polar(magnitude, phase)


def hold_last_frame(frames: Tensor) -> Tensor:
    """Append a copy of the last frame: ``[B, T, K] -> [B, T + 1, K]``.

    The framings below yield one analysis frame more than there are blocks
    (frames are centred on block starts, including the end of the signal); the
    extra frame reuses the last control frame.
    """
    return torch.cat((frames, frames[:, -1:, :]), dim=1)


def overlap_add(frames: Tensor, hop: int) -> Tensor:
    """Overlap-add frames placed every ``hop`` samples.

    Args:
        frames: ``[B, F, L]``; frame ``f`` starts at sample ``f * hop``.
        hop: frame advance in samples.

    Returns:
        ``[B, (F - 1) * hop + L]``.
    """
    n_frames, length = frames.shape[1], frames.shape[2]
    out_len = (n_frames - 1) * hop + length
    # fold (col2im) is a single vectorised scatter-add over all frames
    out = F.fold(frames.transpose(1, 2), output_size=(1, out_len), kernel_size=(1, length), stride=(1, hop))
    return out[:, 0, 0, :]


def frame_rfft(signal: Tensor, window: Tensor, block_size: int) -> Tensor:
    """Spectra of windowed frames of length ``2 * block_size`` at hop ``block_size``.

    The signal is zero-padded by one block on each side, so frame ``t`` is
    centred on sample ``t * block_size`` and there is one frame more than blocks.

    Args:
        signal: ``[B, N]`` with ``N = T * block_size``.
        window: ``[2 * block_size]`` analysis window (sqrt-Hann for CombSubFast).
        block_size: hop in samples.

    Returns:
        ``[B, T + 1, block_size + 1]`` complex.
    """
    frames = F.pad(signal, (block_size, block_size)).unfold(1, 2 * block_size, block_size)
    return torch.fft.rfft(frames * window, 2 * block_size)


def frame_irfft_ola(spectra: Tensor, window: Tensor, block_size: int) -> Tensor:
    """Inverse of :func:`frame_rfft`: inverse FFT, synthesis window, overlap-add.

    Args:
        spectra: ``[B, T + 1, block_size + 1]`` complex frame spectra.
        window: ``[2 * block_size]`` synthesis window.
        block_size: hop in samples.

    Returns:
        ``[B, T * block_size]``: the padding block at each end is dropped.
    """
    frames = torch.fft.irfft(spectra, 2 * block_size) * window
    return overlap_add(frames, block_size)[:, block_size:-block_size]


def _stft_pad_mode(n_samples: int, n_fft: int) -> str:
    # reflect padding needs more samples than the pad width; short inputs
    # (a block or two) fall back to zeros, as upstream does
    return "reflect" if n_samples > n_fft // 2 else "constant"


def stft_analysis(signal: Tensor, window: Tensor, hop_length: int) -> Tensor:
    """Centred STFT with ``n_fft = win_length = len(window)``.

    Args:
        signal: ``[B, N]`` with ``N = T * hop_length``.
        window: ``[W]`` analysis window (periodic Hann for CombSubSuperFast).
        hop_length: hop in samples.

    Returns:
        ``[B, W // 2 + 1, T + 1]`` complex.
    """
    n_fft = window.shape[0]
    return torch.stft(
        signal,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=n_fft,
        window=window,
        center=True,
        pad_mode=_stft_pad_mode(signal.shape[-1], n_fft),
        return_complex=True,
    )


def stft_synthesis(spectra: Tensor, window: Tensor, hop_length: int) -> Tensor:
    """Inverse of :func:`stft_analysis` (weighted overlap-add).

    Args:
        spectra: ``[B, W // 2 + 1, T + 1]`` complex.
        window: ``[W]`` the analysis window.
        hop_length: hop in samples.

    Returns:
        ``[B, T * hop_length]``.
    """
    n_fft = window.shape[0]
    return torch.istft(spectra, n_fft=n_fft, hop_length=hop_length, win_length=n_fft, window=window, center=True)


def frequency_impulse_response(
    transfer: Tensor,
    hann_window: bool = True,
    half_width_frames: Tensor | None = None,
) -> Tensor:
    """Per-frame FIR filters from frequency responses, in causal (centred) form.

    The impulse response is the inverse real FFT of ``transfer`` (length
    ``L = 2 * (K - 1)``), rotated by ``L // 2`` so its zero-time tap sits in the
    middle. Windowing trades frequency detail for a shorter, smoother response:

    - ``hann_window=False``: no window (all-pass group-delay filters).
    - ``hann_window=True`` and no ``half_width_frames``: a Hann window of length L.
    - ``half_width_frames`` given: a raised cosine of half-width
      ``half_width_frames[b, t]`` samples around the centre. Upstream sets the
      window to 1 (not 0) beyond ``+half_width`` and applies no cut-off below
      ``-half_width``; we keep that so upstream CombSub checkpoints sound the same.

    Args:
        transfer: ``[B, T, K]`` complex frequency response, DC to Nyquist.
        hann_window: apply a window (see above).
        half_width_frames: optional ``[B, T, 1]`` window half-width in samples.

    Returns:
        ``[B, T, L]`` real, ``L = 2 * (K - 1)``.
    """
    impulse = torch.fft.irfft(transfer)
    length = impulse.shape[-1]
    if not hann_window:
        return impulse.roll(length // 2, -1)
    if half_width_frames is None:
        # the irfft output is zero-phase (centre at index 0): rotate the window likewise
        window = torch.hann_window(length).to(impulse).roll(length // 2, -1)
        return (impulse * window).roll(length // 2, -1)
    offsets = torch.arange(-(length // 2), (length + 1) // 2).to(impulse) / half_width_frames
    offsets = torch.where(offsets > 1, torch.zeros_like(offsets), offsets)
    window = (1 + torch.cos(math.pi * offsets)) / 2
    return impulse.roll(length // 2, -1) * window


def fft_convolve(audio: Tensor, impulse_response: Tensor) -> Tensor:
    """Convolve audio with a time-varying FIR filter (one response per frame).

    The audio is cut into Bartlett-windowed frames of ``2 * hop`` at hop
    ``hop = N / T`` (50 % overlap sums to 1), each frame is convolved with its
    frame's response by zero-padded FFT (linear, not circular, convolution), and
    the results are overlap-added. The output is cropped to ``N`` samples with the
    responses' centre (``L // 2``) as time zero, so a centred response causes no delay.

    Args:
        audio: ``[B, N]``.
        impulse_response: ``[B, T, L]`` causal-form responses, ``N % T == 0``.

    Returns:
        ``[B, N]``.
    """
    batch, n_samples = audio.shape
    ir_batch, n_frames, ir_size = impulse_response.shape
    if ir_batch != batch:
        raise ValueError(f"audio batch {batch} != impulse response batch {ir_batch}")
    if n_samples % n_frames != 0:
        raise ValueError(f"audio length {n_samples} is not a multiple of the {n_frames} filter frames")
    hop = n_samples // n_frames
    frame_size = 2 * hop
    frames = F.pad(audio, (hop, hop)).unfold(1, frame_size, hop)
    frames = frames * torch.bartlett_window(frame_size).to(frames)
    n_fft = frame_size + ir_size - 1  # linear convolution length
    # T + 1 audio frames: the last one reuses the last filter
    impulse_response = hold_last_frame(impulse_response)
    spectra = torch.fft.rfft(frames, n_fft) * torch.fft.rfft(impulse_response, n_fft)
    out = overlap_add(torch.fft.irfft(spectra, n_fft), hop)
    start = hop + ir_size // 2  # drop the leading pad and the filters' centre delay
    return out[:, start : start + n_samples]


def frequency_filter(
    audio: Tensor,
    transfer: Tensor,
    hann_window: bool = True,
    half_width_frames: Tensor | None = None,
) -> Tensor:
    """Filter audio with a frame-wise frequency response (LTV-FIR).

    Args:
        audio: ``[B, N]``.
        transfer: ``[B, T, K]`` complex response per frame, ``N % T == 0``.
        hann_window: see :func:`frequency_impulse_response`.
        half_width_frames: optional ``[B, T, 1]``, see :func:`frequency_impulse_response`.

    Returns:
        ``[B, N]``.
    """
    return fft_convolve(audio, frequency_impulse_response(transfer, hann_window, half_width_frames))
