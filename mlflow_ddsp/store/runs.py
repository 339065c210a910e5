"""Experiments and runs: where training logs its metrics, params, artifacts and outputs.

A part of :class:`~mlflow_ddsp.store.RegistryStore` (a mixin: it uses the store's
``client``, ``tracking_uri`` and ``_calling``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

from .. import tags as T
from . import fluent
from .errors import DOES_NOT_EXIST
from .location import embedded_store_folder, ensure_experiment, owns_location

__all__ = ["RunRecord", "RunsPart"]


class RunRecord(NamedTuple):
    """What deciding to continue a run needs: its place, status and tags (MLflow's strings)."""

    run_id: str
    experiment_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    lifecycle_stage: str  # active, deleted
    tags: dict
    start_time_ms: int


class RunsPart:
    """Experiments and runs of one tracking URI (see :class:`~mlflow_ddsp.store.RegistryStore`)."""

    # -- experiments and runs ----------------------------------------------
    def experiment_id(self, name: str) -> str:
        with self._calling(f"open experiment {name!r}", needs=("EDIT", f"experiment {name!r}")):
            return ensure_experiment(self.client, name, self.tracking_uri)

    def foreign_experiment_location(self, experiment_id: str) -> str | None:
        """The experiment's artifact location if this store does not own it (a copied
        embedded store still pointing at the original's folder), else None.
        Servers own their locations: nothing is asked of them."""
        if embedded_store_folder(self.tracking_uri) is None:
            return None
        with self._calling(f"read experiment {experiment_id}", needs=("READ", f"experiment {experiment_id}")):
            location = self.client.get_experiment(experiment_id).artifact_location
        return None if owns_location(self.tracking_uri, location) else location

    def experiment_of_run(self, run_id: str) -> str:
        with self._calling(f"look up run {run_id}"):
            return self.client.get_run(run_id).info.experiment_id

    def log_metrics(
        self, run_id: str, metrics: Mapping[str, float], step: int, model_id: str | None = None, *,
        synchronous: bool = True, timestamp_ms: int | None = None,
    ) -> None:  # fmt: skip
        """Log metrics on the run at ``step`` in one call; with ``model_id`` they are linked
        to that model too (the MLflow UI then compares checkpoints by them).

        ``timestamp_ms`` (ms since the epoch; default now): MLflow stores a run's point
        once per (key, timestamp, step, value), so linking a point the run already has,
        at its timestamp, adds the LoggedModel's metric and no second history point
        (``SqlAlchemyStore._log_metrics``, SQLite and PostgreSQL alike).
        ``synchronous=False`` hands them to MLflow's asynchronous logging queue: the
        caller does not wait on the server (see :meth:`flush_async_logging`)."""
        from mlflow.entities import Metric  # heavy: imported on first use

        now = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        batch = [Metric(k, float(v), now, int(step), model_id=model_id) for k, v in metrics.items()]
        with self._calling(f"log metrics to run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            self.client.log_batch(run_id, metrics=batch, synchronous=synchronous)

    def log_metric_points(self, run_id: str, points: Sequence[tuple[str, float, int, int]]) -> None:
        """Log ``(key, value, timestamp_ms, step)`` values on the run in one request (at most 1,000)."""
        from mlflow.entities import Metric  # heavy: imported on first use

        batch = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in points]
        with self._calling(f"log metrics to run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            self.client.log_batch(run_id, metrics=batch)

    def create_run(self, experiment_id: str, run_name: str, tags: Mapping[str, str] | None = None) -> str:
        """A new run in ``experiment_id``; returns its id."""
        with self._calling(f"create run {run_name!r}", needs=("EDIT", f"experiment {experiment_id}")):
            return self.client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {})).info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Mark a run ``FINISHED``, ``FAILED`` or ``KILLED``."""
        with self._calling(f"end run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            self.client.set_terminated(run_id, status)

    def run_record(self, run_id: str) -> RunRecord | None:
        """The run's experiment, status, lifecycle and tags; None if it does not exist."""
        from mlflow.exceptions import MlflowException  # heavy: imported on first use

        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code == DOES_NOT_EXIST:
                return None
            with self._calling(f"read run {run_id}", needs=("READ", f"the experiment of run {run_id}")):
                raise
        return RunRecord(run.info.run_id, run.info.experiment_id, run.info.status, run.info.lifecycle_stage,
                         dict(run.data.tags), int(run.info.start_time or 0))  # fmt: skip

    def find_runs(self, experiment_id: str, tags: Mapping[str, str], max_results: int = 20) -> list[RunRecord]:
        """Live (not deleted) runs of ``experiment_id`` carrying every tag of ``tags``, newest start first."""
        from mlflow.entities import ViewType  # heavy: imported on first use

        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        with self._calling(f"search runs of experiment {experiment_id}", needs=("READ", f"experiment {experiment_id}")):
            runs = self.client.search_runs([experiment_id], query, run_view_type=ViewType.ACTIVE_ONLY,
                                           max_results=max_results, order_by=["attributes.start_time DESC"])  # fmt: skip
        return [RunRecord(r.info.run_id, r.info.experiment_id, r.info.status, r.info.lifecycle_stage,
                          dict(r.data.tags), int(r.info.start_time or 0)) for r in runs]  # fmt: skip

    def reopen_run(self, run_id: str, drop_tags: Sequence[str] = ()) -> None:
        """Set a run's status back to RUNNING (a training continues it) and remove ``drop_tags`` from it."""
        with self._calling(f"reopen run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            self.client.update_run(run_id, status="RUNNING")
        tags = self.run_tags(run_id)
        for key in drop_tags:
            if key in tags:
                with self._calling(f"untag run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
                    self.client.delete_tag(run_id, key)

    def log_model_output(self, run_id: str, model_id: str, step: int) -> None:
        """Record LoggedModel ``model_id`` as an output of run ``run_id`` at ``step``: MLflow's own
        run -> model link (what ``mlflow.<flavor>.log_model`` writes), which fills the run page's
        "Logged models" (the UI reads ``run.outputs.model_outputs``). Idempotent: a link that
        exists is not written again (MLflow refuses a second one)."""
        from mlflow.entities import LoggedModelOutput  # heavy: imported on first use

        if any(linked == model_id for linked, _ in self.run_model_outputs(run_id)):
            return
        with self._calling(f"link LoggedModel {model_id} to run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            self.client.log_outputs(run_id, [LoggedModelOutput(model_id, int(step))])

    def run_model_outputs(self, run_id: str) -> list[tuple[str, int]]:
        """``(model_id, step)`` of every LoggedModel recorded as an output of the run."""
        with self._calling(f"read run {run_id}", needs=("READ", f"the experiment of run {run_id}")):
            outputs = self.client.get_run(run_id).outputs
        return [(o.model_id, int(o.step)) for o in (outputs.model_outputs if outputs else [])]

    def log_model_params(self, model_id: str, params: Mapping[str, object]) -> None:
        """Params on a LoggedModel (the experiment's Models tab shows them as columns)."""
        with self._calling(f"log params to LoggedModel {model_id}", needs=("EDIT", f"the experiment of LoggedModel {model_id}")):
            self.client.log_model_params(model_id, {k: str(v) for k, v in params.items()})

    def run_tags(self, run_id: str) -> dict[str, str]:
        with self._calling(f"read run {run_id}", needs=("READ", f"the experiment of run {run_id}")):
            return dict(self.client.get_run(run_id).data.tags)

    def run_params(self, run_id: str) -> dict[str, str]:
        with self._calling(f"read run {run_id}", needs=("READ", f"the experiment of run {run_id}")):
            return dict(self.client.get_run(run_id).data.params)

    def set_run_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag  # heavy: imported on first use

        if tags:
            with self._calling(f"tag run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
                self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, run_id: str, params: Mapping[str, object], *, value_limit: int = 6000) -> None:
        """Log params not yet on the run (a resumed run keeps its own), in batches of MLflow's limit (100);
        values are cut to ``value_limit`` characters (MLflow's limit)."""
        from mlflow.entities import Param  # heavy: imported on first use

        with self._calling(f"log params to run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            existing = self.client.get_run(run_id).data.params
            batch = [Param(k, str(v)[:value_limit]) for k, v in params.items() if k not in existing]
            for i in range(0, len(batch), 100):
                self.client.log_batch(run_id, params=batch[i : i + 100])

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        with self._calling(f"log {artifact_file} to run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            self.client.log_text(run_id, text, artifact_file)

    def log_artifacts(self, run_id: str, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file or every file of a folder to the run's artifacts under ``artifact_path``."""
        with self._calling(f"upload {local_path} to run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            if Path(local_path).is_dir():
                self.client.log_artifacts(run_id, str(local_path), artifact_path)
            else:
                self.client.log_artifact(run_id, str(local_path), artifact_path)

    def log_image(self, run_id: str, image, key: str, step: int) -> None:
        """An image ``[H, W, C]`` as the run's step-indexed image ``key`` (the UI's slider)."""
        with self._calling(f"log image {key} to run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            self.client.log_image(run_id, image, key=key, step=step)

    def log_dataset(self, run_id: str, name: str, path: str, digest: str, context: str, n_files: int) -> None:
        """Record a local folder as the run's dataset input (name, source path, digest, context).

        Built from MLflow's public entities: a ``local`` source whose JSON is
        ``{"uri": <absolute path>}``, as ``mlflow.data``'s local-folder source writes it.
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag  # heavy: imported on first use

        entity = Dataset(name=name, digest=digest[:36], source_type="local",
                         source=json.dumps({"uri": str(Path(path).resolve())}))  # fmt: skip
        tags = [InputTag(T.DATASET_CONTEXT, context), InputTag(T.DATASET_FILES, str(n_files))]
        with self._calling(f"log dataset {name!r} to run {run_id}", needs=("EDIT", f"the experiment of run {run_id}")):
            self.client.log_inputs(run_id, datasets=[DatasetInput(entity, tags)])

    @staticmethod
    def flush_async_logging() -> None:
        """Wait until metrics handed to MLflow's asynchronous logging have been sent."""
        fluent.flush_async_logging()

    # -- experiments found, never created (readers of a store) -----------------
    def find_experiment_id(self, name: str) -> str | None:
        """The id of experiment ``name`` if it exists and is live, else None (READ only: nothing is created)."""
        with self._calling(f"look up experiment {name!r}", needs=("READ", f"experiment {name!r}")):
            experiment = self.client.get_experiment_by_name(name)
        return None if experiment is None or experiment.lifecycle_stage == "deleted" else experiment.experiment_id

    def all_experiment_ids(self) -> list[str]:
        """The ids of every experiment of the store this user may read, deleted ones included."""
        from mlflow.entities import ViewType  # heavy: imported on first use

        out: list[str] = []
        token = None
        with self._calling("list experiments", needs=("READ", "the experiments")):
            while True:
                page = self.client.search_experiments(view_type=ViewType.ALL, max_results=1000, page_token=token)
                out += [e.experiment_id for e in page]
                token = page.token
                if not token:
                    break
        return out
