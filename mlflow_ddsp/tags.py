"""Namespaced MLflow tag keys and values written by mlflow-ddsp, in one place.

Model-version tags are written once, atomically, when the version is created,
so a version either carries all of them or was not made by the queue. They are
kept to what identifies a checkpoint (the UI's version list shows them); lineage
and integrity records live on the checkpoint's LoggedModel, written when it is
created, and lineage also on the training run.
"""

from __future__ import annotations

__all__ = [
    "PREFIX",
    "STEP",
    "KIND",
    "SHA256",
    "SIZE",
    "MANIFEST_SHA256",
    "CHECKPOINT_FILE",
    "WRITER",
    "MLFLOW_MODEL_VERSIONS",
    "KEEP",
    "METRIC_PREFIX",
    "metric_tag",
    "QUEUE",
    "PARENT_VERSION",
    "PARENT_STEP",
    "PARENT_MODEL",
    "PARENT_RUN",
    "PRETRAINED_FILE",
    "PRETRAINED_SHA256",
    "EXPERIMENT_IDS",
    "RETENTION",
    "OWN_ALIASES",
    "LEASE_MODEL",
    "LEASE_HOLDER",
    "CONFIG_DIGEST",
    "DATASET_DIGEST",
    "DATASET_FILES",
    "REGISTERED_MODEL",
    "TRAINING_RUN",
    "PROJECT_RUN",
    "MLFLOW_NOTE",
    "STOPPED_BY",
    "STOPPED_AT_STEP",
    "RUN_RESUMES",
    "GIT_COMMIT",
    "GIT_DIRTY",
    "COMPARE_MODEL",
    "COMPARE_VERSIONS",
    "LEASE_MARKER",
    "LEASE_MARKER_VALUE",
    "LEASE_OWNER",
    "LEASE_HOST",
    "LEASE_PID",
    "LEASE_PROCESS",
    "LEASE_PID_NAMESPACE",
    "LEASE_HEARTBEAT",
    "LEASE_TTL",
    "LEASE_TAKEOVER",
    "LEASE_TOMBSTONE",
    "KIND_ROLLING",
    "KIND_FORCE_SAVED",
    "KINDS",
    "IMPORTED_FROM",
    "MLFLOW_DDSP_VERSION",
    "TORCH_VERSION",
    "MLFLOW_VERSION",
    "PYTHON_VERSION",
    "ENVIRONMENT_TAGS",
    "environment_tags",
    "DATASET_CONTEXT",
    "EXPERIMENT_KIND",
    "PROJECT_TAG_PREFIXES",
]

PREFIX = "mlflow_ddsp."

# --- on checkpoint model versions: what identifies a checkpoint, nothing more ---
STEP = "mlflow_ddsp.step"  # global training step, decimal (also on the LoggedModel)
KIND = "mlflow_ddsp.kind"  # KIND_ROLLING | KIND_FORCE_SAVED (also on the LoggedModel)
SHA256 = "mlflow_ddsp.sha256"  # sha256 hex of model_<step>.pt
SIZE = "mlflow_ddsp.size_bytes"  # size of model_<step>.pt in bytes

# --- on the checkpoint's LoggedModel (and lineage also on the training run) ------
MANIFEST_SHA256 = "mlflow_ddsp.manifest_sha256"  # sha256 of manifest.json (covers every file)
CHECKPOINT_FILE = "mlflow_ddsp.checkpoint_file"  # "model_<step>.pt"
WRITER = "mlflow_ddsp.writer"  # the writer lease's owner id of the training that made it (stale spools: issue 20)
MLFLOW_MODEL_VERSIONS = "mlflow.modelVersions"  # MLflow's own: JSON [{name, version}] -> the UI's link
PARENT_VERSION = "mlflow_ddsp.parent.version"  # version training resumed/fine-tuned from
PARENT_STEP = "mlflow_ddsp.parent.step"
PARENT_MODEL = "mlflow_ddsp.parent.model"  # registered model of the parent
PARENT_RUN = "mlflow_ddsp.parent.run"  # the run that trained the parent (it outlives a deleted parent)
PRETRAINED_FILE = "mlflow_ddsp.pretrained.file"  # --init-from a model_<N>.pt file: its path
PRETRAINED_SHA256 = "mlflow_ddsp.pretrained.sha256"  # ... and the sha256 of its bytes
METRIC_PREFIX = "mlflow_ddsp.metric."  # + metric name: the best metric's value at this checkpoint

# --- set by people (or `mlflow-ddsp keep`) on any version ----------------------
KEEP = "mlflow_ddsp.keep"  # "true": never deleted by mlflow-ddsp, whatever the retention policy


def environment_tags(versions: dict[str, str]) -> dict[str, str]:
    """``{tag key: value}`` for ``lineage.environment_versions()``'s ``{name: version}``.

    Raises:
        KeyError: a name with no tag in :data:`ENVIRONMENT_TAGS` (add it there).
    """
    return {ENVIRONMENT_TAGS[name]: value for name, value in versions.items()}


def metric_tag(metric: str) -> str:
    """The version tag holding ``metric``'s value, e.g. ``mlflow_ddsp.metric.validation/loss``."""
    return METRIC_PREFIX + metric


# --- lineage: on training runs and on every checkpoint's LoggedModel ------------
CONFIG_DIGEST = "mlflow_ddsp.config_digest"  # sha256 of the canonical config yaml
DATASET_DIGEST = "mlflow_ddsp.dataset_digest"  # sha256 over the training recordings
DATASET_FILES = "mlflow_ddsp.files"  # on a run's dataset input: how many recordings it holds
REGISTERED_MODEL = "mlflow_ddsp.registered_model"  # on runs: the queue they train into
TRAINING_RUN = "mlflow_ddsp.training_run"  # on an `mlflow run` run in another experiment: where training went
PROJECT_RUN = "mlflow_ddsp.project_run"  # on that training run: the `mlflow run` run it belongs to
MLFLOW_NOTE = "mlflow.note.content"  # MLflow's own: a run's description (the `mlflow run` run says where, or why not)
# --- on training runs: one training, one run (issue 23) -------------------------
# A run ended by SIGINT/SIGTERM after its save is FINISHED with these two; a resume of it
# (or of any run that is not FINISHED) continues the same run and removes them.
STOPPED_BY = "mlflow_ddsp.stopped_by"  # "SIGINT" | "SIGTERM": the run was stopped, not finished
STOPPED_AT_STEP = "mlflow_ddsp.stopped_at_step"  # the step it was stopped (and saved) at, decimal
RUN_RESUMES = "mlflow_ddsp.resumes"  # how many times the run was continued by a later start, decimal
GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own key, so the UI shows it
GIT_DIRTY = "mlflow_ddsp.git_dirty"  # "true" when the tree had uncommitted changes
IMPORTED_FROM = "mlflow_ddsp.imported_from"  # on an imported checkpoint's LoggedModel: the upstream folder it came from
# The environment that decides whether a checkpoint loads and sounds the same (``lineage.environment_versions``):
MLFLOW_DDSP_VERSION = "mlflow_ddsp.mlflow_ddsp_version"
TORCH_VERSION = "mlflow_ddsp.torch_version"
MLFLOW_VERSION = "mlflow_ddsp.mlflow_version"
PYTHON_VERSION = "mlflow_ddsp.python_version"
ENVIRONMENT_TAGS = {  # environment_versions()'s key -> its tag
    "mlflow_ddsp_version": MLFLOW_DDSP_VERSION,
    "torch_version": TORCH_VERSION,
    "mlflow_version": MLFLOW_VERSION,
    "python_version": PYTHON_VERSION,
}
# MLflow's own tags that an ``mlflow run`` run carries (entry point, source, git): copied onto its training run.
PROJECT_TAG_PREFIXES = ("mlflow.project.", "mlflow.source.", "mlflow.gitRepoURL")

# --- comparison runs (`mlflow-ddsp compare`) -------------------------------------
COMPARE_MODEL = "mlflow_ddsp.compare.model"  # the registered model compared
COMPARE_VERSIONS = "mlflow_ddsp.compare.versions"  # "2,5,9": the versions, in order

# --- MLflow's own, on a run's dataset input and on experiments ----------------
DATASET_CONTEXT = "mlflow.data.context"  # "training" | "validation": how a run used the dataset
EXPERIMENT_KIND = "mlflow.experimentKind"  # e.g. "custom_model_development": what the UI shows for an experiment

# --- on LoggedModels only: which registered model's queue wrote them --------
QUEUE = "mlflow_ddsp.queue"

# --- on the registered model -------------------------------------------------
EXPERIMENT_IDS = "mlflow_ddsp.experiment_ids"  # JSON list: where the queue's LoggedModels live
RETENTION = "mlflow_ddsp.retention"  # JSON: the queue's alias, keep_last, best_metric, best_mode (gc uses it)
OWN_ALIASES = "mlflow_ddsp.own_aliases"  # JSON list: aliases the queue set (any other alias is a person's)
# The writer lease's binding (EDIT on the registered model needed to write either; see checkpoint/lease.py):
LEASE_MODEL = "mlflow_ddsp.lease_model"  # the lease model in use; absent: NAME.writer-lease
LEASE_HOLDER = "mlflow_ddsp.lease_holder"  # "<owner id> <lease model's creation time, ms>"; absent: none

# --- on writer-lease tickets (versions of the companion lease model) ---------
LEASE_MARKER = "mlflow_ddsp.lease"  # LEASE_MARKER_VALUE: a lease we wrote; nothing else is one
LEASE_MARKER_VALUE = "writer-lease/1"
LEASE_OWNER = "mlflow_ddsp.lease.owner"  # random id of the holder
LEASE_HOST = "mlflow_ddsp.lease.host"
LEASE_PID = "mlflow_ddsp.lease.pid"
LEASE_PROCESS = "mlflow_ddsp.lease.process"  # boot id + process start time: survives pid reuse
LEASE_PID_NAMESPACE = "mlflow_ddsp.lease.pid_namespace"  # e.g. "pid:[4026531836]": pids compare only within one
LEASE_HEARTBEAT = "mlflow_ddsp.lease.heartbeat"  # unix seconds of the last renewal
LEASE_TTL = "mlflow_ddsp.lease.ttl"  # seconds without a heartbeat before the lease is stale
LEASE_TAKEOVER = "mlflow_ddsp.lease.takeover"  # "true" when the ticket took over a live lease
LEASE_TOMBSTONE = "mlflow_ddsp.lease.tombstone"  # the renamed lease this one took over (deleted at release)

KIND_ROLLING = "rolling"
KIND_FORCE_SAVED = "force_saved"
KINDS = (KIND_ROLLING, KIND_FORCE_SAVED)

# --- dependency weights (issue 21): the weight files a version depends on, stored once per store ---
# One experiment per tracking store holds them, one LoggedModel per distinct file (``<role>-<sha256[:12]>``),
# its bytes the LoggedModel's artifact, beside its companions (mlflow_ddsp/checkpoint/dependencies.py).
DEPENDENCY_EXPERIMENT = "mlflow-ddsp dependencies"
DEPENDENCY_ROLE = "mlflow_ddsp.dependency.role"  # "encoder" | "f0" | "vocoder"
DEPENDENCY_SHA256 = "mlflow_ddsp.dependency.sha256"  # sha256 hex of the file
DEPENDENCY_SIZE = "mlflow_ddsp.dependency.size"  # its size in bytes, decimal
DEPENDENCY_FILE = "mlflow_ddsp.dependency.file"  # the original file name (the artifact's name)
DEPENDENCY_RETIRING = "mlflow_ddsp.dependency.retiring"  # unix seconds: gc means to delete it (never reused)
# The files stored beside it (the vocoder's config.json): "file:sha256:size,..." sorted by file; absent: none.
DEPENDENCY_COMPANIONS = "mlflow_ddsp.dependency.companions"
# On a checkpoint's LoggedModel: "role:sha256,role:sha256" of what it depends on (gc keeps those).
DEPENDENCIES = "mlflow_ddsp.dependencies"

__all__ += [
    "DEPENDENCY_EXPERIMENT",
    "DEPENDENCY_ROLE",
    "DEPENDENCY_SHA256",
    "DEPENDENCY_SIZE",
    "DEPENDENCY_FILE",
    "DEPENDENCY_RETIRING",
    "DEPENDENCY_COMPANIONS",
    "DEPENDENCIES",
]

# --- on training runs: a training continued in another run (issue 23) ---------
# Where a start cannot continue the run of the training it resumes (`mlflow run` imposed its own run,
# --new-run, --takeover), the new run names the old one, and the old one (if its writer is gone)
# names the new one; a crashed old run is ended KILLED instead of staying RUNNING.
CONTINUED_BY = "mlflow_ddsp.continued_by"  # on the old run: the run that continues its training
CONTINUES = "mlflow_ddsp.continues"  # on the new run: the run whose training it continues

__all__ += ["CONTINUED_BY", "CONTINUES"]
