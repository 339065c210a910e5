"""Sins: the additive sinusoidal synthesiser of DDSP-SVC 1.x.

A bank of ``n_harmonics`` sinusoids at multiples of f0 (harmonics at or above
Nyquist silenced), passed through a learned all-pass group-delay filter, plus
uniform noise through a learned magnitude filter. Controls:
``n_harmonics + n_mag_allpass + n_mag_noise``.
"""

from __future__ import annotations

import math
import torch
from torch import Tensor

from mlflow_ddsp.dsp.underflow import exp_floored
from mlflow_ddsp.dsp import complex_gain, frequency_filter, harmonic_oscillators, remove_above_fmax
from mlflow_ddsp.models.base import Controls, DDSPModel, Synthesis, check_int
from mlflow_ddsp.models.unit2control import Unit2Control

__all__ = ["Sins"]

# harmonics rendered per vectorised chunk: bounds the [B, N, chunk] temporaries
_HARMONICS_PER_CHUNK = 32


class Sins(DDSPModel):
    """Harmonic-plus-noise additive synthesiser."""

    model_type = "Sins"

    def __init__(
        self,
        *,
        sampling_rate: int,
        block_size: int,
        n_harmonics: int = 128,
        n_mag_allpass: int = 256,
        n_mag_noise: int = 256,
        n_unit: int = 256,
        n_spk: int = 1,
    ) -> None:
        """
        Args:
            sampling_rate: audio rate in Hz (``data.sampling_rate``).
            block_size: samples per frame (``data.block_size``).
            n_harmonics: sinusoids in the bank (``model.n_harmonics``), >= 1.
            n_mag_allpass: bins of the group-delay filter, >= 2.
            n_mag_noise: bins of the noise magnitude filter, >= 2.
            n_unit: unit channels (``data.encoder_out_channels``).
            n_spk: number of speakers (``model.n_spk``).

        Raises:
            ConfigError: a value is out of range.
        """
        super().__init__(sampling_rate=sampling_rate, block_size=block_size, n_unit=n_unit, n_spk=n_spk)
        splits = {
            "amplitudes": check_int("n_harmonics", n_harmonics, 1),
            "group_delay": check_int("n_mag_allpass", n_mag_allpass, 2),
            "noise_magnitude": check_int("n_mag_noise", n_mag_noise, 2),
        }
        self._hparams.update(n_harmonics=n_harmonics, n_mag_allpass=n_mag_allpass, n_mag_noise=n_mag_noise)
        self.unit2ctrl = Unit2Control(n_unit, n_spk, splits)

    def _render(self, controls: Controls, noise: Tensor | None, generator: torch.Generator | None) -> Synthesis:
        """Harmonic bank through the all-pass filter plus filtered noise; with both parts."""
        ctrls, source, f0 = controls.ctrls, controls.source, controls.f0
        amplitudes = exp_floored(ctrls["amplitudes"]) / 128
        group_delay = math.pi * torch.tanh(ctrls["group_delay"])
        noise_gain = exp_floored(ctrls["noise_magnitude"]) / 128

        amplitudes = remove_above_fmax(amplitudes, f0, self.sampling_rate_hz / 2)
        sinusoids = harmonic_oscillators(2 * math.pi * source.phase, amplitudes, self.block, _HARMONICS_PER_CHUNK)
        harmonic = frequency_filter(sinusoids, complex_gain(None, torch.cumsum(group_delay, dim=-1)), hann_window=False)
        noise_part = self._excitation_noise(harmonic, noise, generator)
        noise_part = frequency_filter(noise_part, torch.complex(noise_gain, torch.zeros_like(noise_gain)))
        return Synthesis(audio=harmonic + noise_part, hidden=controls.hidden, harmonic=harmonic, noise=noise_part)
