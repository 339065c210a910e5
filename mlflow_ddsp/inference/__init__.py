"""Inference: convert a singing voice with a trained DDSP-SVC model.

- :class:`VoiceConverter` (``converter``): load a checkpoint and its config, then
  ``convert(audio [N], sample_rate, key=..., spk_id=... | spk_mix=...) -> [T]`` at
  the model rate, as upstream's ``main.py`` (f0 key shift, -60 dB output mask,
  slicing at -40 dB silences with one-frame cross-fades); the cascade models
  (RectifiedFlow, DiffusionFast) render through their NSF-HiFiGAN vocoder with a
  :class:`Sampler` (upstream's ``main_reflow.py`` / ``main_diff.py``).
- ``slicing``: upstream's split-at-silence and cross-fade assembly, in numpy.
"""

from mlflow_ddsp.inference.converter import (
    INFER_F0_RANGE,
    MAX_KEY_SEMITONES,
    Conversion,
    Sampler,
    VoiceConverter,
    open_conversion_vocoder,
    output_mask,
    parse_speaker_mix,
)
from mlflow_ddsp.inference.slicing import (
    DEFAULT_SLICER,
    SlicerSettings,
    cross_fade,
    find_silences,
    frame_rms,
    join_segments,
    segment_frames,
    split_at_silence,
)

__all__ = [
    "VoiceConverter",
    "Conversion",
    "Sampler",
    "open_conversion_vocoder",
    "INFER_F0_RANGE",
    "MAX_KEY_SEMITONES",
    "output_mask",
    "parse_speaker_mix",
    "SlicerSettings",
    "DEFAULT_SLICER",
    "frame_rms",
    "find_silences",
    "split_at_silence",
    "segment_frames",
    "cross_fade",
    "join_segments",
]
