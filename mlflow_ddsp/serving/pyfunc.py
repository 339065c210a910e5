"""The pyfunc loader module named in every version's MLmodel.

``mlflow.pyfunc.load_model("models:/NAME/7")`` and ``mlflow models serve``
call :func:`_load_pyfunc` with the version's downloaded artifact root. Loading
checks every file against ``manifest.json`` (sha256) and reads the checkpoint
with ``torch.load(weights_only=True)``: a served file is never unpickled
arbitrarily. ``mlflow-ddsp verify`` additionally checks the manifest against
the sha256 recorded in the registry.

Environment, read at load time:
    MLFLOW_DDSP_MAX_SECONDS   longest accepted input (default 600)
    MLFLOW_DDSP_ENCODER_CKPT  content-encoder weights, if not at the config's data.encoder_ckpt
    MLFLOW_DDSP_DEVICE        cpu (default), auto, cuda, cuda:N or mps; a device this machine
                              lacks is refused (DeviceError) before anything is loaded
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from ..checkpoint.files import MANIFEST_FILE, Manifest, load_checkpoint, verify_files
from ..config import parse_config
from ..errors import AudioError, ConfigError, one_line
from .payload import DEFAULT_MAX_SECONDS, PayloadError, encode_result, parse_params, parse_rows

__all__ = ["DdspVoiceModel", "load_version_dir", "request_error"]

log = logging.getLogger(__name__)


class DdspVoiceModel:
    """A loaded checkpoint version that converts request rows (see :mod:`payload`)."""

    def __init__(self, converter, *, step: int, sha256: str, max_seconds: float = DEFAULT_MAX_SECONDS):
        self.converter = converter
        self.step = step
        self.sha256 = sha256
        self.max_seconds = max_seconds

    @property
    def sampling_rate(self) -> int:
        return self.converter.cfg.data.sampling_rate

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Convert each row; a request we cannot serve raises an HTTP-400 MlflowException
        (``INVALID_PARAMETER_VALUE``) whose message is our one-line reason."""
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
                )
                results.append(encode_result(audio, self.sampling_rate, request.as_wav))
            return results
        except (PayloadError, AudioError, ConfigError, ValueError) as exc:
            # -> HTTP 400 with the one-line message; the server keeps serving.
            raise request_error(str(exc)) from exc


def request_error(reason: str) -> Exception:
    """An ``MlflowException`` (INVALID_PARAMETER_VALUE -> HTTP 400) that answers with ``reason`` only.

    MLflow's scoring server (``mlflow.pyfunc.scoring_server.invocations``, MLflow 3.x)
    rewrites the message of an MlflowException raised in ``predict`` to
    ``"Failed to predict data '<the whole request payload>'. \\nError: <message>"``:
    two lines, the reason last, and the payload (megabytes of base64 audio) echoed
    back. This exception keeps its first message: the scoring server's rewrite is
    ignored, so the JSON answer's ``message`` is our one-line reason.
    """
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return _request_error_class()(one_line(reason), error_code=INVALID_PARAMETER_VALUE)


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
    )
    sha256 = manifest.files[manifest.checkpoint_file].sha256
    log.warning("mlflow-ddsp: serving %s step %d (checkpoint sha256 %s...)", cfg.model.type, manifest.step, sha256[:12])
    max_seconds = float(os.environ.get("MLFLOW_DDSP_MAX_SECONDS", DEFAULT_MAX_SECONDS))
    return DdspVoiceModel(converter, step=manifest.step, sha256=sha256, max_seconds=max_seconds)


def _load_pyfunc(data_path: str) -> DdspVoiceModel:
    """MLflow's entry point (``loader_module`` in the MLmodel)."""
    return load_version_dir(data_path)
