"""The end-to-end demo (the MLflow Project's ``main`` entry point).

Synthesizes a small two-speaker singing dataset, preprocesses it, trains the
small CPU config of ``projects/demo`` through several validation and
force-save steps into the embedded tracking store (or ``MLFLOW_TRACKING_URI``),
and prints the registry's versions and how to open the MLflow UI.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from .config import Config, load_config
from .demo_data import make_demo_dataset
from .errors import ConfigError
from .preprocess import preprocess
from .training.session import train

__all__ = ["run_demo", "ui_hint"]

log = logging.getLogger(__name__)


def ui_hint(tracking_uri: str) -> str:
    """How to look at what the demo logged."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser (Models -> the registered model; Experiments -> the run)"
    return f"mlflow ui --backend-store-uri {tracking_uri} --port 5000   # then open http://127.0.0.1:5000"


def run_demo(
    workdir: str | os.PathLike = "demo",
    config: str | os.PathLike = "projects/demo/config.yaml",
    *,
    max_steps: int | None = None,
    tracking_uri: str | None = None,
    seconds_per_speaker: float | None = None,
) -> tuple[Config, object]:
    """Run demo-data, preprocess and train; return the config used and the training result."""
    config = Path(config)
    if not config.is_file():
        raise ConfigError(
            f"demo config {str(config)!r} not found: run from the mlflow-ddsp checkout "
            "(it has projects/demo/config.yaml) or pass --config"
        )
    cfg = load_config(config)
    workdir = Path(workdir)
    cfg = cfg.replace(
        data=replace(cfg.data, train_path=str(workdir / "train"), valid_path=str(workdir / "val")),
        train=replace(cfg.train, max_steps=max_steps or cfg.train.max_steps),
    )
    kwargs = {} if seconds_per_speaker is None else {"seconds_per_speaker": seconds_per_speaker}
    log.info("1/3 synthesizing a two-speaker demo dataset in %s", workdir)
    make_demo_dataset(workdir, **kwargs)
    log.info("2/3 extracting f0, volume and units")
    report = preprocess(cfg, workers=1)  # logmel is cheap: worker start-up would cost more than it saves
    if getattr(report, "failed", None):
        raise ConfigError(f"preprocessing failed for {len(report.failed)} demo file(s)")
    log.info("3/3 training %s for %s steps on %s", cfg.registered_model, cfg.train.max_steps, cfg.device)
    result = train(cfg, tracking_uri=tracking_uri)
    return cfg, result
