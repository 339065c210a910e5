"""Content-encoder networks in plain torch (no fairseq, transformers or torchaudio).

- ``hubert_soft``: bshall's HuBERT-Soft (upstream ``hubertsoft``).
- ``fairseq_hubert``: fairseq HuBERT / ContentVec-legacy, from fairseq checkpoints.
- ``logmel``: a weights-free log-mel stand-in for demos and tests.
- ``checkpoint``: weights-only checkpoint reading with inert stand-ins for pickled classes.
- ``layers``: the weight-normed positional convolution and small helpers they share.
- ``precision``: ``encoder_precision`` (auto / fp32 / int8) and the CPU int8 form of
  the fairseq HuBERT family.

Use ``mlflow_ddsp.features.units.load_units_encoder`` rather than these directly: it
adds resampling to 16 kHz and alignment to the model's frame grid.
"""

from mlflow_ddsp.features.encoders.fairseq_hubert import (
    FairseqHubert,
    FairseqHubertConfig,
    load_fairseq_hubert,
)
from mlflow_ddsp.features.encoders.hubert_soft import HubertSoft, HubertSoftDims, load_hubert_soft
from mlflow_ddsp.features.encoders.logmel import LOGMEL_CHANNELS, LogMel

__all__ = [
    "FairseqHubert",
    "FairseqHubertConfig",
    "load_fairseq_hubert",
    "HubertSoft",
    "HubertSoftDims",
    "load_hubert_soft",
    "LogMel",
    "LOGMEL_CHANNELS",
]
