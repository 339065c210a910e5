"""Feature extraction on DDSP-SVC's frame grid: volume, f0 and content units.

Every feature of a clip of ``T`` samples has ``T // block_size + 1`` frames, frame
``n`` centred on sample ``n * block_size`` (see ``frames``):

- ``extract_volume(audio, hop) -> [n_frames]`` RMS volume (``volume``);
- ``get_f0_extractor(name, ...).extract(audio) -> F0Track`` with ``f0 [n_frames]``
  interpolated over unvoiced frames and ``voiced [n_frames]`` (``f0``; networks in
  ``rmvpe`` and, imported from pip, ``pitch_libraries``);
- ``load_units_encoder(name, ckpt).encode(audio, sr, hop) -> [1, n_frames, C]``
  content units (``units``, networks in ``encoders``).
"""

from mlflow_ddsp.features.f0 import (
    DEFAULT_F0_EXTRACTOR,
    F0_EXTRACTORS,
    F0Extractor,
    F0Track,
    get_f0_extractor,
    interpolate_unvoiced,
)
from mlflow_ddsp.features.frames import frame_count
from mlflow_ddsp.features.units import (
    EncoderSpec,
    UnitsEncoder,
    align_units,
    encoder_names,
    get_encoder_spec,
    load_units_encoder,
    register_encoder,
)
from mlflow_ddsp.features.volume import extract_volume

__all__ = [
    "frame_count",
    "extract_volume",
    "DEFAULT_F0_EXTRACTOR",
    "F0_EXTRACTORS",
    "F0Extractor",
    "F0Track",
    "get_f0_extractor",
    "interpolate_unvoiced",
    "EncoderSpec",
    "UnitsEncoder",
    "align_units",
    "encoder_names",
    "get_encoder_spec",
    "load_units_encoder",
    "register_encoder",
]
