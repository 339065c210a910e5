"""The pyfunc loader module named in every version's MLmodel.

``mlflow.pyfunc.load_model("models:/NAME/7")`` and ``mlflow models serve``
call :func:`_load_pyfunc` with the version's downloaded artifact root. Loading
checks every file against ``manifest.json`` (sha256) and reads the checkpoint
with ``torch.load(weights_only=True)``: a served file is never unpickled
arbitrarily. ``mlflow-ddsp verify`` additionally checks the manifest against
the sha256 recorded in the registry.

Environment, read at load time:
    MLFLOW_DDSP_MAX_SECONDS   longest accepted input row (default 120: converts within MLflow's
                              60 s request timeout on a 2-core CPU with a full-size encoder)
    MLFLOW_DDSP_MAX_REQUEST_SECONDS  seconds over all rows of one request (default: the value of
                              MLFLOW_DDSP_MAX_SECONDS, for the same reason: the timeout is per request)
    MLFLOW_DDSP_MAX_ROWS      rows per request (default 16)
    MLFLOW_DDSP_MAX_DECODED_MB  MB (10^6 bytes) one request's audio may decode to, float32 samples x
                              channels at each file's own rate (default 1.536 MB per second of
                              MLFLOW_DDSP_MAX_REQUEST_SECONDS, 184 MB for 120 s: every second as
                              8-channel 48 kHz or mono 384 kHz audio)
    MLFLOW_DDSP_F0_EXTRACTORS  the f0 extractors a request may name in its ``f0_extractor`` param,
                              comma-separated (default parselmouth,dio,harvest,fcpe,rmvpe: at most
                              ~0.16 s of work per second of audio on 2 cores; crepe-tiny takes ~0.3 s
                              and full crepe ~11 s, so a 120 s clip would hold the slot for 38 s or
                              20 minutes); the version's own extractor is always used and allowed
    MLFLOW_DDSP_MAX_CONCURRENT conversions at once per server process (default 1); a request
                              beyond them gets 503 at once instead of queueing past the timeout
                              and multiplying memory (a 120 s clip needs ~0.5 GB while converting)
    MLFLOW_DDSP_ENCODER_CKPT  content-encoder weights, if not at the config's data.encoder_ckpt
    MLFLOW_DDSP_VOCODER_CKPT  NSF-HiFiGAN weights of a RectifiedFlow / DiffusionFast version, if not at
                              the config's vocoder.ckpt (its config.json beside it)
                              A version whose manifest records its weight files (issue 21) takes them
                              from these, the config's paths, the per-user cache or the store of
                              MLFLOW_TRACKING_URI, each checked by sha256 (serving/dependencies.py)
    MLFLOW_DDSP_DEVICE        cpu (default), auto, cuda, cuda:N or mps; a device this machine
                              lacks is refused (DeviceError) before anything is loaded
    MLFLOW_DDSP_ENCODER_PRECISION  auto (default: int8 content encoder on the CPU where
                              it has that form, fp32 otherwise), fp32 or int8

Budgets (see :mod:`.payload`): every request is checked against its rows, seconds per row,
seconds over all rows and decoded bytes from the audio headers before any row is decoded;
a violation is a one-line 400 naming the value, the limit and the variable. A RectifiedFlow /
DiffusionFast request whose sampler params (``method``, ``infer_step``, ``k_step``,
``speedup``) need more network evaluations per frame than the version's own settings has its
seconds counted that many times over (``infer_step=80`` with ``rk4`` on a version of 20 euler
steps: 16x). ``t_start`` does not change the count.

Timeout: MLflow's scoring server answers 504 when a request takes longer than
``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT`` seconds (``mlflow models serve -t``, ``mlflow-ddsp
serve --timeout``; default 60), but the thread computing it runs on. Served, a request's work
is stopped at the same deadline, counted from when the scoring server's handler starts on it:
checked before each row and each stage of a conversion (resample, f0, volume, each segment),
so it frees its slot at most one stage later instead of finishing a conversion nobody receives.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from ..checkpoint.files import MANIFEST_FILE, Manifest, load_checkpoint, verify_files
from ..config import parse_config
from ..device import resolve_device
from ..errors import AudioError, ConfigError, MlflowDdspError, one_line
from ..features import F0_EXTRACTORS
from ..inference import Sampler, VoiceConverter
from ..store import RegistryStore
from .dependencies import converter_files, manifest_dependencies, resolve_dependencies
from .payload import (
    DEFAULT_MAX_ROWS,
    DEFAULT_MAX_SECONDS,
    PayloadError,
    RequestLimits,
    encode_result,
    parse_params,
    parse_rows,
)

__all__ = [
    "DdspVoiceModel",
    "REQUEST_F0_EXTRACTORS",
    "guard_scoring_server",
    "load_version_dir",
    "mlflow_request_reason",
    "request_error",
    "request_f0_extractors_from_env",
    "request_limits_from_env",
    "sampler_cost",
    "sampler_evaluations",
]

log = logging.getLogger(__name__)

#: f0 extractors a request may name by default: at most ~0.16 s of work per second of audio on a
#: 2-core CPU (bench/f0_accuracy.py: parselmouth 0.003, dio 0.012, fcpe 0.019, harvest 0.157; rmvpe
#: ~0.06 measured with random weights), so 120 s of audio still converts within 60 s. Left out:
#: crepe-tiny (~0.32 s per second: 38 s for 120 s) and crepe (~11 s per second: 20 minutes).
REQUEST_F0_EXTRACTORS: tuple[str, ...] = ("parselmouth", "dio", "harvest", "fcpe", "rmvpe")

#: When the scoring server's handler started on the request being served in this thread
#: (time.monotonic(); set by guard_scoring_server's wrapper, which runs in the request's thread).
_REQUEST_STARTED: contextvars.ContextVar[float | None] = contextvars.ContextVar("mlflow_ddsp_request_started",
                                                                              default=None)  # fmt: skip


class _DeadlinePassed(MlflowDdspError, TimeoutError):
    """The scoring server's request timeout passed: the request's answer (504) is already sent."""


def sampler_evaluations(keywords: dict[str, Any] | None) -> int:
    """Network evaluations per frame of a cascade model's sampler (``Sampler.keywords(cfg)``):
    RectifiedFlow ``infer_step`` (x4 for ``rk4``; 0 when ``t_start >= 1``); DiffusionFast
    ``k_step // speedup`` (+1 for ``pndm``'s first, two-call step; ``k_step`` for DDPM,
    ``speedup == 1``). None (not a cascade model): 0."""
    if not keywords:
        return 0
    if "k_step" in keywords:
        k_step, speedup = int(keywords["k_step"]), int(keywords["infer_speedup"])
        return k_step if speedup == 1 else k_step // speedup + (keywords["method"] == "pndm")
    if float(keywords["t_start"]) >= 1.0:
        return 0
    return int(keywords["infer_step"]) * (4 if keywords["method"] == "rk4" else 1)


def sampler_cost(sampler, cfg) -> tuple[float, str]:
    """How many times a request's sampler works as hard as the version's own settings (>= 1),
    and the reason in words, for a cascade model's ``cfg``; ``(1.0, "")`` for other models.

    Raises:
        ConfigError: a sampler setting the model refuses (see ``Sampler.keywords``).
    """
    if not getattr(cfg, "uses_mel", False) or sampler is None or sampler == Sampler():
        return 1.0, ""
    asked, own = sampler.keywords(cfg), Sampler().keywords(cfg)
    n_asked, n_own = sampler_evaluations(asked), sampler_evaluations(own)
    if n_asked <= max(n_own, 1):
        return 1.0, ""
    shown = ", ".join(f"{'speedup' if k == 'infer_speedup' else k}={v}" for k, v in asked.items())  # request params
    return n_asked / max(n_own, 1), (f"{shown}: {n_asked} network evaluations per frame against the version's "
                                      f"own {n_own}")  # fmt: skip


class DdspVoiceModel:
    """A loaded checkpoint version that converts request rows (see :mod:`payload`)."""

    def __init__(self, converter, *, step: int, sha256: str, max_seconds: float = DEFAULT_MAX_SECONDS,
                 max_concurrent: int = 1, limits: RequestLimits | None = None,
                 f0_extractors: tuple[str, ...] = REQUEST_F0_EXTRACTORS,
                 request_timeout: float | None = None):  # fmt: skip
        """
        Args:
            max_seconds: seconds per row when ``limits`` is not given.
            limits: the request budgets (:class:`~.payload.RequestLimits`).
            f0_extractors: the extractors a request may name (the version's own is always allowed).
            request_timeout: seconds after which the scoring server has answered 504 and the
                request's work stops (None: no deadline, as in ``load_model(...).predict``).
        """
        self.converter = converter
        self.step = step
        self.sha256 = sha256
        self.limits = limits or RequestLimits(max_seconds=max_seconds)
        self.max_seconds = self.limits.max_seconds
        self.max_concurrent = max_concurrent
        self.f0_extractors = tuple(f0_extractors)
        self.request_timeout = request_timeout
        self._slots = threading.BoundedSemaphore(max_concurrent)

    @property
    def sampling_rate(self) -> int:
        return self.converter.cfg.data.sampling_rate

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Convert each row; a request we cannot serve raises an HTTP-400 MlflowException
        (``INVALID_PARAMETER_VALUE``) whose message is our one-line reason; beyond
        ``max_concurrent`` conversions at once, an HTTP 503 at once."""
        # mlflow stays lazy here: this module is imported by training and tests that never serve
        from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED, TEMPORARILY_UNAVAILABLE

        deadline = None
        if self.request_timeout is not None:
            deadline = (_REQUEST_STARTED.get() or time.monotonic()) + self.request_timeout
        if not self._slots.acquire(blocking=False):  # -> HTTP 503: retry later, nothing queued
            raise request_error(
                f"busy: {self.max_concurrent} conversion(s) already running (MLFLOW_DDSP_MAX_CONCURRENT); retry later",
                error_code=TEMPORARILY_UNAVAILABLE,
            )
        try:
            return self._predict(model_input, params, deadline)
        except _DeadlinePassed as exc:
            log.warning("mlflow-ddsp: %s", exc)
            raise request_error(str(exc), error_code=DEADLINE_EXCEEDED) from None  # -> 504, as the server's
        finally:
            self._slots.release()

    def _check_f0_extractor(self, name: str | None) -> None:
        if name is None:
            return
        key = name.lower()
        own = getattr(self.converter, "default_f0_extractor", None)
        if key in self.f0_extractors or key == own:
            return
        allowed = ", ".join(dict.fromkeys([*self.f0_extractors, *([own] if own else [])]))
        why = "too slow for this server's request budget" if key in F0_EXTRACTORS else "unknown"
        raise PayloadError(f"f0_extractor={name!r} is {why}; requests may name {allowed} "
                           "(MLFLOW_DDSP_F0_EXTRACTORS, set by the server's operator)")  # fmt: skip

    def _predict(self, model_input: Any, params: dict[str, Any] | None, deadline: float | None) -> list[dict[str, Any]]:
        where = {"row": 0, "rows": 0}

        def check(stage: str) -> None:
            if deadline is not None and time.monotonic() >= deadline:
                raise _DeadlinePassed(
                    f"request stopped at the scoring server's {self.request_timeout:g} s timeout "
                    f"(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT; it answered 504) before {stage} of row "
                    f"{where['row']} of {where['rows']}; its conversion slot is free again"
                )

        try:
            rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
            options = parse_params(params)
            self._check_f0_extractor(options.f0_extractor)
            cost, cost_reason = sampler_cost(options.sampler, getattr(self.converter, "cfg", None))
            where["rows"] = len(rows)

            def decoding(row: int) -> None:
                where["row"] = row
                check("decoding")

            requests = parse_rows(rows, limits=self.limits, cost=cost, cost_reason=cost_reason, check=decoding)
            results = []
            for row, request in enumerate(requests):
                where["row"] = row
                check("converting")
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
                    **({"interrupt": check} if deadline is not None else {}),
                )
                check("encoding the answer")
                results.append(encode_result(audio, self.sampling_rate, request.as_wav))
            return results
        except _DeadlinePassed:
            raise
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
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE  # mlflow is slow to import: on first use

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
    if device is None:
        torch_device = resolve_device(os.environ.get("MLFLOW_DDSP_DEVICE") or "cpu", setting="MLFLOW_DDSP_DEVICE")
    else:
        torch_device = resolve_device(device)
    root = Path(path)
    manifest = Manifest.from_json((root / MANIFEST_FILE).read_bytes(), source=str(root / MANIFEST_FILE))
    verify_files(root, manifest, label=f"model at {root}")
    checkpoint = load_checkpoint(root / manifest.checkpoint_file)
    cfg = parse_config(yaml.safe_load((root / "config.yaml").read_text()))
    label = f"model at {root}"
    records = manifest_dependencies(manifest, label=label)
    cfg = resolve_dependencies(_tracking_store, records, cfg, label=label)  # reads MLFLOW_DDSP_*_CKPT
    # a recorded role: the file resolution verified; an older version: the variables, as before
    files = converter_files(records, cfg, encoder_ckpt=os.environ.get("MLFLOW_DDSP_ENCODER_CKPT") or None,
                            vocoder_ckpt=os.environ.get("MLFLOW_DDSP_VOCODER_CKPT") or None)  # fmt: skip
    converter = VoiceConverter.from_checkpoint(
        checkpoint,
        cfg,
        device=torch_device,
        encoder_precision=os.environ.get("MLFLOW_DDSP_ENCODER_PRECISION") or "auto",
        encoder_precision_key="MLFLOW_DDSP_ENCODER_PRECISION",
        source=f"model at {root}",
        **files,
    )
    sha256 = manifest.files[manifest.checkpoint_file].sha256
    log.warning("mlflow-ddsp: serving %s step %d (checkpoint sha256 %s...)", cfg.model.type, manifest.step, sha256[:12])
    max_concurrent = _positive_env("MLFLOW_DDSP_MAX_CONCURRENT", 1, int)
    return DdspVoiceModel(converter, step=manifest.step, sha256=sha256, limits=request_limits_from_env(),
                          max_concurrent=max_concurrent, f0_extractors=request_f0_extractors_from_env())  # fmt: skip


def _tracking_store() -> RegistryStore:
    """The store a loaded version's dependencies are downloaded from (only when neither a local
    file nor the cache has them): ``MLFLOW_TRACKING_URI``, else what ``mlflow.set_tracking_uri``
    set in this process (the store ``mlflow.pyfunc.load_model`` read the version from)."""
    import mlflow  # third-party, slow to import: loaded here only when a dependency must be downloaded

    return RegistryStore(os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri())


def request_limits_from_env() -> RequestLimits:
    """The request budgets from ``MLFLOW_DDSP_MAX_SECONDS``, ``MLFLOW_DDSP_MAX_REQUEST_SECONDS``,
    ``MLFLOW_DDSP_MAX_ROWS`` and ``MLFLOW_DDSP_MAX_DECODED_MB`` (see the module doc).

    Raises:
        ConfigError: a value that is not a positive number (rows: a positive whole number), named.
    """
    max_seconds = _positive_env("MLFLOW_DDSP_MAX_SECONDS", DEFAULT_MAX_SECONDS, float)
    return RequestLimits(
        max_seconds=max_seconds,
        max_request_seconds=_positive_env("MLFLOW_DDSP_MAX_REQUEST_SECONDS", max_seconds, float),
        max_rows=_positive_env("MLFLOW_DDSP_MAX_ROWS", DEFAULT_MAX_ROWS, int),
        max_decoded_mb=_positive_env("MLFLOW_DDSP_MAX_DECODED_MB", None, float),  # None: by the seconds
    )


def request_f0_extractors_from_env() -> tuple[str, ...]:
    """``MLFLOW_DDSP_F0_EXTRACTORS`` (comma-separated names), default :data:`REQUEST_F0_EXTRACTORS`.

    Raises:
        ConfigError: an empty list or a name that is not an f0 extractor, naming the allowed ones.
    """
    text = os.environ.get("MLFLOW_DDSP_F0_EXTRACTORS")
    if text is None or not text.strip():
        return REQUEST_F0_EXTRACTORS
    names = tuple(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in F0_EXTRACTORS]
    if unknown or not names:
        raise ConfigError(f"MLFLOW_DDSP_F0_EXTRACTORS={text!r}: {', '.join(map(repr, unknown)) or 'no name'} "
                          f"is not an f0 extractor; name some of {', '.join(F0_EXTRACTORS)}, comma-separated")  # fmt: skip
    return names


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
    starting = _scoring_server_starting()
    try:
        model = load_version_dir(data_path)
    except MlflowDdspError as exc:
        if starting is None:
            raise
        print(f"mlflow-ddsp: cannot serve this version: {one_line(str(exc))}", file=sys.stderr, flush=True)
        raise SystemExit(_UVICORN_STARTUP_FAILURE) from None
    if starting is not None:
        # mlflow is loaded here already (its scoring server is importing us); imported lazily for other callers
        from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT

        # The scoring server's own setting, read as its timeout middleware reads it.
        model.request_timeout = float(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get())
        guard_scoring_server(starting)
    return model


_UVICORN_STARTUP_FAILURE = 3  # uvicorn.config.STARTUP_FAILURE: its supervisor stops instead of restarting


def _scoring_server_starting():
    """MLflow's ``scoring_server`` module while its ``app`` module is being imported (the server is
    loading its model), else None. Python lists a module in ``sys.modules`` before running it; ``app``
    gets its ``app`` attribute only once the model has loaded."""
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
    from mlflow.exceptions import MlflowException  # mlflow is slow to import: loaded with the scoring server
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode

    invocations = scoring_server.invocations

    @functools.wraps(invocations)
    def guarded(data, content_type, model, input_schema):
        started = _REQUEST_STARTED.set(time.monotonic())  # the request deadline's origin (DdspVoiceModel)
        try:
            return _guarded(data, content_type, model, input_schema)
        finally:
            _REQUEST_STARTED.reset(started)

    def _guarded(data, content_type, model, input_schema):
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
