"""The MLflow edge: every call mlflow-ddsp makes to MLflow goes through this package.

What the edge is
    :class:`RegistryStore` is the one object the rest of the package talks to MLflow
    through, for one tracking URI. It is composed of one part per MLflow concept:

    - :mod:`.runs`: experiments and runs (metrics, params, tags, artifacts, datasets, outputs);
    - :mod:`.registry`: registered models, model versions, aliases and their tags;
    - :mod:`.logged_models`: LoggedModels (a checkpoint's files) and artifact bytes
      (upload, listing, download, deletion);
    - :mod:`.users`: the signed-in user of a basic-auth server (is he an admin?);
    - :mod:`.location`: where the store is (tracking-URI resolution, the embedded SQLite
      store's creation and artifact folder, the server's health check, experiments);
    - :mod:`.fluent`: MLflow's process-wide API (active run, async logging, the global
      tracking URI, loading a local pyfunc folder, MLflow's version);
    - :mod:`.records`: the plain records the store returns (:class:`CheckpointVersion`,
      :class:`QueueModel`), read by the planners above it.

    Outside this package only the pyfunc flavor (``serving/pyfunc.py``,
    ``serving/model_files.py``, ``serving/payload.py``) imports ``mlflow``;
    ``tests/test_layout.py`` fails on any other import. Integrity verdicts (is a version
    intact?) are not the edge's: they are :mod:`mlflow_ddsp.checkpoint.verify`, built on
    the store's downloads.

How errors are translated
    Every MLflow call runs inside ``RegistryStore._calling(action, needs)``
    (:func:`.errors.calling`), which raises one-line errors of :mod:`mlflow_ddsp.errors`:
    HTTP 401/403 -> :class:`~mlflow_ddsp.errors.NotAuthenticatedError` /
    :class:`~mlflow_ddsp.errors.PermissionDeniedError` (naming the permission ``needs``);
    ``RESOURCE_DOES_NOT_EXIST`` -> :class:`~mlflow_ddsp.errors.CheckpointNotFoundError`;
    a refused, timed-out or broken connection and HTTP 5xx ->
    :class:`~mlflow_ddsp.errors.TrackingServerUnavailable` and its kinds; anything else ->
    :class:`~mlflow_ddsp.errors.RegistryError`. Decisions use MLflow's error code, the HTTP
    status and exception types along the cause chain; where MLflow keeps only text, one
    function per string in :mod:`.errors`, each pinned by a contract test of its name.

Where a new MLflow call goes
    Into the part of its concept, as a method of that part (``RunsPart``, ``RegistryPart``,
    ``LoggedModelsPart``) that wraps the call in ``self._calling(...)`` with what it needs,
    and returns plain values or :mod:`.records`, never MLflow entities. ``mlflow`` itself is
    imported inside the method (importing it costs 1-2 s; ``mlflow-ddsp --help`` must not).
    A private MLflow name also needs a behaviour test in ``tests/test_mlflow_contract.py``;
    a new text match needs its own function in :mod:`.errors` and a contract test of its name.
"""

from .facade import RegistryStore
from .location import DEFAULT_EXPERIMENT, resolve_tracking_uri
from .logged_models import LoggedModelRef
from .records import CheckpointVersion, Integrity, QueueModel
from .runs import RunRecord
from .users import CurrentUser

__all__ = [
    "CheckpointVersion",
    "CurrentUser",
    "DEFAULT_EXPERIMENT",
    "Integrity",
    "LoggedModelRef",
    "QueueModel",
    "RegistryStore",
    "RunRecord",
    "resolve_tracking_uri",
]
