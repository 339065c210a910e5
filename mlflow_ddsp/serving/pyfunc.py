"""The pyfunc loader module named in every version's MLmodel.

``mlflow.pyfunc.load_model("models:/NAME/7")`` and ``mlflow models serve``
call :func:`_load_pyfunc` with the version's downloaded artifact root. Loading
checks every file against ``manifest.json`` (sha256) and reads the checkpoint
with ``torch.load(weights_only=True)``: a served file is never unpickled
arbitrarily. ``mlflow-ddsp verify`` additionally checks the manifest against
the sha256 recorded in the registry.

Environment, read at load time:
    MLFLOW_DDSP_MAX_SECONDS   longest accepted input (default 120: converts within MLflow's
                              60 s request timeout on a 2-core CPU with a full-size encoder)
    MLFLOW_DDSP_MAX_CONCURRENT conversions at once per server process (default 1); a request
                              beyond them gets 503 at once instead of queueing past the timeout
                              and multiplying memory (a 120 s clip needs ~0.5 GB while converting)
    MLFLOW_DDSP_ENCODER_CKPT  content-encoder weights, if not at the config's data.encoder_ckpt
    MLFLOW_DDSP_VOCODER_CKPT  NSF-HiFiGAN weights of a RectifiedFlow / DiffusionFast version, if not at
                              the config's vocoder.ckpt (its config.json beside it)
    MLFLOW_DDSP_DEVICE        cpu (default), auto, cuda, cuda:N or mps; a device this machine
                              lacks is refused (DeviceError) before anything is loaded
    MLFLOW_DDSP_ENCODER_PRECISION  auto (default: int8 content encoder on the CPU where
                              it has that form, fp32 otherwise), fp32 or int8
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

import yaml

from ..checkpoint.files import MANIFEST_FILE, Manifest, load_checkpoint, verify_files
from ..config import parse_config
from ..errors import AudioError, ConfigError, MlflowDdspError, one_line
from .payload import DEFAULT_MAX_SECONDS, PayloadError, encode_result, parse_params, parse_rows

__all__ = ["DdspVoiceModel", "guard_scoring_server", "load_version_dir", "mlflow_request_reason", "request_error"]

log = logging.getLogger(__name__)


class DdspVoiceModel:
    """A loaded checkpoint version that converts request rows (see :mod:`payload`)."""

    def __init__(self, converter, *, step: int, sha256: str, max_seconds: float = DEFAULT_MAX_SECONDS,
                 max_concurrent: int = 1):  # fmt: skip
        self.converter = converter
        self.step = step
        self.sha256 = sha256
        self.max_seconds = max_seconds
        self.max_concurrent = max_concurrent
        self._slots = threading.BoundedSemaphore(max_concurrent)

    @property
    def sampling_rate(self) -> int:
        return self.converter.cfg.data.sampling_rate

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Convert each row; a request we cannot serve raises an HTTP-400 MlflowException
        (``INVALID_PARAMETER_VALUE``) whose message is our one-line reason; beyond
        ``max_concurrent`` conversions at once, an HTTP 503 at once."""
        from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

        if not self._slots.acquire(blocking=False):  # -> HTTP 503: retry later, nothing queued
            raise request_error(
                f"busy: {self.max_concurrent} conversion(s) already running (MLFLOW_DDSP_MAX_CONCURRENT); retry later",
                error_code=TEMPORARILY_UNAVAILABLE,
            )
        try:
            return self._predict(model_input, params)
        finally:
            self._slots.release()

    def _predict(self, model_input: Any, params: dict[str, Any] | None) -> list[dict[str, Any]]:
        try:
            rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
            requests = parse_rows(rows, max_seconds=self.max_seconds)
            options = parse_params(params)
            results = []
            for request in requests:
                audio = self.converter.convert(
                    request.audio,
                    request.sample_rate,
                    key=options.key,
                    spk_id=options.spk_id,
                    spk_mix=options.spk_mix,
                    f0_extractor=options.f0_extractor,
                    threshold_db=options.threshold_db,
                    formant_shift=options.formant_shift,
                    sampler=options.sampler,
                )
                results.append(encode_result(audio, self.sampling_rate, request.as_wav))
            return results
        except (PayloadError, AudioError, ConfigError, ValueError) as exc:
            # -> HTTP 400 with the one-line message; the server keeps serving.
            raise request_error(str(exc)) from exc


def request_error(reason: str, error_code: int | None = None) -> Exception:
    """An ``MlflowException`` (INVALID_PARAMETER_VALUE -> HTTP 400, or ``error_code``) that answers
    with ``reason`` only.

    MLflow's scoring server (``mlflow.pyfunc.scoring_server.invocations``, MLflow 3.x)
    rewrites the message of an MlflowException raised in ``predict`` to
    ``"Failed to predict data '<the whole request payload>'. \\nError: <message>"``:
    two lines, the reason last, and the payload (megabytes of base64 audio) echoed
    back. This exception keeps its first message: the scoring server's rewrite is
    ignored, so the JSON answer's ``message`` is our one-line reason.
    """
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return _request_error_class()(one_line(reason), error_code=error_code or INVALID_PARAMETER_VALUE)


@functools.cache
def _request_error_class() -> type:
    from mlflow.exceptions import MlflowException  # imported on first use: mlflow is slow to import

    class RequestError(MlflowException):
        @property
        def message(self) -> str:
            return self._reason

        @message.setter
        def message(self, value: str) -> None:
            if not hasattr(self, "_reason"):  # set once, by MlflowException.__init__
                self._reason = value

    return RequestError


def load_version_dir(path: str | os.PathLike, *, device: str | None = None) -> DdspVoiceModel:
    """Load a version's artifact root: verify files, build the converter."""
    from ..device import resolve_device
    from ..inference import VoiceConverter

    if device is None:
        torch_device = resolve_device(os.environ.get("MLFLOW_DDSP_DEVICE") or "cpu", setting="MLFLOW_DDSP_DEVICE")
    else:
        torch_device = resolve_device(device)
    root = Path(path)
    manifest = Manifest.from_json((root / MANIFEST_FILE).read_bytes(), source=str(root / MANIFEST_FILE))
    verify_files(root, manifest, label=f"model at {root}")
    checkpoint = load_checkpoint(root / manifest.checkpoint_file)
    cfg = parse_config(yaml.safe_load((root / "config.yaml").read_text()))
    converter = VoiceConverter.from_checkpoint(
        checkpoint,
        cfg,
        device=torch_device,
        encoder_ckpt=os.environ.get("MLFLOW_DDSP_ENCODER_CKPT") or None,
        encoder_precision=os.environ.get("MLFLOW_DDSP_ENCODER_PRECISION") or "auto",
        encoder_precision_key="MLFLOW_DDSP_ENCODER_PRECISION",
        source=f"model at {root}",  # the vocoder's weights: MLFLOW_DDSP_VOCODER_CKPT, read by the converter
    )
    sha256 = manifest.files[manifest.checkpoint_file].sha256
    log.warning("mlflow-ddsp: serving %s step %d (checkpoint sha256 %s...)", cfg.model.type, manifest.step, sha256[:12])
    max_seconds = _positive_env("MLFLOW_DDSP_MAX_SECONDS", DEFAULT_MAX_SECONDS, float)
    max_concurrent = _positive_env("MLFLOW_DDSP_MAX_CONCURRENT", 1, int)
    return DdspVoiceModel(converter, step=manifest.step, sha256=sha256, max_seconds=max_seconds,
                          max_concurrent=max_concurrent)  # fmt: skip


def _positive_env(name: str, default, kind):
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"{name}={text!r} must be a positive {'whole ' if kind is int else ''}number")
    return value


def _load_pyfunc(data_path: str) -> DdspVoiceModel:
    """MLflow's entry point (``loader_module`` in the MLmodel).

    When MLflow's scoring server (``mlflow models serve``) is starting with this
    version, also guards its request handler (:func:`guard_scoring_server`).

    Raises:
        MlflowDdspError: the version cannot be served (changed bytes, bad config,
            missing encoder weights, a device this machine lacks); except while the
            scoring server is starting: there the reason is printed as one line,
            ``mlflow-ddsp: cannot serve this version: ...``, and the process exits
            with status 3, uvicorn's start-up failure, which also stops a
            multi-worker server instead of restarting the worker in a loop.
    """
    import sys

    starting = _scoring_server_starting()
    try:
        model = load_version_dir(data_path)
    except MlflowDdspError as exc:
        if starting is None:
            raise
        print(f"mlflow-ddsp: cannot serve this version: {one_line(str(exc))}", file=sys.stderr, flush=True)
        raise SystemExit(_UVICORN_STARTUP_FAILURE) from None
    if starting is not None:
        guard_scoring_server(starting)
    return model


_UVICORN_STARTUP_FAILURE = 3  # uvicorn.config.STARTUP_FAILURE: its supervisor stops instead of restarting


def _scoring_server_starting():
    """MLflow's ``scoring_server`` module while its ``app`` module is being imported (the server is
    loading its model), else None. Python lists a module in ``sys.modules`` before running it; ``app``
    gets its ``app`` attribute only once the model has loaded."""
    import sys

    app_module = sys.modules.get("mlflow.pyfunc.scoring_server.app")
    if app_module is None or hasattr(app_module, "app"):
        return None
    return sys.modules.get("mlflow.pyfunc.scoring_server")


#: MLflow's rewrite of an error raised while predicting: the whole payload, then the reason.
_PREDICT_ECHO = re.compile(r"^Failed to predict data '.*'\. \nError: ", re.DOTALL)
#: MLflow's schema enforcement: ``Failed to enforce schema of data '<payload>' with schema '<schema>'. Error: <reason>``.
_SCHEMA_ECHO = re.compile(r"^Failed to enforce schema of data '.*' with schema '.*'\. Error: ", re.DOTALL)
#: A bytes repr inside a message (``UnicodeDecodeError('utf-8', b'<the body>', ...)``).
_BYTES_REPR = re.compile(r"b'(?:[^'\\]|\\.)*'" + r'|b"(?:[^"\\]|\\.)*"')
_MAX_REASON = 300  # characters of MLflow's own reason kept in the answer


def mlflow_request_reason(message: str) -> str:
    """MLflow's own reason for refusing a request, as one line without the echoed payload.

    MLflow's scoring server words its request errors over several lines and repeats
    the request in them (``"Ensure that input is a valid JSON formatted string.
    Error: ...\nInput: \n<the whole body>"``, ``"Failed to predict data '<the whole
    body>'. \nError: Failed to enforce schema of data '<the data>' with schema
    '...'. Error: <reason>"``, a ``UnicodeDecodeError`` holding the body's bytes):
    this drops those echoes and keeps the first line of what is left, at most 300
    characters.
    """
    reason = _PREDICT_ECHO.sub("", message, count=1).strip()
    if _SCHEMA_ECHO.match(reason):
        reason = "the request does not fit the model's input schema: " + _SCHEMA_ECHO.sub("", reason, count=1).strip()
    reason = _BYTES_REPR.sub("b'...'", reason)
    first = reason.splitlines()[0].strip() if reason else ""
    first = first or "the request was refused"
    return first if len(first) <= _MAX_REASON else first[: _MAX_REASON - 3] + "..."


def guard_scoring_server(scoring_server) -> None:
    """Make MLflow's scoring server answer every bad request with one line (idempotent).

    ``scoring_server`` is the ``mlflow.pyfunc.scoring_server`` module of a process
    running it (``_load_pyfunc`` passes it while the server starts). Its
    ``/invocations`` route calls the module's ``invocations(data, content_type,
    model, input_schema)`` by name at request time (MLflow 3.x; pinned by a
    real-HTTP test in ``tests/test_serving.py``); this wraps that function so that

    - a JSON body nested too deeply for Python's parser (``RecursionError``, which
      MLflow lets through as HTTP 500) and a request without a Content-Type (an
      ``AttributeError`` there, also a 500) are 400s naming the problem;
    - MLflow's own request errors (not valid JSON, schema, unknown form) keep their
      status and lose the echoed payload and the extra lines (see
      :func:`mlflow_request_reason`); an unexpected error in ``predict`` (which
      MLflow answers with its traceback attached) is logged with that traceback
      on the server, and answered in one line; ours (:func:`request_error`) pass
      unchanged.
    """
    if getattr(scoring_server.invocations, "_mlflow_ddsp_guard", False):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode

    invocations = scoring_server.invocations

    @functools.wraps(invocations)
    def guarded(data, content_type, model, input_schema):
        if content_type is None:
            raise request_error("the request has no Content-Type header; send Content-Type: application/json")
        try:
            return invocations(data, content_type, model, input_schema)
        except RecursionError:
            raise request_error("the request's JSON nests too deeply to parse; "
                                'send {"dataframe_records": [{"audio_base64": "<WAV>"}]}') from None  # fmt: skip
        except MlflowException as exc:
            if isinstance(exc, _request_error_class()):
                raise
            trace = exc.json_kwargs.get("stack_trace")
            if trace:
                log.error("mlflow-ddsp: a request failed in predict: %s\n%s", one_line(exc.message), trace)
            try:
                code = ErrorCode.Value(exc.error_code)
            except ValueError:
                code = INVALID_PARAMETER_VALUE
            raise request_error(mlflow_request_reason(exc.message), error_code=code) from None

    guarded._mlflow_ddsp_guard = True
    scoring_server.invocations = guarded
