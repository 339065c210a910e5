"""LoggedModels and their artifacts: where a checkpoint's files live, and moving them.

A part of :class:`~mlflow_ddsp.store.RegistryStore` (a mixin: it uses the store's
``client``, ``tracking_uri`` and ``_calling``). Uploads, listings, downloads and
deletions of artifact bytes go through MLflow's artifact repositories.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

from .. import tags as T
from ..errors import CheckpointNotFoundError
from .errors import is_connection_error
from .location import owns_location
from .records import CheckpointVersion, QueueModel

__all__ = ["LoggedModelRef", "LoggedModelsPart"]

PAGE = 1000  # results per search request


class LoggedModelRef:
    """Where a checkpoint's files live: a LoggedModel id, its artifact URI, and
    the registered model whose queue wrote it (tag ``mlflow_ddsp.queue``; None if
    not written by a queue)."""

    __slots__ = ("model_id", "artifact_location", "queue", "tags")

    def __init__(self, model_id: str, artifact_location: str, queue: str | None = None, tags: Mapping[str, str] | None = None):
        self.model_id = model_id
        self.artifact_location = artifact_location
        self.queue = queue
        self.tags = dict(tags or {})


class LoggedModelsPart:
    """LoggedModels and artifact bytes of one tracking URI (see :class:`~mlflow_ddsp.store.RegistryStore`)."""

    def _repo(self, artifact_uri: str):
        """MLflow's artifact repository for ``artifact_uri`` (local, ``mlflow-artifacts:``, ``s3://``...)."""
        # heavy: imported on first use (tests/test_cli_startup.py)
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        return get_artifact_repository(artifact_uri, tracking_uri=self.tracking_uri)

    def create_files(
        self, experiment_id: str, name: str, run_id: str | None, tags: Mapping[str, str]
    ) -> LoggedModelRef:
        """Create a PENDING LoggedModel to hold one checkpoint's files."""
        with self._calling("create a LoggedModel for a checkpoint", needs=("EDIT", f"experiment {experiment_id}")):
            lm = self.client.create_logged_model(
                experiment_id, name=name, source_run_id=run_id, tags=dict(tags)
            )
        return LoggedModelRef(lm.model_id, lm.artifact_location, dict(tags).get(T.QUEUE), tags)

    def get_files(self, model_id: str) -> LoggedModelRef:
        with self._calling(f"read LoggedModel {model_id}", needs=("READ", f"the experiment of LoggedModel {model_id}")):
            lm = self.client.get_logged_model(model_id)
        return LoggedModelRef(lm.model_id, lm.artifact_location, (lm.tags or {}).get(T.QUEUE), lm.tags)

    def logged_model_metrics(self, model_id: str) -> dict[str, float]:
        """The metrics linked to a checkpoint's LoggedModel (``save(metrics=...)``), newest step wins."""
        with self._calling(f"read LoggedModel {model_id}", needs=("READ", f"the experiment of LoggedModel {model_id}")):
            metrics = self.client.get_logged_model(model_id).metrics or []
        out: dict[str, tuple[int, float]] = {}
        for m in metrics:
            if m.key not in out or m.step >= out[m.key][0]:
                out[m.key] = (m.step, m.value)
        return {k: v for k, (_, v) in out.items()}

    def link_version(self, model_id: str, name: str, version: int) -> None:
        """Tag the LoggedModel with MLflow's ``mlflow.modelVersions`` (what ``mlflow.register_model``
        writes): the UI's "Registered models" column then links it to its version."""
        value = json.dumps([{"name": name, "version": str(version)}])
        with self._calling(f"link LoggedModel {model_id} to {name} v{version}", needs=("EDIT", f"the experiment of LoggedModel {model_id}")):
            self.client.set_logged_model_tags(model_id, {T.MLFLOW_MODEL_VERSIONS: value})

    def owns_location(self, location: str) -> bool:
        """Whether bytes at ``location`` belong to this store, so that it may delete them
        (see :func:`mlflow_ddsp.store.location.owns_location`)."""
        return owns_location(self.tracking_uri, location)

    def upload(self, files: LoggedModelRef, local_path: str | os.PathLike) -> None:
        with self._calling(f"upload {Path(local_path).name} to {files.artifact_location}", needs=("EDIT", f"the experiment of LoggedModel {files.model_id}")):
            self._repo(files.artifact_location).log_artifact(str(local_path))

    def list_sizes(self, files: LoggedModelRef) -> dict[str, int]:
        """Top-level file name -> size in bytes, as the artifact store reports it."""
        with self._calling(f"list {files.artifact_location}", needs=("READ", f"the experiment of LoggedModel {files.model_id}")):
            infos = self._repo(files.artifact_location).list_artifacts()
        return {Path(i.path).name: int(i.file_size or 0) for i in infos if not i.is_dir}

    def finalize(self, files: LoggedModelRef) -> None:
        with self._calling(f"finalize LoggedModel {files.model_id}", needs=("EDIT", f"the experiment of LoggedModel {files.model_id}")):
            self.client.finalize_logged_model(files.model_id, "READY")

    def download(
        self,
        files: LoggedModelRef,
        names: Sequence[str],
        dst: str | os.PathLike,
        listed: Mapping[str, int] | None = None,
    ) -> Path:
        """Download the named files into ``dst``.

        Whether a file exists is decided from a listing of the folder
        (``listed``, or one made here), not from the text of a download error.

        Raises:
            CheckpointNotFoundError: a named file is not in the store.
        """
        listed = self.list_sizes(files) if listed is None else listed
        missing = [n for n in names if n not in listed]
        if missing:
            raise CheckpointNotFoundError(f"{', '.join(missing)} missing from {files.artifact_location}")
        repo = self._repo(files.artifact_location)
        for name in names:
            with self._calling(f"download {name} from {files.artifact_location}", needs=("READ", f"the experiment of LoggedModel {files.model_id}")):
                try:
                    repo.download_artifacts(name, dst_path=str(dst))
                except (FileNotFoundError, OSError) as exc:
                    if is_connection_error(exc):
                        raise
                    raise CheckpointNotFoundError(
                        f"{name} is missing from {files.artifact_location}"
                    ) from exc
        return Path(dst)

    def delete_bytes(self, files: LoggedModelRef) -> None:
        """Free a LoggedModel's artifact bytes, including its now-empty folder.

        Registry and LoggedModel deletions are metadata only; this is what
        actually frees storage (locally and through ``--serve-artifacts``).
        """
        location = files.artifact_location.rstrip("/")
        parent, sep, leaf = location.rpartition(f"/models/{files.model_id}")
        with self._calling(f"delete files at {location}", needs=("MANAGE", f"the experiment of LoggedModel {files.model_id}")):
            if sep and leaf in ("", "/artifacts"):
                # <root>/models/<id>/artifacts: remove <id> itself, not just its contents.
                self._repo(f"{parent}/models").delete_artifacts(files.model_id)
            else:
                self._repo(location).delete_artifacts()

    def delete_record(self, model_id: str) -> None:
        with contextlib.suppress(CheckpointNotFoundError), self._calling(
            f"delete LoggedModel {model_id}", needs=("MANAGE", f"the experiment of LoggedModel {model_id}")
        ):
            self.client.delete_logged_model(model_id)

    def queue_models(self, queue: str, experiment_ids: Sequence[str]) -> list[QueueModel]:
        """Live LoggedModels tagged as written by ``queue`` in the given experiments, oldest first."""
        return self.find_logged_models(experiment_ids, {T.QUEUE: queue}, action=f"list checkpoint files of {queue!r}")

    def files_of(self, version: CheckpointVersion) -> LoggedModelRef:
        """The LoggedModel holding ``version``'s files.

        Raises:
            CheckpointNotFoundError: the version was not written by mlflow-ddsp, or its LoggedModel is gone.
        """
        if version.model_id is None:
            raise CheckpointNotFoundError(f"{version.label} was not written by mlflow-ddsp")
        return self.get_files(version.model_id)

    # -- any LoggedModel by its tags (dependency weights, issue 21) -----------
    def create_logged_model(
        self, experiment_id: str, name: str, tags: Mapping[str, str], *, what: str, where: str
    ) -> LoggedModelRef:
        """Create a PENDING LoggedModel ``name`` in ``experiment_id`` carrying ``tags``.

        Args:
            what: what it is for, for the error message (``"store encoder weights"``).
            where: the experiment as a person knows it (``"experiment 'mlflow-ddsp dependencies'"``).
        Raises:
            PermissionDeniedError: the user lacks EDIT on the experiment (HTTP 403), named with ``where``.
        """
        with self._calling(what, needs=("EDIT", where)):
            lm = self.client.create_logged_model(experiment_id, name=name, tags=dict(tags))
        return LoggedModelRef(lm.model_id, lm.artifact_location, None, tags)

    def find_logged_models(
        self, experiment_ids: Sequence[str], tags: Mapping[str, str] | None = None, *, with_tag: str | None = None,
        action: str = "search LoggedModels",
    ) -> list[QueueModel]:
        """Live LoggedModels of ``experiment_ids`` carrying every ``tags`` value (and the key
        ``with_tag``, any value), any status, oldest first. ``action``: for the error message."""
        if not experiment_ids:
            return []
        terms = [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
        terms += [f"tags.`{with_tag}` LIKE '%'"] if with_tag else []
        out: list[QueueModel] = []
        token = None
        with self._calling(action, needs=("READ", f"experiments {', '.join(experiment_ids)}")):
            while True:
                page = self.client.search_logged_models(
                    list(experiment_ids), filter_string=" AND ".join(terms) or None, max_results=PAGE,
                    order_by=[{"field_name": "creation_timestamp", "ascending": True}], page_token=token,
                )  # fmt: skip
                out += [
                    QueueModel(
                        model_id=m.model_id,
                        status=str(getattr(m.status, "name", m.status)).upper(),
                        artifact_location=m.artifact_location,
                        created_ms=int(m.creation_timestamp or 0),
                        tags=dict(m.tags or {}),
                    )
                    for m in page
                ]
                token = page.token
                if not token:
                    break
        return out

    def set_logged_model_tags(self, model_id: str, tags: Mapping[str, str]) -> None:
        """Set tags on a LoggedModel (EDIT on its experiment)."""
        with self._calling(f"tag LoggedModel {model_id}", needs=("EDIT", f"the experiment of LoggedModel {model_id}")):
            self.client.set_logged_model_tags(model_id, dict(tags))

    def delete_logged_model_tag(self, model_id: str, key: str) -> None:
        """Remove one tag from a LoggedModel (MLflow asks MANAGE on its experiment for this)."""
        with self._calling(f"untag LoggedModel {model_id}", needs=("MANAGE", f"the experiment of LoggedModel {model_id}")):
            self.client.delete_logged_model_tag(model_id, key)
