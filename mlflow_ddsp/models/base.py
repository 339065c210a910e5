"""What every DDSP-SVC model shares: constructor checks, buffers, inputs, noise, loading.

A model maps frame-rate ``units [B, T, C]``, ``f0 [B, T, 1]`` (Hz) and
``volume [B, T, 1]`` to audio ``[B, T * block_size]``. :meth:`DDSPModel.synthesize`
is written once: it checks the inputs, builds the excitation's phase
(:meth:`DDSPModel._source`), runs Unit2Control on units, f0, phase and volume,
then hands the per-frame controls to the subclass's ``_render``; ``forward``
returns only the audio.

The ``sampling_rate`` / ``block_size`` (/ ``win_length``) buffers exist because
upstream checkpoints carry them; loading a checkpoint whose values differ from
the constructor's is an error here (upstream silently ran with a mismatch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from mlflow_ddsp.dsp import accumulate_phase, upsample
from mlflow_ddsp.errors import ConfigError

__all__ = ["CONFIG_KEYS", "Synthesis", "Source", "Controls", "DDSPModel", "check_int", "check_bool"]

# constructor argument -> the upstream config.yaml key it comes from (for messages)
CONFIG_KEYS = {
    "sampling_rate": "data.sampling_rate",
    "block_size": "data.block_size",
    "n_unit": "data.encoder_out_channels",
    "n_spk": "model.n_spk",
    "win_length": "model.win_length",
    "n_harmonics": "model.n_harmonics",
    "n_mag_allpass": "model.n_mag_allpass",
    "n_mag_noise": "model.n_mag_noise",
    "n_mag_harmonic": "model.n_mag_harmonic",
    "use_pitch_aug": "model.use_pitch_aug",
    "pcmer_norm": "model.pcmer_norm",
    # the cascade models (RectifiedFlow 6.0/6.1, DiffusionFast 5.0)
    "n_layers": "model.n_layers",
    "n_chans": "model.n_chans",
    "n_aux_layers": "model.n_aux_layers",
    "n_aux_chans": "model.n_aux_chans",
    "use_norm": "model.use_norm",
    "use_attention": "model.use_attention",
}


def check_int(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise ConfigError naming the key."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        key = CONFIG_KEYS.get(name, name)
        raise ConfigError(f"Invalid value for {key}={value!r}: must be an integer >= {minimum}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool, else raise ConfigError naming the key."""
    if not isinstance(value, bool):
        key = CONFIG_KEYS.get(name, name)
        raise ConfigError(f"Invalid value for {key}={value!r}: must be true or false")
    return value


class Synthesis(NamedTuple):
    """Everything one synthesis pass produces.

    Attributes:
        audio: ``[B, T * block_size]`` the output signal.
        hidden: ``[B, T, 256]`` Unit2Control features after the final LayerNorm.
        harmonic: ``[B, N]`` harmonic part, for models that render it separately
            (Sins, CombSub); None for CombSubFast / CombSubSuperFast, which filter
            both sources in one spectrum.
        noise: ``[B, N]`` noise part, as ``harmonic``.
    """

    audio: Tensor
    hidden: Tensor
    harmonic: Tensor | None = None
    noise: Tensor | None = None


class Source(NamedTuple):
    """The excitation's phase, computed before the network runs.

    Attributes:
        phase_frames: ``[B, T, 1]`` source phase at each frame's first sample,
            radians (Unit2Control's phase input).
        f0_samples: ``[B, T * block_size, 1]`` f0 upsampled to the sample rate, Hz
            (None for CombSubSuperFast, which works per frame).
        phase: ``[B, T * block_size, 1]`` wrapped phase in cycles (None as ``f0_samples``).
        pulses: ``[B, T * block_size]`` the combtooth, for models that build it
            with the phase (CombSubSuperFast); else None.
    """

    phase_frames: Tensor
    f0_samples: Tensor | None = None
    phase: Tensor | None = None
    pulses: Tensor | None = None


class Controls(NamedTuple):
    """What the network predicted, with the source it was given.

    Attributes:
        ctrls: name -> ``[B, T, n]`` per-frame filter/amplitude controls.
        hidden: ``[B, T, 256]`` Unit2Control features.
        source: the :class:`Source` the controls were predicted for.
        f0: ``[B, T, 1]`` frame f0, Hz.
    """

    ctrls: dict[str, Tensor]
    hidden: Tensor
    source: Source
    f0: Tensor


class DDSPModel(nn.Module):
    """Base class: validated hyperparameters, buffers, input checks and noise."""

    model_type: ClassVar[str]
    #: "uniform" (in [-1, 1)) or "normal": the excitation noise each model draws
    noise_kind: ClassVar[str] = "uniform"

    def __init__(self, *, sampling_rate: int, block_size: int, n_unit: int, n_spk: int) -> None:
        super().__init__()
        self.sampling_rate_hz = check_int("sampling_rate", sampling_rate, 1)
        self.block = check_int("block_size", block_size, 1)
        self.n_unit = check_int("n_unit", n_unit, 1)
        self.n_spk = check_int("n_spk", n_spk, 1)
        # kept as buffers only for upstream state_dict compatibility; the math
        # uses the Python ints above so no tensor-to-int syncs happen per call
        self.register_buffer("sampling_rate", torch.tensor(sampling_rate))
        self.register_buffer("block_size", torch.tensor(block_size))
        self._hparams: dict[str, Any] = {
            "sampling_rate": sampling_rate,
            "block_size": block_size,
            "n_unit": n_unit,
            "n_spk": n_spk,
        }

    @property
    def hparams(self) -> dict[str, Any]:
        """The constructor keyword arguments that rebuild this architecture."""
        return dict(self._hparams)

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # scalar hyperparameter buffers have no shape to mismatch, so compare values
        mismatched = {}
        for name, buffer in self.named_buffers(recurse=False):
            key = prefix + name
            if buffer.dim() == 0 and key in state_dict:
                stored = state_dict[key]
                if torch.is_tensor(stored) and stored.numel() == 1 and int(stored) != int(buffer):
                    mismatched[name] = buffer.clone()
                    error_msgs.append(
                        f"checkpoint has {CONFIG_KEYS.get(name, name)}={int(stored)} but this "
                        f"{self.model_type} was built with {int(buffer)}; build the model from the "
                        "checkpoint's config"
                    )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # keep buffers equal to the Python ints the math uses, even after the error
        for name, original in mismatched.items():
            getattr(self, name).copy_(original)

    def _check_inputs(self, units: Tensor, f0: Tensor, volume: Tensor) -> None:
        if units.dim() != 3 or units.shape[-1] != self.n_unit:
            raise ValueError(f"units must be [B, T, {self.n_unit}]; got {tuple(units.shape)}")
        expected = (units.shape[0], units.shape[1], 1)
        for name, tensor in (("f0", f0), ("volume", volume)):
            if tuple(tensor.shape) != expected:
                raise ValueError(f"{name} must be [B, T, 1] = {expected} to match units; got {tuple(tensor.shape)}")

    def _excitation_noise(self, like: Tensor, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """``[B, N]`` noise source: the given one, or a fresh draw from ``generator``.

        With neither given this draws from torch's global RNG exactly as upstream's
        ``rand_like`` / ``randn_like`` does, so a seeded run matches upstream.
        """
        if noise is not None:
            if tuple(noise.shape) != tuple(like.shape):
                raise ValueError(f"noise must be [B, N] = {tuple(like.shape)}; got {tuple(noise.shape)}")
            return noise.to(like)
        if self.noise_kind == "normal":
            return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        return torch.rand(like.shape, generator=generator, dtype=like.dtype, device=like.device) * 2 - 1

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
        """Render audio and its parts.

        Args:
            units: ``[B, T, n_unit]`` content units.
            f0: ``[B, T, 1]`` fundamental frequency, Hz (unvoiced frames interpolated).
            volume: ``[B, T, 1]`` frame RMS.
            spk_id: 1-based speaker id (int, ``[B]`` or ``[B, 1]``); needed when n_spk > 1.
            spk_mix_dict: ``{1-based speaker id: weight}``, overrides ``spk_id``.
            aug_shift: ``[B, 1, 1]`` key shift in semitones (``use_pitch_aug`` models).
            initial_phase: ``[B, 1, 1]`` source phase offset in radians (ignored by
                CombSubSuperFast, as upstream).
            infer: accumulate the phase in float64 (upstream inference); training
                passes False for the float32 path upstream trains with.
            noise: ``[B, T * block_size]`` pre-drawn noise source (uniform in [-1, 1)
                for CombSub/CombSubFast/Sins, standard normal for CombSubSuperFast).
            generator: RNG for the noise when ``noise`` is None; default torch's global RNG.

        Returns:
            :class:`Synthesis`.
        """
        self._check_inputs(units, f0, volume)
        source = self._source(f0, initial_phase, infer)
        ctrls, hidden = self.unit2ctrl(units, f0, source.phase_frames, volume, spk_id, spk_mix_dict, aug_shift)
        return self._render(Controls(ctrls, hidden, source, f0), noise, generator)

    def _source(self, f0: Tensor, initial_phase: Tensor | None, infer: bool) -> Source:
        """Sample-rate f0 and its accumulated phase (float64 when ``infer``, as upstream).

        ``f0 [B, T, 1]`` Hz -> :class:`Source` with ``f0_samples``, ``phase`` (cycles)
        and ``phase_frames = 2 * pi * phase[:, ::block_size]`` (radians).
        """
        f0_samples = upsample(f0, self.block)
        phase = accumulate_phase(f0_samples, self.sampling_rate_hz, initial_phase, double_precision=infer)
        return Source(2 * math.pi * phase[:, :: self.block, :], f0_samples, phase)

    def _render(self, controls: Controls, noise: Tensor | None, generator: torch.Generator | None) -> Synthesis:
        """Turn the predicted controls into audio (each model's own synthesis)."""
        raise NotImplementedError

    def forward(
        self,
        units: Tensor,
        f0: Tensor,
        volume: Tensor,
        spk_id: Tensor | int | None = None,
        spk_mix_dict: Mapping[int, float] | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Audio ``[B, T * block_size]``; keyword arguments as :meth:`synthesize`."""
        return self.synthesize(units, f0, volume, spk_id, spk_mix_dict, **kwargs).audio
