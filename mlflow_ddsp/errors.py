"""One error hierarchy for mlflow-ddsp.

Every class also subclasses the built-in exception that fits, so callers that
only know Python's own types (``except ValueError``) still catch them. Messages
are one line, name the offending key/value, and say what to do next; the CLI
prints them without a traceback.
"""

from __future__ import annotations

__all__ = [
    "one_line",
    "MlflowDdspError",
    "ConfigError",
    "ArchitectureMismatchError",
    "StateDictMismatchError",
    "AudioError",
    "DeviceError",
    "RegistryError",
    "TrackingServerUnavailable",
    "TrackingServerUnreachable",
    "TrackingServerDisconnected",
    "ConversionServerError",
    "NotAuthenticatedError",
    "PermissionDeniedError",
    "ArtifactStoreUnavailable",
    "LeaseHeldError",
    "LeaseLostError",
    "CheckpointIntegrityError",
    "CheckpointSaveError",
    "CheckpointNotFoundError",
]


def one_line(text: object) -> str:
    """Collapse a (possibly multi-line) message to one line for an error report."""
    return " ".join(str(text).split())


class MlflowDdspError(Exception):
    """Base class: an error the CLI reports as one line, without a traceback."""


class ConfigError(MlflowDdspError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class ArchitectureMismatchError(ConfigError):
    """A checkpoint was trained with other tensor-shaping config keys than the config in use."""


class StateDictMismatchError(ConfigError):
    """A state_dict's keys or tensor shapes do not fit the module it is loaded into."""


class AudioError(MlflowDdspError, ValueError):
    """Audio that cannot be used: unreadable, empty, non-finite, too long."""


class DeviceError(ConfigError):
    """A requested torch device is not a device, or not available on this machine."""


class RegistryError(MlflowDdspError, RuntimeError):
    """An MLflow tracking or registry call failed."""


class TrackingServerUnavailable(RegistryError, ConnectionError):
    """The tracking server did not answer, or answered with a server error (HTTP 5xx,
    e.g. its database is down): the same request may succeed later."""


class TrackingServerUnreachable(TrackingServerUnavailable):
    """The tracking server did not answer."""


class TrackingServerDisconnected(TrackingServerUnavailable):
    """The connection to the tracking server (or the artifact store) broke during a request
    or in the middle of its answer: reset, closed without an answer, cut short
    (``IncompleteRead``). The server may have done the work; the same request may succeed later."""


class ConversionServerError(MlflowDdspError, RuntimeError):
    """A conversion server (``mlflow-ddsp serve``) could not be reached, or refused or failed a
    conversion request (one line; ``mlflow-ddsp convert``)."""


class NotAuthenticatedError(RegistryError, PermissionError):
    """The tracking server refused the request's credentials, or got none (HTTP 401)."""


class PermissionDeniedError(RegistryError, PermissionError):
    """The authenticated user lacks the MLflow permission (READ, EDIT, MANAGE) an action needs (HTTP 403)."""


class ArtifactStoreUnavailable(RegistryError):
    """The artifact store holds none of a queue's files (not mounted?): nothing is deleted."""


class LeaseHeldError(MlflowDdspError, RuntimeError):
    """Another live process is writing checkpoints into this registered model."""


class LeaseLostError(MlflowDdspError, RuntimeError):
    """This process's writer lease was taken over; it must stop writing."""


class CheckpointIntegrityError(MlflowDdspError, RuntimeError):
    """Checkpoint bytes do not match the sha256/size recorded at registration."""


class CheckpointSaveError(MlflowDdspError, RuntimeError):
    """A background checkpoint save failed; raised at the next save or at close."""


class CheckpointNotFoundError(MlflowDdspError, LookupError):
    """The requested model version, alias or checkpoint file does not exist."""
