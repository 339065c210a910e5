"""The vocoder a config names, checked against the data it is used with.

A cascade model (RectifiedFlow, DiffusionFast) is trained on its vocoder's mel, so
the vocoder's ``config.json`` must agree with the data config: the same sampling
rate, a hop equal to ``data.block_size`` and 128 mel bins (the models' ``out_dims``).
Upstream writes no mels when rate or hop differ and says so in one print
(``preprocess.py``); here the mismatch stops the command in one line, naming both
values, wherever the vocoder is opened (preprocess, train, infer, serve).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .nsf_hifigan import Vocoder, load_vocoder

__all__ = ["MEL_BINS", "open_vocoder"]

#: mel bins the cascade models are built for (upstream's vocoder ``num_mels``)
MEL_BINS = 128


def open_vocoder(cfg: Any, path: str | None = None, device: str = "cpu") -> Vocoder:
    """The vocoder of ``cfg`` (``vocoder.type``, ``vocoder.ckpt`` or ``path``), weights not loaded.

    Reads only ``config.json`` beside the weights file (upstream
    ``nsf_hifigan/models.py`` ``load_config``, branch master).

    Args:
        cfg: a :class:`mlflow_ddsp.config.Config` of a cascade model.
        path: the weights file, overriding ``vocoder.ckpt`` (a path on another machine).
        device: where extraction and synthesis run.

    Raises:
        ConfigError: no readable config.json; its sampling rate or hop differs from
            ``data.sampling_rate`` / ``data.block_size``; its ``num_mels`` is not 128.
    """
    ckpt = Path(path or cfg.vocoder.ckpt).expanduser().absolute()
    config_json = ckpt.parent / "config.json"
    setting = "--vocoder-ckpt" if path else "vocoder.ckpt"
    if not config_json.is_file():
        raise ConfigError(
            f"{setting}={str(path or cfg.vocoder.ckpt)!r}: no {config_json}; model.type {cfg.model.type} needs the "
            "vocoder's config.json there: openvpi's NSF-HiFiGAN release file pretrain/nsf_hifigan/model "
            "and its config.json (only config.json is needed to train)"
        )
    vocoder = load_vocoder(str(ckpt), cfg.vocoder.type, device=device)  # ConfigError (one line) if invalid
    d = cfg.data
    if vocoder.sampling_rate != d.sampling_rate or vocoder.hop_size != d.block_size:
        raise ConfigError(
            f"{config_json}: the vocoder's sampling_rate={vocoder.sampling_rate}, hop_size={vocoder.hop_size} differ "
            f"from data.sampling_rate={d.sampling_rate}, data.block_size={d.block_size}; use a vocoder made for "
            "this rate and hop, or set data.* to match it"
        )
    if vocoder.dimension != MEL_BINS:
        raise ConfigError(
            f"{config_json}: the vocoder's num_mels={vocoder.dimension}; model.type {cfg.model.type} is built "
            f"for {MEL_BINS} mel bins"
        )
    return vocoder
