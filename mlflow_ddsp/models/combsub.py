"""Combtooth subtractive synthesisers: CombSubFast (DDSP-SVC 2.x/3.x default) and CombSub (1.x).

Both excite filters with a band-limited pulse train (the combtooth) that follows
f0 and with uniform noise; the network predicts the filters per frame.

- :class:`CombSubFast`: one frame-domain filter per source. Frames of
  ``2 * block_size`` under a sqrt-Hann window, spectra multiplied by
  ``exp(mag + i*pi*phase)`` (harmonic) and ``exp(mag) / 128`` (noise), summed,
  inverse FFT, window, overlap-add. Controls: 3 x ``block_size + 1`` bins.
- :class:`CombSub`: LTV-FIR filters: an all-pass group-delay filter then a
  magnitude filter with a pitch-dependent window on the combtooth, and a
  magnitude filter on the noise. Controls: ``n_mag_allpass + n_mag_harmonic + n_mag_noise``.
"""

from __future__ import annotations

import math
import torch
from torch import Tensor

from mlflow_ddsp.dsp.underflow import exp_floored
from mlflow_ddsp.dsp import (
    combtooth,
    complex_gain,
    frame_irfft_ola,
    frame_rfft,
    frequency_filter,
    hold_last_frame,
)
from mlflow_ddsp.models.base import Controls, DDSPModel, Synthesis, check_bool, check_int
from mlflow_ddsp.models.unit2control import Unit2Control

__all__ = ["CombSubFast", "CombSub"]


class CombSubFast(DDSPModel):
    """Combtooth subtractive synthesiser with frame-domain (STFT-like) filtering."""

    model_type = "CombSubFast"

    def __init__(
        self,
        *,
        sampling_rate: int,
        block_size: int,
        n_unit: int = 256,
        n_spk: int = 1,
        use_pitch_aug: bool = False,
        pcmer_norm: bool = False,
    ) -> None:
        """
        Args:
            sampling_rate: audio rate in Hz (``data.sampling_rate``).
            block_size: samples per frame (``data.block_size``).
            n_unit: unit channels (``data.encoder_out_channels``: 256 or 768).
            n_spk: number of speakers (``model.n_spk``).
            use_pitch_aug: embed a key-shift input (adds ``unit2ctrl.aug_shift_embed``).
            pcmer_norm: L2-normalise attention queries/keys.

        Raises:
            ConfigError: a value is out of range.
        """
        super().__init__(sampling_rate=sampling_rate, block_size=block_size, n_unit=n_unit, n_spk=n_spk)
        check_bool("use_pitch_aug", use_pitch_aug)
        check_bool("pcmer_norm", pcmer_norm)
        self._hparams.update(use_pitch_aug=use_pitch_aug, pcmer_norm=pcmer_norm)
        # sqrt-Hann on analysis and synthesis: the product is Hann, whose 50 %
        # overlap-add is exactly 1
        self.register_buffer("window", torch.sqrt(torch.hann_window(2 * block_size)))
        n_bins = block_size + 1
        splits = {"harmonic_magnitude": n_bins, "harmonic_phase": n_bins, "noise_magnitude": n_bins}
        self.unit2ctrl = Unit2Control(n_unit, n_spk, splits, use_pitch_aug=use_pitch_aug, pcmer_norm=pcmer_norm)

    def _render(self, controls: Controls, noise: Tensor | None, generator: torch.Generator | None) -> Synthesis:
        """Filter combtooth and noise frame by frame; ``harmonic``/``noise`` of the result are None."""
        ctrls, source = controls.ctrls, controls.source
        harmonic_filter = complex_gain(ctrls["harmonic_magnitude"], math.pi * ctrls["harmonic_phase"])
        noise_filter = exp_floored(ctrls["noise_magnitude"]) / 128
        pulses = combtooth(source.phase, source.f0_samples, self.sampling_rate_hz)
        noise_source = self._excitation_noise(pulses, noise, generator)
        spectra = frame_rfft(pulses, self.window, self.block) * hold_last_frame(harmonic_filter)
        spectra = spectra + frame_rfft(noise_source, self.window, self.block) * hold_last_frame(noise_filter)
        return Synthesis(audio=frame_irfft_ola(spectra, self.window, self.block), hidden=controls.hidden)


class CombSub(DDSPModel):
    """Combtooth subtractive synthesiser with LTV-FIR filters and group delay (DDSP-SVC 1.x)."""

    model_type = "CombSub"

    def __init__(
        self,
        *,
        sampling_rate: int,
        block_size: int,
        n_mag_allpass: int = 256,
        n_mag_harmonic: int = 512,
        n_mag_noise: int = 256,
        n_unit: int = 256,
        n_spk: int = 1,
    ) -> None:
        """
        Args:
            sampling_rate: audio rate in Hz (``data.sampling_rate``).
            block_size: samples per frame (``data.block_size``).
            n_mag_allpass: bins of the group-delay (all-pass) filter, >= 2.
            n_mag_harmonic: bins of the harmonic magnitude filter, >= 2.
            n_mag_noise: bins of the noise magnitude filter, >= 2.
            n_unit: unit channels (``data.encoder_out_channels``).
            n_spk: number of speakers (``model.n_spk``).

        Raises:
            ConfigError: a value is out of range.
        """
        super().__init__(sampling_rate=sampling_rate, block_size=block_size, n_unit=n_unit, n_spk=n_spk)
        # a filter of K bins has a 2 * (K - 1)-tap impulse response: K >= 2
        splits = {
            "group_delay": check_int("n_mag_allpass", n_mag_allpass, 2),
            "harmonic_magnitude": check_int("n_mag_harmonic", n_mag_harmonic, 2),
            "noise_magnitude": check_int("n_mag_noise", n_mag_noise, 2),
        }
        self._hparams.update(n_mag_allpass=n_mag_allpass, n_mag_harmonic=n_mag_harmonic, n_mag_noise=n_mag_noise)
        self.unit2ctrl = Unit2Control(n_unit, n_spk, splits)

    def _render(self, controls: Controls, noise: Tensor | None, generator: torch.Generator | None) -> Synthesis:
        """LTV-FIR filtering; the result carries the harmonic and noise parts too."""
        ctrls, source, f0 = controls.ctrls, controls.source, controls.f0
        group_delay = math.pi * torch.tanh(ctrls["group_delay"])
        harmonic_gain = exp_floored(ctrls["harmonic_magnitude"])
        noise_gain = exp_floored(ctrls["noise_magnitude"]) / 128

        pulses = combtooth(source.phase, source.f0_samples, self.sampling_rate_hz)
        # all-pass: unit magnitude, phase = integrated group delay over frequency
        harmonic = frequency_filter(pulses, complex_gain(None, torch.cumsum(group_delay, dim=-1)), hann_window=False)
        # window half-width of 1.5 periods: the filter cannot smear across pulses.
        # (tensor / tensor: Python's `float / tensor` multiplies by a reciprocal,
        # which rounds differently from upstream)
        half_width = torch.tensor(1.5 * self.sampling_rate_hz, dtype=f0.dtype, device=f0.device) / (f0 + 1e-3)
        harmonic = frequency_filter(
            harmonic,
            torch.complex(harmonic_gain, torch.zeros_like(harmonic_gain)),
            hann_window=True,
            half_width_frames=half_width,
        )
        noise_part = self._excitation_noise(harmonic, noise, generator)
        noise_part = frequency_filter(noise_part, torch.complex(noise_gain, torch.zeros_like(noise_gain)))
        return Synthesis(audio=harmonic + noise_part, hidden=controls.hidden, harmonic=harmonic, noise=noise_part)
