"""What training logs to an MLflow run: metrics, spectrograms, audio, the dataset, the config.

The training loop calls the :class:`~mlflow_ddsp.training.loop.Tracker`
interface; this is its MLflow implementation. What is logged during training
goes through a :class:`~mlflow_ddsp.training.outbox.RunOutbox`: the loop never
waits on the server, and what is logged while the server is away arrives when
it is back (or is reported as lost, with the count). What is logged once at the
start (config, tags, datasets) is sent at once: a server that does not answer
then fails the start in one line.
"""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path
from typing import Mapping

from ..audio import save_wav
from ..config import Config
from ..store import RegistryStore
from ..store.location import check_reachable
from .loop import ValidationResult
from .media import validation_media
from .outbox import DeliveryReport, RunOutbox

__all__ = ["MlflowTracker"]

log = logging.getLogger(__name__)


class MlflowTracker:
    """Logs to one run through the store, mlflow-ddsp's one MLflow edge (its errors are ours)."""

    def __init__(self, store: RegistryStore, run_id: str, sampling_rate: int):
        self.store = store
        self.run_id = run_id
        self.sampling_rate = sampling_rate
        self.outbox = RunOutbox(lambda points: store.log_metric_points(run_id, points), name=run_id[:8],
                                probe=lambda: check_reachable(store.tracking_uri))
        self._ended = False

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
    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
        """Queue ``metrics`` at ``step`` (stamped ``timestamp_ms``, ms; default now) for the run."""
        self.outbox.log_metrics(metrics, step, timestamp_ms)  # the loop never waits on the server

    def log_validation(self, result: ValidationResult, step: int, media: Mapping[str, bytes] | None = None) -> None:
        """Validation extras: real-time factor, and per speaker a spectrogram image (the run's
        images, by step: the UI's slider walks the checkpoints) and gt/pred audio
        (``validation/step_<step>/spk<N>_<clip>_{gt,pred}.wav``). Queued, never waited on.

        Args:
            media: :func:`~mlflow_ddsp.training.media.validation_media` of ``result``,
                when the caller rendered it already (its spectrograms are reused).
        """
        import matplotlib.image

        self.log_metrics({"validation/real_time_factor": result.real_time_factor}, step)
        media = media if media is not None else validation_media(result.clips, self.sampling_rate, step)
        for speaker in sorted({clip.speaker for clip in result.clips}):
            image = matplotlib.image.imread(io.BytesIO(media[f"validation_spk{speaker}.png"]), format="png")
            key = f"validation/spectrogram_spk{speaker}"
            self.outbox.call(f"image {key} at step {step}",
                             lambda image=image, key=key: self.store.log_image(self.run_id, image, key=key, step=step),
                             media=True)  # fmt: skip
        if not result.clips:
            return
        clips = [(clip.speaker, clip.name, clip.target, clip.prediction) for clip in result.clips]
        self.outbox.call(f"validation audio of step {step}", lambda: self._log_audio(clips, step), media=True)

    def _log_audio(self, clips, step: int) -> None:
        with tempfile.TemporaryDirectory(prefix="mlflow-ddsp-audio-") as tmp:
            for speaker, name, target, prediction in clips:
                stem = f"spk{speaker}_" + Path(name).with_suffix("").as_posix().replace("/", "_")
                save_wav(Path(tmp) / f"{stem}_gt.wav", target, self.sampling_rate)
                save_wav(Path(tmp) / f"{stem}_pred.wav", prediction, self.sampling_rate)
            self.store.log_artifacts(self.run_id, tmp, f"validation/step_{step:08d}")

    # -- end ------------------------------------------------------------------
    def finish(self, status: str | None, timeout: float, tags: Mapping[str, str] | None = None) -> DeliveryReport:
        """Deliver what is queued, then (with a ``status``) end the run; wait at most
        ``timeout`` seconds of outage, then report in one line what did not arrive.

        Args:
            tags: set on the run just before it ends (after everything queued), e.g.
                the stopped tags of a run stopped by a signal; also without a ``status``.
        """
        if tags:
            self.outbox.call(f"tag run {self.run_id}", lambda: self.store.set_run_tags(self.run_id, dict(tags)))
        if status is not None:
            self.outbox.call(f"end run {self.run_id}", lambda: self._end(status))
        report = self.outbox.close(timeout)
        if status is not None and not self._ended:
            log.warning("run %s stays RUNNING in MLflow: the tracking server was unavailable at its end", self.run_id)
        return report

    def _end(self, status: str) -> None:
        self.store.end_run(self.run_id, status)
        self._ended = True
