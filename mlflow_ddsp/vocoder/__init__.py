"""NSF-HiFiGAN vocoder of upstream DDSP-SVC: its log-mel extractor and its generator.

- :class:`MelExtractor`: the log-mel every DDSP-SVC 5.0/6.0/6.1 model learns
  (upstream ``nsf_hifigan/nvSTFT.py``); needs only the vocoder's ``config.json``.
- :class:`NsfHifiGanGenerator`: mel + f0 -> audio (upstream ``nsf_hifigan/models.py``),
  loading openvpi's release ``{'generator': state_dict}`` with upstream's key names.
- :class:`Vocoder` / :func:`load_vocoder`: upstream ``reflow/vocoder.py``'s wrapper
  (``extract`` / ``infer``, types ``nsf-hifigan`` and ``nsf-hifigan-log10``), weights
  loaded lazily at the first ``infer``.
- :func:`open_vocoder`: the vocoder a config names, refused in one line when its rate,
  hop or mel bins do not fit the data config.

Errors: :class:`~mlflow_ddsp.errors.ConfigError` for a missing or invalid ``config.json``
and a missing or unreadable weights file, :class:`~mlflow_ddsp.errors.StateDictMismatchError`
for a weights file that does not fit; all one line.
"""

from mlflow_ddsp.vocoder.mel import MelExtractor, mel_filterbank
from mlflow_ddsp.vocoder.nsf_hifigan import (
    LOG10_SCALE,
    VOCODER_TYPES,
    NsfHifiGanGenerator,
    Vocoder,
    VocoderConfig,
    default_vocoder_config,
    load_vocoder,
    write_vocoder_config,
)
from mlflow_ddsp.vocoder.fit import MEL_BINS, open_vocoder

__all__ = [
    "VOCODER_TYPES",
    "LOG10_SCALE",
    "VocoderConfig",
    "default_vocoder_config",
    "write_vocoder_config",
    "MelExtractor",
    "mel_filterbank",
    "NsfHifiGanGenerator",
    "Vocoder",
    "load_vocoder",
    "MEL_BINS",
    "open_vocoder",
]
