"""What training logs to an MLflow run: metrics, spectrograms, audio, the dataset, the config.

The training loop calls the :class:`~mlflow_ddsp.training.loop.Tracker`
interface; this is its MLflow implementation. Training metrics go through
MLflow's asynchronous logging so the loop does not wait on the server.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from ..audio import save_wav
from ..config import Config
from .loop import ValidationResult
from .media import validation_media

if TYPE_CHECKING:
    from ..checkpoint.registry import RegistryStore

__all__ = ["MlflowTracker"]

log = logging.getLogger(__name__)

class MlflowTracker:
    """Logs to one run through the store, mlflow-ddsp's one MLflow edge (its errors are ours)."""

    def __init__(self, store: "RegistryStore", run_id: str, sampling_rate: int):
        self.store = store
        self.run_id = run_id
        self.sampling_rate = sampling_rate

    # -- once per run -------------------------------------------------------
    def log_config(self, cfg: Config) -> None:
        """The flattened config as params, and the yaml as ``config.yaml``."""
        self.store.log_params(self.run_id, cfg.flat())
        self.store.log_text(self.run_id, cfg.to_yaml().decode(), "config.yaml")

    def log_tags(self, tags: Mapping[str, str]) -> None:
        self.store.set_run_tags(self.run_id, tags)

    def log_dataset(self, name: str, path: str, digest: str, context: str, n_files: int) -> None:
        """Record the data as an MLflow dataset input (name, source path, digest)."""
        self.store.log_dataset(self.run_id, name, path, digest, context, n_files)

    # -- during training ----------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.store.log_metrics(self.run_id, metrics, step, synchronous=False)  # the loop never waits on it

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
            self.store.log_image(self.run_id, image, key=f"validation/spectrogram_spk{speaker}", step=step)
        if not result.clips:
            return
        with tempfile.TemporaryDirectory(prefix="mlflow-ddsp-audio-") as tmp:
            for clip in result.clips:
                stem = f"spk{clip.speaker}_" + Path(clip.name).with_suffix("").as_posix().replace("/", "_")
                save_wav(Path(tmp) / f"{stem}_gt.wav", clip.target, self.sampling_rate)
                save_wav(Path(tmp) / f"{stem}_pred.wav", clip.prediction, self.sampling_rate)
            self.store.log_artifacts(self.run_id, tmp, f"validation/step_{step:08d}")

    def flush(self) -> None:
        self.store.flush_async_logging()
