"""CombSubSuperFast: the combtooth subtractive synthesiser of current DDSP-SVC (5.x default).

Differences from CombSubFast: the combtooth is generated per frame with f0
ramping linearly inside each block (:func:`~mlflow_ddsp.dsp.superfast_excitation`),
filtering is a centred STFT of ``win_length`` (2048) at hop ``block_size``, both
harmonic and noise filters have magnitude *and* phase (4 x ``win_length // 2 + 1``
controls), the noise is Gaussian, and the decoder is the conv-only Conformer.
"""

from __future__ import annotations

import math
import torch
from torch import Tensor

from mlflow_ddsp.dsp import complex_gain, hold_last_frame, stft_analysis, stft_synthesis, superfast_excitation
from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.models.base import Controls, DDSPModel, Source, Synthesis, check_bool, check_int
from mlflow_ddsp.models.unit2control import Unit2Control

__all__ = ["CombSubSuperFast"]


class CombSubSuperFast(DDSPModel):
    """Combtooth subtractive synthesiser with STFT-domain magnitude+phase filters."""

    model_type = "CombSubSuperFast"
    noise_kind = "normal"

    def __init__(
        self,
        *,
        sampling_rate: int,
        block_size: int,
        win_length: int = 2048,
        n_unit: int = 256,
        n_spk: int = 1,
        use_pitch_aug: bool = False,
    ) -> None:
        """
        Args:
            sampling_rate: audio rate in Hz (``data.sampling_rate``).
            block_size: samples per frame and STFT hop (``data.block_size``).
            win_length: STFT window and FFT size (``model.win_length``), > block_size.
            n_unit: unit channels (``data.encoder_out_channels``).
            n_spk: number of speakers (``model.n_spk``).
            use_pitch_aug: embed a key-shift input (adds ``unit2ctrl.aug_shift_embed``).

        Raises:
            ConfigError: a value is out of range.
        """
        super().__init__(sampling_rate=sampling_rate, block_size=block_size, n_unit=n_unit, n_spk=n_spk)
        check_int("win_length", win_length, 2)
        if win_length <= block_size:
            # a periodic Hann window is 0 at its first sample: with hop >= window
            # some samples are never covered and the inverse STFT is undefined
            raise ConfigError(
                f"Invalid value for model.win_length={win_length}: must be greater than data.block_size={block_size}"
            )
        check_bool("use_pitch_aug", use_pitch_aug)
        self._hparams.update(win_length=win_length, use_pitch_aug=use_pitch_aug)
        self.win = win_length
        self.register_buffer("win_length", torch.tensor(win_length))
        self.register_buffer("window", torch.hann_window(win_length))
        n_bins = win_length // 2 + 1
        splits = {
            "harmonic_magnitude": n_bins,
            "harmonic_phase": n_bins,
            "noise_magnitude": n_bins,
            "noise_phase": n_bins,
        }
        self.unit2ctrl = Unit2Control(n_unit, n_spk, splits, decoder="conv", use_pitch_aug=use_pitch_aug)

    def _source(self, f0: Tensor, initial_phase: Tensor | None, infer: bool) -> Source:
        """Combtooth and frame phase built per frame; ``initial_phase`` and ``infer`` have no effect.

        The phase is accumulated per frame, which float32 handles exactly enough (as upstream).
        """
        pulses, phase_frames = superfast_excitation(f0, self.sampling_rate_hz, self.block)
        return Source(phase_frames, pulses=pulses)

    def _render(self, controls: Controls, noise: Tensor | None, generator: torch.Generator | None) -> Synthesis:
        """Filter combtooth and Gaussian noise in the STFT domain; ``harmonic``/``noise`` are None."""
        ctrls, pulses = controls.ctrls, controls.source.pulses
        harmonic_filter = complex_gain(ctrls["harmonic_magnitude"], math.pi * ctrls["harmonic_phase"])
        noise_filter = complex_gain(ctrls["noise_magnitude"], math.pi * ctrls["noise_phase"]) / 128
        noise_source = self._excitation_noise(pulses, noise, generator)
        # STFT spectra are [B, bins, frames]: filters are [B, frames, bins]
        spectra = stft_analysis(pulses, self.window, self.block) * hold_last_frame(harmonic_filter).transpose(1, 2)
        spectra = spectra + stft_analysis(noise_source, self.window, self.block) * hold_last_frame(
            noise_filter
        ).transpose(1, 2)
        return Synthesis(audio=stft_synthesis(spectra, self.window, self.block), hidden=controls.hidden)
