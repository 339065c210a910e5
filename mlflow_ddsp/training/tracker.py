"""What training logs to an MLflow run: metrics, spectrograms, audio, the dataset, the config.

The training loop calls the :class:`~mlflow_ddsp.training.loop.Tracker`
interface; this is its MLflow implementation. Training metrics go through
MLflow's asynchronous logging so the loop does not wait on the server.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Mapping

from ..audio import save_wav
from ..config import Config
from .loop import ValidationResult
from .media import validation_media

__all__ = ["MlflowTracker"]

log = logging.getLogger(__name__)

_PARAMS_PER_CALL = 100  # MLflow's log_batch limit
_PARAM_VALUE_LIMIT = 6000


class MlflowTracker:
    """Logs to one run through an ``MlflowClient``."""

    def __init__(self, client, run_id: str, sampling_rate: int):
        self.client = client
        self.run_id = run_id
        self.sampling_rate = sampling_rate

    # -- once per run -------------------------------------------------------
    def log_config(self, cfg: Config) -> None:
        """The flattened config as params, and the yaml as ``config.yaml``."""
        from mlflow.entities import Param

        params = [Param(k, str(v)[:_PARAM_VALUE_LIMIT]) for k, v in cfg.flat().items()]
        existing = self.client.get_run(self.run_id).data.params
        params = [p for p in params if p.key not in existing]  # a resumed run logged them already
        for i in range(0, len(params), _PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=params[i : i + _PARAMS_PER_CALL])
        self.client.log_text(self.run_id, cfg.to_yaml().decode(), "config.yaml")

    def log_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        if not tags:
            return
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dataset(self, name: str, path: str, digest: str, context: str, n_files: int) -> None:
        """Record the data as an MLflow dataset input (name, source path, digest)."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():
            # MLflow registers its local-folder source class twice and warns about the tie.
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(Path(path).resolve()))
        entity = MetaDataset(source=source, name=name, digest=digest[:36])._to_mlflow_entity()
        tags = [InputTag("mlflow.data.context", context), InputTag("mlflow_ddsp.files", str(n_files))]
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(entity, tags)])

    # -- during training ----------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch, synchronous=False)

    def log_validation(self, result: ValidationResult, step: int, media: Mapping[str, bytes] | None = None) -> None:
        """Validation extras: real-time factor, and per speaker a spectrogram image (the run's
        images, by step: the UI's slider walks the checkpoints) and gt/pred audio
        (``validation/step_<step>/spk<N>_<clip>_{gt,pred}.wav``).

        Args:
            media: :func:`~mlflow_ddsp.training.media.validation_media` of ``result``,
                when the caller rendered it already (its spectrograms are reused).
        """
        import io

        import matplotlib.image

        self.log_metrics({"validation/real_time_factor": result.real_time_factor}, step)
        media = media if media is not None else validation_media(result.clips, self.sampling_rate, step)
        for speaker in sorted({clip.speaker for clip in result.clips}):
            image = matplotlib.image.imread(io.BytesIO(media[f"validation_spk{speaker}.png"]), format="png")
            self.client.log_image(self.run_id, image, key=f"validation/spectrogram_spk{speaker}", step=step)
        if not result.clips:
            return
        with tempfile.TemporaryDirectory(prefix="mlflow-ddsp-audio-") as tmp:
            for clip in result.clips:
                stem = f"spk{clip.speaker}_" + Path(clip.name).with_suffix("").as_posix().replace("/", "_")
                save_wav(Path(tmp) / f"{stem}_gt.wav", clip.target, self.sampling_rate)
                save_wav(Path(tmp) / f"{stem}_pred.wav", clip.prediction, self.sampling_rate)
            self.client.log_artifacts(self.run_id, tmp, f"validation/step_{step:08d}")

    def flush(self) -> None:
        import mlflow

        mlflow.flush_async_logging()
