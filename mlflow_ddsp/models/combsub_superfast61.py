"""CombSubSuperFast of DDSP-SVC 6.1: the 6.0 synthesiser with the exciter fed to the network.

Source: upstream DDSP-SVC ``ddsp/vocoder.py`` ``CombSubSuperFast``, branch ``6.1``.
The synthesis is 6.0's (:mod:`mlflow_ddsp.models.combsub_superfast`, branch
``master``): a per-frame combtooth (:func:`~mlflow_ddsp.dsp.superfast_excitation`)
and Gaussian noise, each filtered in a centred STFT of ``win_length`` by a
predicted magnitude+phase response, then one inverse STFT. What changes:

- the noise is drawn *before* the network runs (``randn`` of the combtooth's
  shape, global RNG), and both exciters, cut into ``block_size`` frames, are an
  input of :class:`~mlflow_ddsp.models.unit2control61.Unit2Control61`;
- the network no longer reads f0 or the phase (its ``f0_embed`` / ``phase_embed``
  stay in the state_dict, unused);
- ``n_aux_layers``, ``n_aux_chans``, ``use_norm`` and ``use_attention`` size the
  network, and the hidden features are ``n_aux_chans`` wide.

State_dict keys are upstream 6.1's ``ddsp_model.*`` keys without the prefix:
``sampling_rate``, ``block_size``, ``win_length``, ``window`` and ``unit2ctrl.*``.
A 6.0 CombSubSuperFast checkpoint does not load (different ``unit2ctrl`` keys).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from mlflow_ddsp.dsp import complex_gain, hold_last_frame, stft_analysis, stft_synthesis, superfast_excitation
from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.models.base import Controls, DDSPModel, Source, Synthesis, check_bool, check_int
from mlflow_ddsp.models.unit2control61 import Unit2Control61

__all__ = ["CombSubSuperFast61"]


class CombSubSuperFast61(DDSPModel):
    """Combtooth subtractive synthesiser whose control network also reads the exciter (6.1)."""

    model_type = "CombSubSuperFast"
    upstream_version = "6.1"
    noise_kind = "normal"

    def __init__(
        self,
        *,
        sampling_rate: int,
        block_size: int,
        win_length: int = 2048,
        n_unit: int = 256,
        n_spk: int = 1,
        n_aux_layers: int = 3,
        n_aux_chans: int = 256,
        use_norm: bool = False,
        use_attention: bool = False,
        use_pitch_aug: bool = False,
    ) -> None:
        """
        Args:
            sampling_rate: audio rate in Hz (``data.sampling_rate``).
            block_size: samples per frame and STFT hop (``data.block_size``).
            win_length: STFT window and FFT size (``model.win_length``), > block_size.
            n_unit: unit channels (``data.encoder_out_channels``).
            n_spk: number of speakers (``model.n_spk``).
            n_aux_layers: decoder layers of the control network (``model.n_aux_layers``).
            n_aux_chans: hidden width of the control network (``model.n_aux_chans``).
            use_norm: LayerNorm in each decoder conv module (``model.use_norm``).
            use_attention: self-attention in each decoder layer (``model.use_attention``).
            use_pitch_aug: embed a key-shift input (``model.use_pitch_aug``).

        Raises:
            ConfigError: a value is out of range (the message names the config key).
        """
        super().__init__(sampling_rate=sampling_rate, block_size=block_size, n_unit=n_unit, n_spk=n_spk)
        check_int("win_length", win_length, 2)
        if win_length <= block_size:
            raise ConfigError(
                f"Invalid value for model.win_length={win_length}: must be greater than data.block_size={block_size}"
            )
        check_int("n_aux_layers", n_aux_layers, 0)
        check_int("n_aux_chans", n_aux_chans, 1)
        check_bool("use_norm", use_norm)
        check_bool("use_attention", use_attention)
        check_bool("use_pitch_aug", use_pitch_aug)
        if use_attention and n_aux_chans % 8:
            raise ConfigError(
                f"Invalid value for model.n_aux_chans={n_aux_chans}: with model.use_attention it must be "
                "a multiple of the 8 attention heads"
            )
        self._hparams.update(
            win_length=win_length,
            n_aux_layers=n_aux_layers,
            n_aux_chans=n_aux_chans,
            use_norm=use_norm,
            use_attention=use_attention,
            use_pitch_aug=use_pitch_aug,
        )
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
        self.unit2ctrl = Unit2Control61(
            n_unit,
            block_size,
            n_spk,
            splits,
            num_layers=n_aux_layers,
            dim_model=n_aux_chans,
            use_norm=use_norm,
            use_attention=use_attention,
            use_pitch_aug=use_pitch_aug,
        )

    def synthesize(
        self,
        units: Tensor,
        f0: Tensor,
        volume: Tensor,
        spk_id: Tensor | int | None = None,
        spk_mix_dict: Mapping[int, float] | None = None,
        *,
        aug_shift: Tensor | None = None,
        initial_phase: Tensor | None = None,
        infer: bool = True,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Synthesis:
        """Render audio; the noise is drawn (or taken) before the network runs, as upstream 6.1.

        Args:
            units: ``[B, T, n_unit]`` content units.
            f0: ``[B, T, 1]`` fundamental frequency, Hz.
            volume: ``[B, T, 1]`` frame RMS.
            spk_id: 1-based speaker id (int, ``[B]`` or ``[B, 1]``); needed when n_spk > 1.
            spk_mix_dict: ``{1-based speaker id: weight}``, overrides ``spk_id``.
            aug_shift: ``[B, 1, 1]`` key shift in semitones (``use_pitch_aug`` models).
            initial_phase: ignored (as upstream).
            infer: ignored: the phase is accumulated per frame in float32 either way (as upstream).
            noise: ``[B, T * block_size]`` pre-drawn standard normal noise source.
            generator: RNG for the noise when ``noise`` is None; default torch's global RNG
                (one ``randn`` of the combtooth's shape, upstream's ``randn_like``).

        Returns:
            :class:`~mlflow_ddsp.models.base.Synthesis` (``harmonic``/``noise`` None,
            ``hidden [B, T, n_aux_chans]``).

        Raises:
            ValueError: input shapes disagree, or a speaker id is missing or out of range.
        """
        self._check_inputs(units, f0, volume)
        source = self._source(f0, initial_phase, infer)
        pulses = source.pulses
        noise_source = self._excitation_noise(pulses, noise, generator)
        ctrls, hidden = self.unit2ctrl(
            units,
            pulses.unfold(1, self.block, self.block),  # [B, T, block]
            noise_source.unfold(1, self.block, self.block),
            volume,
            spk_id,
            spk_mix_dict,
            aug_shift,
        )
        return self._render(Controls(ctrls, hidden, source, f0), noise_source, None)

    def _source(self, f0: Tensor, initial_phase: Tensor | None, infer: bool) -> Source:
        """The combtooth, built per frame (``initial_phase`` and ``infer`` have no effect, as upstream)."""
        pulses, phase_frames = superfast_excitation(f0, self.sampling_rate_hz, self.block)
        return Source(phase_frames, pulses=pulses)

    def _render(self, controls: Controls, noise: Tensor | None, generator: torch.Generator | None) -> Synthesis:
        """Filter combtooth and noise in the STFT domain and resynthesise ``[B, T * block_size]``."""
        ctrls, pulses = controls.ctrls, controls.source.pulses
        noise_source = self._excitation_noise(pulses, noise, generator)
        harmonic_filter = complex_gain(ctrls["harmonic_magnitude"], math.pi * ctrls["harmonic_phase"])
        noise_filter = complex_gain(ctrls["noise_magnitude"], math.pi * ctrls["noise_phase"]) / 128
        # STFT spectra are [B, bins, frames]; filters are [B, frames, bins], the last frame held
        spectra = stft_analysis(pulses, self.window, self.block) * hold_last_frame(harmonic_filter).transpose(1, 2)
        spectra = spectra + stft_analysis(noise_source, self.window, self.block) * hold_last_frame(
            noise_filter
        ).transpose(1, 2)
        return Synthesis(audio=stft_synthesis(spectra, self.window, self.block), hidden=controls.hidden)
