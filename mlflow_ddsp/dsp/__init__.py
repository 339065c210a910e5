"""Pure-torch DSP for DDSP-SVC: excitation sources and time-varying filters.

No learnable state lives here; the models in :mod:`mlflow_ddsp.models` combine
these functions with the control network. Tensors are ``[B, T, C]`` at frame
rate and ``[B, N]`` (or ``[B, N, 1]``) at sample rate, ``N = T * block_size``.
"""

from mlflow_ddsp.dsp.filtering import (
    complex_gain,
    fft_convolve,
    frame_irfft_ola,
    frame_rfft,
    frequency_filter,
    frequency_impulse_response,
    hold_last_frame,
    overlap_add,
    stft_analysis,
    stft_synthesis,
)
from mlflow_ddsp.dsp.synthesis import (
    accumulate_phase,
    combtooth,
    harmonic_oscillators,
    remove_above_fmax,
    superfast_excitation,
    upsample,
)

__all__ = [
    "accumulate_phase",
    "combtooth",
    "complex_gain",
    "fft_convolve",
    "frame_irfft_ola",
    "frame_rfft",
    "frequency_filter",
    "frequency_impulse_response",
    "harmonic_oscillators",
    "hold_last_frame",
    "overlap_add",
    "remove_above_fmax",
    "stft_analysis",
    "stft_synthesis",
    "superfast_excitation",
    "upsample",
]
