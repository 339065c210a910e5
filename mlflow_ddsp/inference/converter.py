"""Singing-voice conversion with a trained DDSP-SVC model, as upstream's ``main.py`` does it.

For an input clip ``audio [N]`` at ``sample_rate``, :meth:`VoiceConverter.convert`:

1. resamples it to the model rate ``sr = data.sampling_rate`` (soxr HQ) -> ``wav [T]``;
   everything below is on the model's frame grid, hop ``block = data.block_size``,
   ``T // block + 1`` frames;
2. extracts f0 of the whole clip (unvoiced frames interpolated, then raised to
   ``f0_min``: upstream's ``uv_interp=True``) and shifts it by ``key`` semitones,
   ``f0 * 2 ** (key / 12)``;
3. extracts the frame volume, and from it the output mask: 1 where the volume
   exceeds ``threshold_db`` (-60 dB), dilated by 4 frames each way (a 9-frame max
   filter over edge-padded frames), then linearly interpolated to samples;
4. splits the clip at silences (-40 dB, see :mod:`.slicing`) and, per segment,
   encodes content units, synthesises with the speaker id or speaker mix, and
   multiplies by the mask;
5. joins the segments with upstream's one-frame linear cross-fade and trims the
   result to ``T`` samples.

Upstream's output is ``(T // block + 1) * block`` samples, up to one block longer
than the input; the tail is trimmed here so the output lasts exactly as long as the
input. f0 is extracted between 50 and 1100 Hz (upstream's inference defaults, not
the training config's ``f0_min/f0_max``: the input singer need not share the
training data's range). Speaker-mix weights are used as given, not normalised, as
upstream does (``{1: 0.5, 2: 0.5}`` is an even blend).

Shapes: audio in ``[N]`` float32 at ``sample_rate``; audio out ``[T]`` float32 at
``data.sampling_rate`` with ``T = round(N * data.sampling_rate / sample_rate)``.

On the CPU, f0 networks, units and synthesis run with subnormal floats flushed to zero on
every thread (:mod:`mlflow_ddsp.subnormals`): a trained model's synthesis makes
them, and on Intel CPUs they cost (a 600-step demo model: 88 -> 77 ms per 10 s).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import yaml
from numpy.lib.stride_tricks import sliding_window_view

from mlflow_ddsp.audio import resample
from mlflow_ddsp.config import DIFFUSION_METHODS, REFLOW_METHODS, Config, parse_config
from mlflow_ddsp.device import resolve_device
from mlflow_ddsp.errors import AudioError, ConfigError
from mlflow_ddsp.features import (
    DEFAULT_F0_EXTRACTOR,
    F0Extractor,
    UnitsEncoder,
    extract_volume,
    get_f0_extractor,
    load_units_encoder,
)
from mlflow_ddsp.inference.slicing import DEFAULT_SLICER, SlicerSettings, join_segments, segment_frames
from mlflow_ddsp.models import (
    DDSPModel,
    architecture,
    architecture_of,
    build_model_from_config,
    check_same_architecture,
    check_weights_fit,
)
from mlflow_ddsp.state_dict import load_state_dict_checked
from mlflow_ddsp.subnormals import flushed_subnormals
from mlflow_ddsp.vocoder import Vocoder, open_vocoder

log = logging.getLogger(__name__)

__all__ = [
    "VoiceConverter",
    "Conversion",
    "INFER_F0_RANGE",
    "MAX_KEY_SEMITONES",
    "MASK_DILATION_FRAMES",
    "output_mask",
    "parse_speaker_mix",
    "Sampler",
    "open_conversion_vocoder",
]

#: upstream ``main.py``'s ``-fmin`` / ``-fmax`` defaults (Hz)
INFER_F0_RANGE = (50.0, 1100.0)
#: three octaves either way; beyond that f0 leaves any voice's range (and f0_max)
MAX_KEY_SEMITONES = 36.0
#: upstream widens the voiced mask by this many frames on each side
MASK_DILATION_FRAMES = 4
#: mask thresholds outside this range are almost certainly a typo (dB re full scale)
_THRESHOLD_RANGE = (-200.0, 0.0)

Progress = Callable[[int, int], Any]


def output_mask(volume: np.ndarray, threshold_db: float, block_size: int) -> np.ndarray:
    """Upstream's output mask from frame volume ``[n]`` -> float32 ``[n * block_size]``.

    A frame is "on" when its volume exceeds ``10 ** (threshold_db / 20)``. The on/off
    track is edge-padded by 4 frames and max-filtered over 9 frames, so sound that
    starts or stops softly is not cut, then upsampled like upstream's
    ``ddsp.core.upsample``: within block ``k`` the mask ramps linearly from frame
    ``k``'s value to frame ``k + 1``'s (the last frame held), so gates open and
    close over one block instead of clicking.
    """
    volume = np.asarray(volume)
    if volume.ndim != 1 or volume.size == 0:
        raise ValueError(f"volume must be non-empty [n], got shape {volume.shape}")
    on = (volume > 10 ** (threshold_db / 20)).astype(np.float32)
    width = MASK_DILATION_FRAMES
    dilated = sliding_window_view(np.pad(on, width, mode="edge"), 2 * width + 1).max(axis=1)
    nxt = np.append(dilated[1:], dilated[-1])
    ramp = np.arange(block_size, dtype=np.float32) / block_size
    return (dilated[:, None] * (1 - ramp) + nxt[:, None] * ramp).reshape(-1)


@dataclass(frozen=True)
class Sampler:
    """How a cascade model (RectifiedFlow, DiffusionFast) turns its DDSP mel into the final mel.

    Every field None takes the config's value (``infer.*``, ``model.t_start``,
    ``model.k_step_max``), as upstream's ``main_reflow.py`` / ``main_diff.py`` do with ``auto``.

    Attributes:
        method: RectifiedFlow ``euler`` | ``rk4``; DiffusionFast ``dpm-solver`` | ``ddim`` | ``pndm`` | ``unipc``.
        infer_step: RectifiedFlow: ODE steps from ``t_start`` to 1 (1..1000).
        t_start: RectifiedFlow: flow time to start at, raised to at least ``model.t_start``
            (upstream: the model was not trained below it); 1 returns the DDSP mel.
        k_step: DiffusionFast: diffusion steps to run, 1..``model.k_step_max``.
        speedup: DiffusionFast: ``k_step // speedup`` solver steps (>= 1).
    """

    method: str | None = None
    infer_step: int | None = None
    t_start: float | None = None
    k_step: int | None = None
    speedup: int | None = None

    def keywords(self, cfg: Config) -> dict[str, Any]:
        """The model's sampling keywords for ``cfg``'s model type.

        Raises:
            ConfigError: a method the model type lacks, or a value out of range (named).
        """
        diffusion = cfg.model.type == "DiffusionFast"
        foreign = ("infer_step", "t_start") if diffusion else ("k_step", "speedup")
        given = [name for name in foreign if getattr(self, name) is not None]
        if given:
            owner = "RectifiedFlow" if diffusion else "DiffusionFast"
            raise ConfigError(f"{', '.join(given)} apply to {owner} models; this is a {cfg.model.type} "
                              f"(upstream {cfg.upstream_generation}), whose options are "
                              f"{'method, k_step, speedup' if diffusion else 'method, infer_step, t_start'}")  # fmt: skip
        method = self.method or cfg.infer_method
        allowed = DIFFUSION_METHODS if diffusion else REFLOW_METHODS
        if method not in allowed:
            raise ConfigError(f"method={method!r} is not a {cfg.model.type} sampler; allowed: {', '.join(allowed)}")
        if diffusion:
            k_step = cfg.model.k_step_max if self.k_step is None else _whole("k_step", self.k_step)
            if not 1 <= k_step <= cfg.model.k_step_max:
                raise ConfigError(f"k_step={k_step} must be in 1..{cfg.model.k_step_max} (model.k_step_max: "
                                  "the model was trained for no more)")  # fmt: skip
            speedup = cfg.infer.speedup if self.speedup is None else _whole("speedup", self.speedup)
            if not 1 <= speedup <= 1000:
                raise ConfigError(f"speedup={speedup} must be in 1..1000")
            if method in ("dpm-solver", "unipc") and k_step // speedup < 2:
                raise ConfigError(f"method={method} needs at least 2 solver steps: k_step // speedup = "
                                  f"{k_step} // {speedup} = {k_step // speedup}; lower speedup or raise k_step")  # fmt: skip
            return {"infer_speedup": speedup, "method": method, "k_step": k_step}
        steps = cfg.infer.infer_step if self.infer_step is None else _whole("infer_step", self.infer_step)
        if not 1 <= steps <= 1000:
            raise ConfigError(f"infer_step={steps} must be in 1..1000")
        t_start = cfg.model.t_start if self.t_start is None else float(self.t_start)
        if not (math.isfinite(t_start) and 0.0 <= t_start <= 1.0):
            raise ConfigError(f"t_start={self.t_start!r} must be in [0, 1]")
        return {"infer_step": steps, "method": method, "t_start": max(t_start, cfg.model.t_start)}


def _whole(name: str, value: Any) -> int:
    if isinstance(value, bool) or float(value) != int(value):
        raise ConfigError(f"{name}={value!r} must be a whole number")
    return int(value)


def open_conversion_vocoder(cfg: Config, path: str | None = None, device: str | torch.device = "cpu") -> Vocoder:
    """The NSF-HiFiGAN vocoder a cascade model converts with, its weights present.

    Args:
        path: the weights file; overrides ``vocoder.ckpt`` (a path on the training machine).
            Default: ``MLFLOW_DDSP_VOCODER_CKPT`` when set, else ``vocoder.ckpt``.

    Raises:
        ConfigError: no ``config.json`` or no weights file there, in one line saying which
            file to provide; a vocoder that does not fit the data config.
    """
    vocoder = open_vocoder(cfg, path or os.environ.get("MLFLOW_DDSP_VOCODER_CKPT") or None, device=str(device))
    if not vocoder.has_weights:
        raise ConfigError(
            f"this {cfg.model.type} model renders audio with the NSF-HiFiGAN vocoder, but its weights file "
            f"{vocoder.path} is not on this machine: put openvpi's release file 'model' there (its config.json "
            "is beside it), or name it with --vocoder-ckpt / MLFLOW_DDSP_VOCODER_CKPT"
        )
    return vocoder


def parse_speaker_mix(text: str) -> dict[int, float]:
    """``"1:0.5,2:0.5"`` (or upstream's ``"{1: 0.5, 2: 0.5}"``) -> ``{1: 0.5, 2: 0.5}``.

    Only the syntax is checked here; :class:`VoiceConverter` checks ids and weights
    against the model.
    """
    body = str(text).strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    mix: dict[int, float] = {}
    for item in (part.strip() for part in body.split(",")):
        if not item:
            continue
        speaker, sep, weight = item.partition(":")
        try:
            if not sep:
                raise ValueError
            spk, w = int(speaker.strip()), float(weight.strip())
        except ValueError:
            raise ConfigError(
                f"speaker mix {text!r}: {item!r} is not SPEAKER_ID:WEIGHT; write e.g. '1:0.5,2:0.5'"
            ) from None
        if spk in mix:
            raise ConfigError(f"speaker mix {text!r}: speaker {spk} appears twice")
        mix[spk] = w
    if not mix:
        raise ConfigError(f"speaker mix {text!r} is empty; write e.g. '1:0.5,2:0.5'")
    return mix


@dataclass
class Conversion:
    """One conversion with its bookkeeping.

    Attributes:
        audio: ``[T]`` float32 at ``sample_rate``.
        sample_rate: the model rate, Hz.
        segments: ``(start_frame, end_frame)`` of each segment synthesised.
        timings: wall seconds per stage: ``resample``, ``f0``, ``volume`` (and
            mask), ``units``, ``synthesis``, ``join``.
    """

    audio: np.ndarray
    sample_rate: int
    segments: list[tuple[int, int]]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / self.sample_rate


def _config_from(config: Config | bytes | str) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, (bytes, str)):
        if not config.strip():
            raise ConfigError("the checkpoint has no config.yaml; it cannot be rebuilt without one")
        try:
            raw = yaml.safe_load(config)
        except yaml.YAMLError as exc:
            raise ConfigError(f"the checkpoint's config.yaml is not valid YAML: {str(exc).splitlines()[0]}") from exc
        if not isinstance(raw, dict):
            raise ConfigError("the checkpoint's config.yaml must contain a mapping of config sections")
        return parse_config(raw)
    raise TypeError(f"config must be a Config or yaml bytes, got {type(config).__name__}")


class VoiceConverter:
    """A loaded model with its units encoder and f0 extractors, ready to convert.

    Args:
        model: a :class:`DDSPModel` matching ``cfg`` (moved to ``device``, eval mode).
        cfg: the model's config (rate, block size, encoder, f0 extractor).
        units_encoder: default: built from ``cfg.data.encoder`` / ``encoder_ckpt``.
        device: torch device for the model and the encoder.
        f0_range: ``(f0_min, f0_max)`` Hz for f0 extraction.
        slicer: silence-slicing settings (upstream's by default).
        encoder_precision: ``auto`` (default: dynamic int8 for the fairseq HuBERT /
            ContentVec encoders on the CPU, fp32 for the others and on GPUs),
            ``fp32`` or ``int8`` (CPU only); see
            :mod:`mlflow_ddsp.features.encoders.precision`. Used when the encoder is
            built here, not for a given ``units_encoder``.
        encoder_precision_key: how errors name that setting.

    Raises:
        ConfigError: model and config disagree, the encoder/f0 extractor cannot be
            loaded, or ``encoder_precision`` is unknown or impossible there.
    """

    def __init__(
        self,
        model: DDSPModel,
        cfg: Config,
        *,
        units_encoder: UnitsEncoder | None = None,
        device: str | torch.device = "cpu",
        f0_range: tuple[float, float] = INFER_F0_RANGE,
        slicer: SlicerSettings = DEFAULT_SLICER,
        encoder_precision: str = "auto",
        encoder_precision_key: str = "encoder_precision",
        vocoder: Vocoder | None = None,
    ) -> None:
        hp = model.hparams
        check_same_architecture(
            architecture_of(model), architecture(cfg), trained_by="the model", verb="was built with",
            current_is="the config", advice="use the model's own config",
        )  # fmt: skip
        self.cfg = cfg
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.sample_rate = int(cfg.data.sampling_rate)
        self.block_size = int(cfg.data.block_size)
        self.n_spk = int(cfg.model.n_spk)
        self.f0_range = (float(f0_range[0]), float(f0_range[1]))
        self.slicer = slicer
        if units_encoder is None:
            units_encoder = load_units_encoder(
                cfg.data.encoder,
                cfg.data.encoder_ckpt,
                encoder_sample_rate=cfg.data.encoder_sample_rate,
                encoder_hop_size=cfg.data.encoder_hop_size,
                device=self.device,
                precision=encoder_precision,
                precision_key=encoder_precision_key,
            )
        if units_encoder.out_channels != hp["n_unit"]:
            raise ConfigError(
                f"units encoder {units_encoder.name!r} gives {units_encoder.out_channels} channels but the "
                f"model takes data.encoder_out_channels={hp['n_unit']}; use the encoder the model was trained with"
            )
        self.units_encoder = units_encoder
        # Cascade models (RectifiedFlow, DiffusionFast) render their mel through the vocoder.
        self.vocoder: Vocoder | None = None
        if cfg.uses_mel:
            self.vocoder = (vocoder or open_conversion_vocoder(cfg, device=self.device)).to(self.device)
            Sampler().keywords(cfg)  # the config's own sampler settings are usable
        self._f0_extractors: dict[str, F0Extractor] = {}
        self.default_f0_extractor = cfg.f0_extractor
        try:
            self._f0(self.default_f0_extractor)  # fail at load time, not at the first request
        except ConfigError as exc:
            # Models trained before fcpe/crepe/rmvpe ran here name them in their config
            # but were trained on parselmouth f0; a missing library or weights file
            # must not make them unservable. A request naming the extractor still fails.
            if self.default_f0_extractor == DEFAULT_F0_EXTRACTOR:
                raise
            log.warning("%s; this model converts with f0 extractor %r instead", exc, DEFAULT_F0_EXTRACTOR)
            self.default_f0_extractor = DEFAULT_F0_EXTRACTOR
            self._f0(self.default_f0_extractor)

    @classmethod
    def from_checkpoint(
        cls,
        payload: Mapping[str, Any],
        config: Config | bytes | str,
        *,
        device: str | torch.device = "cpu",
        encoder_ckpt: str | None = None,
        encoder_precision: str = "auto",
        encoder_precision_key: str = "encoder_precision",
        source: str = "the checkpoint",
        vocoder_ckpt: str | None = None,
        **kwargs: Any,
    ) -> VoiceConverter:
        """Rebuild the model an upstream-format checkpoint holds.

        Args:
            payload: ``{'global_step', 'model': state_dict, ...}`` (``RestoredCheckpoint.checkpoint``).
            config: its config, parsed or as yaml bytes (``RestoredCheckpoint.config_yaml``).
            device: torch device.
            encoder_ckpt: the content encoder's file; overrides ``data.encoder_ckpt``
                (which names a path on the training machine).
            encoder_precision: ``auto``, ``fp32`` or ``int8`` (see the constructor).
            encoder_precision_key: how errors name that setting (a CLI flag, an
                environment variable).
            source: what the checkpoint is, for messages (``"checkpoint voice v3 (step 4000)"``).
            vocoder_ckpt: the NSF-HiFiGAN weights file of a cascade model; overrides
                ``vocoder.ckpt``.
            **kwargs: passed to the constructor (``f0_range``, ``slicer``).

        Raises:
            ArchitectureMismatchError: the weights reveal other config keys than
                its config (e.g. ``model.n_spk``), named.
            StateDictMismatchError: the weights do not fit the model its config
                describes (missing/unexpected keys and shapes named).
            ConfigError: no state_dict or config, or the encoder cannot be loaded.
        """
        cfg = _config_from(config)
        state = payload.get("model") if isinstance(payload, Mapping) else None
        if not isinstance(state, Mapping):
            raise ConfigError(f"{source} has no 'model' state_dict; is it a DDSP-SVC checkpoint?")
        check_weights_fit(state, architecture(cfg), source=source)
        model = build_model_from_config(cfg)
        load_state_dict_checked(model, state, source=source, hint="its weights do not match its own config.yaml")
        device = torch.device(device)
        if cfg.uses_mel and "vocoder" not in kwargs:  # before the encoder: the cheaper refusal first
            kwargs["vocoder"] = open_conversion_vocoder(cfg, vocoder_ckpt, device)
        encoder = load_units_encoder(
            cfg.data.encoder,
            encoder_ckpt or cfg.data.encoder_ckpt,
            encoder_sample_rate=cfg.data.encoder_sample_rate,
            encoder_hop_size=cfg.data.encoder_hop_size,
            out_channels=cfg.data.encoder_out_channels,
            device=device,
            precision=encoder_precision,
            precision_key=encoder_precision_key,
        )
        return cls(model, cfg, units_encoder=encoder, device=device, **kwargs)

    # -- validation -------------------------------------------------------------

    def _f0(self, name: str | None) -> F0Extractor:
        key = str(name or self.default_f0_extractor).lower()
        if key not in self._f0_extractors:
            self._f0_extractors[key] = get_f0_extractor(
                key,
                sample_rate=self.sample_rate,
                hop_size=self.block_size,
                f0_min=self.f0_range[0],
                f0_max=self.f0_range[1],
                ckpt=self.cfg.data.f0_ckpt,
            )
        return self._f0_extractors[key]

    def _speaker(self, spk_id: int, spk_mix: Mapping[int, float] | None) -> tuple[int, dict[int, float] | None]:
        ids = f"1..{self.n_spk}" if self.n_spk > 1 else "1 (the model has one speaker)"
        if spk_mix is not None:
            if not isinstance(spk_mix, Mapping) or not spk_mix:
                raise ConfigError("speaker mix must be a non-empty {speaker_id: weight} mapping, e.g. {1: 0.5, 2: 0.5}")
            mix: dict[int, float] = {}
            for speaker, weight in spk_mix.items():
                if isinstance(speaker, bool) or not isinstance(speaker, (int, np.integer)) or not 1 <= speaker <= self.n_spk:
                    raise ConfigError(f"spk_mix: unknown speaker {speaker!r}; ids are {ids}")
                try:
                    weight = float(weight)
                except (TypeError, ValueError):
                    raise ConfigError(f"speaker mix: weight {weight!r} of speaker {speaker} is not a number") from None
                if not math.isfinite(weight):
                    raise ConfigError(f"speaker mix: weight {weight!r} of speaker {speaker} must be finite")
                mix[int(speaker)] = weight
            if not sum(mix.values()) > 0:
                raise ConfigError(f"speaker mix {mix}: the weights must sum to more than 0")
            return 1, mix
        if isinstance(spk_id, bool) or not isinstance(spk_id, (int, np.integer)) or not 1 <= spk_id <= self.n_spk:
            raise ConfigError(f"spk_id={spk_id!r}: unknown speaker id {spk_id!r}; ids are {ids}")
        return int(spk_id), None

    @staticmethod
    def _check_audio(audio: Any, sample_rate: Any) -> tuple[np.ndarray, int]:
        if (
            isinstance(sample_rate, bool)
            or not isinstance(sample_rate, (int, np.integer, float))
            or not (math.isfinite(sample_rate) and sample_rate > 0)
        ):
            raise AudioError(f"sample rate {sample_rate!r} must be a positive number of Hz")
        if float(sample_rate) != int(sample_rate):
            raise AudioError(f"sample rate {sample_rate!r} must be a whole number of Hz")
        audio = np.asarray(audio)
        if audio.dtype.kind != "f":  # int16 PCM would otherwise become samples of +-32768
            raise AudioError(f"audio must be float samples in [-1, 1], got dtype {audio.dtype}; scale integer PCM first")
        audio = audio.astype(np.float32, copy=False)
        if audio.ndim == 2 and audio.shape[0] == 1:
            audio = audio[0]
        if audio.ndim != 1:
            raise AudioError(f"expected mono audio [N], got shape {audio.shape}; average the channels first")
        if audio.size == 0:
            raise AudioError("audio is empty (0 samples)")
        if not np.isfinite(audio).all():
            raise AudioError(f"audio contains {int(np.count_nonzero(~np.isfinite(audio)))} NaN/inf samples")
        return audio, int(sample_rate)

    # -- conversion -------------------------------------------------------------

    def convert(self, audio: np.ndarray, sample_rate: int, **kwargs: Any) -> np.ndarray:
        """Convert ``audio [N]`` at ``sample_rate`` -> float32 ``[T]`` at ``self.sample_rate``.

        Keyword arguments as :meth:`convert_detailed`.
        """
        return self.convert_detailed(audio, sample_rate, **kwargs).audio

    def convert_detailed(
        self,
        audio: np.ndarray,
        sample_rate: int,
        *,
        key: float = 0.0,
        spk_id: int = 1,
        spk_mix: Mapping[int, float] | None = None,
        f0_extractor: str | None = None,
        threshold_db: float = -60.0,
        progress: Progress | None = None,
        seed: int | None = None,
        formant_shift: float = 0.0,
        sampler: Sampler | None = None,
        interrupt: Callable[[str], Any] | None = None,
    ) -> Conversion:
        """Convert and report segments and per-stage timings (see the module doc).

        Args:
            audio: mono ``[N]`` (or ``[1, N]``) float samples in about [-1, 1].
            sample_rate: Hz of ``audio``.
            key: pitch shift in semitones, within +-36.
            spk_id: target speaker, 1..n_spk (ignored when ``spk_mix`` is given).
            spk_mix: ``{speaker_id: weight}`` blend of speakers, used as given.
            f0_extractor: override of the config's extractor (one of ``F0_EXTRACTORS``:
                ``parselmouth``, ``dio``, ``harvest``, ``fcpe``, ``crepe``, ``crepe-tiny``,
                ``rmvpe``; rmvpe reads ``data.f0_ckpt``).
            threshold_db: output is muted where the input volume stays below this.
            progress: called as ``progress(done, total)`` over segments, starting at 0.
            seed: seed for the synthesiser's noise source; None draws from torch's global RNG.
                Cascade models draw as upstream does, from torch's global RNG: a seed
                reseeds it for this call and restores it after.
            formant_shift: semitones fed to the model's key-shift embedding (``use_pitch_aug``
                models; upstream's ``formant_shift_key``), within +-36.
            sampler: a cascade model's sampler settings (default: its config's).
            interrupt: called as ``interrupt(stage)`` before each stage starts (``resample``,
                ``f0``, ``volume``, ``segment i/n`` for each segment's units and synthesis,
                ``join``), after the arguments are checked; an exception it raises stops the
                conversion there and propagates (the server's request deadline, see
                :mod:`mlflow_ddsp.serving.pyfunc`). A stage itself is not interrupted.

        Raises:
            AudioError: empty, non-mono or non-finite audio, or a bad sample rate.
            ConfigError: unknown speaker, bad mix weights, key or threshold out of
                range, unknown or unavailable f0 extractor.
        """
        audio, sample_rate = self._check_audio(audio, sample_rate)
        key = float(key)
        if not (math.isfinite(key) and abs(key) <= MAX_KEY_SEMITONES):
            raise ConfigError(f"key={key!r} semitones must be within +-{MAX_KEY_SEMITONES:g}")
        threshold_db = float(threshold_db)
        low, high = _THRESHOLD_RANGE
        if not (math.isfinite(threshold_db) and low <= threshold_db <= high):
            raise ConfigError(f"threshold={threshold_db!r} dB must be between {low:g} and {high:g}")
        spk_id, mix = self._speaker(spk_id, spk_mix)
        formant_shift = float(formant_shift)
        if not (math.isfinite(formant_shift) and abs(formant_shift) <= MAX_KEY_SEMITONES):
            raise ConfigError(f"formant_shift={formant_shift!r} semitones must be within +-{MAX_KEY_SEMITONES:g}")
        sampling = (sampler or Sampler()).keywords(self.cfg) if self.vocoder is not None else None
        if sampling is None and sampler is not None and sampler != Sampler():
            raise ConfigError(f"method, infer_step, t_start, k_step and speedup apply to RectifiedFlow and "
                              f"DiffusionFast models; this is a {self.cfg.model.type}")  # fmt: skip
        if formant_shift and not self.model.hparams.get("use_pitch_aug"):
            log.warning("formant shift %g ignored: this model was trained without model.use_pitch_aug, so it has "
                        "no key-shift input", formant_shift)  # fmt: skip
        extractor = self._f0(f0_extractor)
        sr, block = self.sample_rate, self.block_size
        timings = dict.fromkeys(("resample", "f0", "volume", "units", "synthesis", "join"), 0.0)

        stage = interrupt or (lambda name: None)
        stage("resample")
        clock = time.perf_counter()
        wav = resample(audio, sample_rate, sr)
        if wav.size == 0:
            raise AudioError(f"audio of {audio.size} samples at {sample_rate} Hz is too short to give any sample at {sr} Hz")
        now = time.perf_counter()
        timings["resample"], clock = now - clock, now

        # Whole-clip features, as upstream: f0 trackers need context beyond segment edges.
        stage("f0")
        clock = time.perf_counter()
        with flushed_subnormals(self.device.type == "cpu"):  # f0 networks (fcpe, rmvpe, crepe) compute with torch
            f0 = np.maximum(extractor.extract(wav).f0, extractor.f0_min) * 2 ** (key / 12)
        now = time.perf_counter()
        timings["f0"], clock = now - clock, now
        stage("volume")
        clock = time.perf_counter()
        volume = extract_volume(wav, block)
        mask = output_mask(volume, threshold_db, block)
        # A clip shorter than one block has no whole frame to slice: one segment.
        segments = segment_frames(wav, sr, block, self.slicer) or [(0, 0)]
        now = time.perf_counter()
        timings["volume"], clock = now - clock, now

        generator = None
        if seed is not None and self.vocoder is None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        pieces: list[tuple[int, np.ndarray]] = []
        if progress is not None:
            progress(0, len(segments))
        reseeded = contextlib.nullcontext()
        if seed is not None and self.vocoder is not None:
            reseeded = torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])
        # Subnormals flushed on the CPU: a trained model makes them (see mlflow_ddsp.subnormals).
        with flushed_subnormals(self.device.type == "cpu"), torch.inference_mode(), reseeded:
            if seed is not None and self.vocoder is not None:
                torch.manual_seed(int(seed))
            shift_t = torch.full((1, 1, 1), formant_shift, device=self.device)
            f0_t = torch.from_numpy(f0.astype(np.float32)).to(self.device)[None, :, None]
            volume_t = torch.from_numpy(volume).to(self.device)[None, :, None]
            for done, (start, end) in enumerate(segments, 1):
                stage(f"segment {done}/{len(segments)}")
                clock = time.perf_counter()
                # The last segment also takes the final partial block (upstream drops
                # it): same frame count, real samples instead of padding in the last frame.
                stop = wav.size if done == len(segments) else end * block
                units = self.units_encoder.encode(wav[start * block : stop], sr, block)
                now = time.perf_counter()
                timings["units"], clock = timings["units"] + now - clock, now
                n = units.shape[1]  # end - start + 1: one frame into the next segment
                if self.vocoder is not None:  # upstream main_reflow.py / main_diff.py
                    out = self.model(units.to(self.device), f0_t[:, start : start + n], volume_t[:, start : start + n],
                                     spk_id=spk_id, spk_mix_dict=mix, aug_shift=shift_t, vocoder=self.vocoder,
                                     infer=True, return_wav=True, **sampling)[0]  # fmt: skip
                else:
                    out = self.model(
                        units.to(self.device),
                        f0_t[:, start : start + n],
                        volume_t[:, start : start + n],
                        spk_id=spk_id,
                        spk_mix_dict=mix,
                        aug_shift=shift_t if formant_shift and self.model.hparams.get("use_pitch_aug") else None,
                        generator=generator,
                    )[0]
                piece = out.float().cpu().numpy() * mask[start * block : (start + n) * block]
                pieces.append((start * block, piece))
                now = time.perf_counter()
                timings["synthesis"], clock = timings["synthesis"] + now - clock, now
                if progress is not None:
                    progress(done, len(segments))
        stage("join")
        clock = time.perf_counter()
        joined = join_segments(pieces)[: wav.size]
        timings["join"] = time.perf_counter() - clock
        return Conversion(audio=joined, sample_rate=sr, segments=segments, timings=timings)
