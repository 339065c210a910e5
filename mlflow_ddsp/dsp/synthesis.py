"""Excitation signals for DDSP-SVC: frame-rate controls to sample-rate sources.

Shape letters used throughout: ``B`` batch, ``T`` frames, ``N = T * block_size``
samples, ``C`` channels, ``H`` harmonics. Phases are kept in *cycles* wrapped to
[-0.5, 0.5] (multiply by 2*pi for radians) because that is what the combtooth
and the control network consume, and wrapping keeps float32 precise on long clips.

Every function reproduces upstream DDSP-SVC's arithmetic (same operations in the
same order, including its float64 phase accumulation at inference), so
checkpoints trained upstream sound the same here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "upsample",
    "accumulate_phase",
    "combtooth",
    "superfast_excitation",
    "remove_above_fmax",
    "harmonic_oscillators",
]


def upsample(frames: Tensor, factor: int) -> Tensor:
    """Linearly interpolate frame controls to sample rate.

    Sample ``n`` takes the value at fractional frame ``n / factor``; the last
    frame is held (interpolated towards a copy of itself), so frame ``t`` maps
    exactly to sample ``t * factor``.

    Args:
        frames: ``[B, T, C]`` frame-rate values.
        factor: samples per frame (``block_size``).

    Returns:
        ``[B, T * factor, C]``.
    """
    x = frames.transpose(1, 2)  # interpolate works on [B, C, T]
    x = torch.cat((x, x[:, :, -1:]), dim=2)
    n_frames = frames.shape[1]
    x = F.interpolate(x, size=n_frames * factor + 1, mode="linear", align_corners=True)
    return x[:, :, :-1].transpose(1, 2)


def accumulate_phase(
    f0: Tensor,
    sampling_rate: int,
    initial_phase: Tensor | None = None,
    double_precision: bool = True,
) -> Tensor:
    """Instantaneous phase of a source following ``f0``, in wrapped cycles.

    ``phase[n] = sum_{m<=n} f0[m] / sampling_rate (+ initial_phase / 2pi)``,
    then wrapped to [-0.5, 0.5] by subtracting the nearest integer.

    Args:
        f0: ``[B, N, 1]`` sample-rate f0 in Hz.
        sampling_rate: samples per second.
        initial_phase: optional phase offset in radians, broadcastable to
            ``[B, N, 1]`` (e.g. ``[B, 1, 1]``), used to continue a previous chunk.
        double_precision: accumulate in float64 (upstream's inference mode);
            a float32 running sum drifts by ~1e-5 cycles over a few seconds,
            enough to smear high harmonics. Training uses float32 for speed.

    Returns:
        ``[B, N, 1]`` phase in cycles, same dtype as ``f0``.
    """
    step = f0.double() / sampling_rate if double_precision else f0 / sampling_rate
    phase = torch.cumsum(step, dim=1)
    if initial_phase is not None:
        phase = phase + initial_phase.to(phase) / 2 / math.pi
    phase = phase - torch.round(phase)
    return phase.to(f0)


def combtooth(phase: Tensor, f0: Tensor, sampling_rate: int) -> Tensor:
    """Band-limited pulse train (a sinc at every period) from the wrapped phase.

    ``sinc(sampling_rate * phase / (f0 + 1e-3))``: the phase in cycles divided by
    the frequency in cycles per sample is the distance in samples to the nearest
    pulse, so each period holds one sinc pulse whose spectrum is flat up to Nyquist
    (every harmonic at equal amplitude). The 1e-3 Hz keeps f0 = 0 finite.

    Args:
        phase: ``[B, N, 1]`` wrapped phase in cycles (:func:`accumulate_phase`).
        f0: ``[B, N, 1]`` sample-rate f0 in Hz.
        sampling_rate: samples per second.

    Returns:
        ``[B, N]``.
    """
    return torch.sinc(sampling_rate * phase / (f0 + 1e-3)).squeeze(-1)


def superfast_excitation(f0_frames: Tensor, sampling_rate: int, block_size: int) -> tuple[Tensor, Tensor]:
    """Combtooth and per-frame phase for CombSubSuperFast, built block by block.

    Within frame ``t`` the normalised frequency ``s = f0 / sampling_rate`` ramps
    linearly towards the next frame's value; its phase after sample ``n`` of the
    block is the integral ``s*(n+1) + ds*n*(n+1) / (2*block)``. Each frame's
    starting phase is the wrapped sum of the previous frames' end phases
    (accumulated over frames, not samples, so float32 is enough).

    Args:
        f0_frames: ``[B, T, 1]`` frame-rate f0 in Hz.
        sampling_rate: samples per second.
        block_size: samples per frame.

    Returns:
        ``(combtooth [B, T * block_size], phase_frames [B, T, 1])`` where the
        phase (radians) is the one reached after the first sample of each frame.
    """
    n = torch.arange(block_size, device=f0_frames.device)
    s0 = f0_frames / sampling_rate
    # frequency step to the next frame; the last frame holds its value
    ds0 = F.pad(s0[:, 1:, :] - s0[:, :-1, :], (0, 0, 0, 1))
    rad = s0 * (n + 1) + 0.5 * ds0 * n * (n + 1) / block_size  # [B, T, block]
    s_inst = s0 + ds0 * n / block_size
    end_phase = torch.fmod(rad[..., -1:].float() + 0.5, 1.0) - 0.5
    start_phase = end_phase.cumsum(dim=1).fmod(1.0).to(f0_frames)
    rad = rad + F.pad(start_phase[:, :-1, :], (0, 0, 1, 0))  # frame t starts where t-1 ended
    rad = rad - torch.round(rad)
    pulses = torch.sinc(rad / (s_inst + 1e-5)).reshape(f0_frames.shape[0], -1)
    return pulses, 2 * math.pi * rad[:, :, :1]


def remove_above_fmax(amplitudes: Tensor, f0: Tensor, fmax: float, level_start: int = 1) -> Tensor:
    """Silence harmonics at or above ``fmax`` (anti-aliasing for additive synthesis).

    Harmonic ``k`` (numbered from ``level_start``) keeps its amplitude when
    ``k * f0 < fmax``; otherwise it is scaled by 1e-7 rather than zeroed, as
    upstream does, which keeps ``log(amplitude)`` finite.

    Args:
        amplitudes: ``[B, T, H]`` per-harmonic amplitudes.
        f0: ``[B, T, 1]`` f0 in Hz at the same rate as ``amplitudes``.
        fmax: cut-off in Hz (Nyquist: ``sampling_rate / 2``).
        level_start: number of the first harmonic.

    Returns:
        ``[B, T, H]``.
    """
    n_harm = amplitudes.shape[-1]
    pitches = f0 * torch.arange(level_start, n_harm + level_start).to(f0)
    keep = (pitches < fmax).float() + 1e-7
    return amplitudes * keep


def harmonic_oscillators(
    phase: Tensor,
    amplitudes_frames: Tensor,
    block_size: int,
    chunk_size: int = 32,
) -> Tensor:
    """Sum of harmonic sinusoids ``sum_k a_k[n] * sin(k * phase[n])``.

    Harmonics are processed ``chunk_size`` at a time (not frames or samples):
    the upsampled amplitudes of all 128 harmonics at once would need
    ``N * H`` floats, ~225 MB for 10 s at 44.1 kHz.

    Args:
        phase: ``[B, N, 1]`` fundamental phase in radians.
        amplitudes_frames: ``[B, T, H]`` frame-rate amplitude of harmonic 1..H.
        block_size: samples per frame (``N = T * block_size``).
        chunk_size: harmonics per vectorised chunk.

    Returns:
        ``[B, N]``.
    """
    n_harmonics = amplitudes_frames.shape[-1]
    levels = torch.arange(1, n_harmonics + 1).to(phase)
    out = None
    for start in range(0, n_harmonics, chunk_size):
        stop = start + chunk_size
        amplitudes = upsample(amplitudes_frames[:, :, start:stop], block_size)
        part = (torch.sin(phase * levels[start:stop]) * amplitudes).sum(-1)
        out = part if out is None else out + part
    return out
