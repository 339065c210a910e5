"""What a served DDSP-SVC model accepts and returns: the pyfunc signature and payload codec.

Requests are rows with either ``audio_base64`` (a WAV/FLAC/OGG file, base64)
or ``samples`` (floats in [-1, 1]) plus ``sample_rate``; params tune the
conversion. Each row is answered in the form it came in: base64 WAV for
``audio_base64``, samples for ``samples``, always at the model's rate::

    POST /invocations
    {"dataframe_records": [{"audio_base64": "UklGR..."}], "params": {"key": 2, "spk_id": 1}}
    -> {"predictions": [{"audio_base64": "UklGR...", "sample_rate": 44100}]}

Every problem with a request is a :class:`PayloadError` with a one-line
message; the pyfunc turns it into an HTTP 400 and the server keeps serving.

Budgets (:class:`RequestLimits`): a request is checked against its rows, the seconds
of each row, the seconds over all rows and the bytes its audio decodes to, all
from the rows' lengths and the audio files' headers *before any row's samples are
decoded*; decoding then stops at what is left of every budget, whatever a header
claims. A request whose params multiply the work (a cascade model's sampler run
with more network evaluations than the version's own settings) has its seconds
counted that many times (``cost``).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import soundfile as sf

from ..errors import AudioError
from ..inference import Sampler, parse_speaker_mix

__all__ = [
    "PayloadError",
    "RequestLimits",
    "ConversionRequest",
    "ConversionParams",
    "model_signature",
    "input_example",
    "parse_rows",
    "parse_params",
    "encode_result",
    "wav_base64",
]

DEFAULT_MAX_SECONDS = 120.0  # s; see serving.pyfunc: fits MLflow's 60 s request timeout on 2 cores
#: rows per request: each row has a fixed cost (decode, f0 set-up, slicing, model calls, base64 answer)
DEFAULT_MAX_ROWS = 16
#: decoded MB (10^6 bytes: float32 samples x channels at the file's own rate) allowed per second of
#: the request's seconds budget by default: every second as 8-channel 48 kHz or mono 384 kHz audio
#: (1.536 MB/s; 184 MB for 120 s); 44.1 kHz stereo is 0.353 MB/s
DEFAULT_DECODED_MB_PER_SECOND = 384_000 * 4 / 1e6


class PayloadError(AudioError):
    """A request the model cannot serve (bad audio, bad params, too long)."""


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask of the server (see :mod:`mlflow_ddsp.serving.pyfunc` for the
    environment variables that set them).

    Attributes:
        max_seconds: seconds of audio in one row (``MLFLOW_DDSP_MAX_SECONDS``).
        max_request_seconds: seconds over all rows, counted ``cost`` times
            (``MLFLOW_DDSP_MAX_REQUEST_SECONDS``; default ``max_seconds``).
        max_rows: rows in one request (``MLFLOW_DDSP_MAX_ROWS``).
        max_decoded_mb: MB (10^6 bytes) the rows' audio decodes to, float32 samples x
            channels at the file's own rate (``MLFLOW_DDSP_MAX_DECODED_MB``; default
            1.536 MB per second of ``request_seconds``: 184 MB for 120 s).
    """

    max_seconds: float = DEFAULT_MAX_SECONDS
    max_request_seconds: float | None = None
    max_rows: int = DEFAULT_MAX_ROWS
    max_decoded_mb: float | None = None

    @property
    def request_seconds(self) -> float:
        return self.max_seconds if self.max_request_seconds is None else self.max_request_seconds

    @property
    def decoded_mb(self) -> float:
        if self.max_decoded_mb is not None:
            return self.max_decoded_mb
        return self.request_seconds * DEFAULT_DECODED_MB_PER_SECOND


@dataclass(frozen=True)
class ConversionRequest:
    audio: np.ndarray  # [N] float32
    sample_rate: int
    as_wav: bool  # answer as base64 WAV (else as samples)


@dataclass(frozen=True)
class ConversionParams:
    key: float = 0.0
    spk_id: int = 1
    spk_mix: dict[int, float] | None = None
    f0_extractor: str | None = None
    threshold_db: float = -60.0
    formant_shift: float = 0.0  # semitones into the key-shift embedding (use_pitch_aug models)
    sampler: Any = None  # inference.Sampler of a cascade model (None: the config's)


def model_signature():
    """The MLflow signature: columns, and params with their defaults."""
    from mlflow.models import ModelSignature  # third-party, slow to import: loaded when a version's files are written
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    audio_columns = [
        ColSpec("string", "audio_base64", required=False),
        ColSpec(Array("double"), "samples", required=False),  # JSON numbers arrive as float64
    ]
    return ModelSignature(
        inputs=Schema([*audio_columns, ColSpec("long", "sample_rate", required=False)]),
        outputs=Schema([*audio_columns, ColSpec("long", "sample_rate")]),
        params=ParamSchema(
            [
                ParamSpec("key", "double", 0.0),  # semitones
                ParamSpec("spk_id", "long", 1),  # 1-based speaker
                ParamSpec("spk_mix", "string", ""),  # "1:0.5,2:0.5" overrides spk_id
                ParamSpec("f0_extractor", "string", ""),  # "" = the model's own
                ParamSpec("threshold", "double", -60.0),  # dB: quieter input is silenced
                ParamSpec("formant_shift", "double", 0.0),  # semitones (use_pitch_aug models)
                # RectifiedFlow / DiffusionFast samplers; 0, -1 or "" = the version's config
                ParamSpec("method", "string", ""),  # euler | rk4; dpm-solver | ddim | pndm | unipc
                ParamSpec("infer_step", "long", 0),
                ParamSpec("t_start", "double", -1.0),
                ParamSpec("k_step", "long", 0),
                ParamSpec("speedup", "long", 0),
            ]
        ),
    )


def wav_base64(audio: np.ndarray, sample_rate: int) -> str:
    """16-bit PCM WAV of mono ``audio [N]``, base64 encoded."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), int(sample_rate),
             format="WAV", subtype="PCM_16")  # fmt: skip
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def input_example(sample_rate: int = 44100):
    """A short sung tone as a base64 WAV row: shows the request shape in the MLflow UI."""
    import pandas as pd  # third-party, slow to import: only the MLmodel's input example needs it

    t = np.arange(int(0.25 * sample_rate)) / sample_rate
    tone = 0.3 * np.sin(2 * np.pi * 220.0 * t) * np.hanning(t.size)
    return pd.DataFrame([{"audio_base64": wav_base64(tone, sample_rate)}])


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


MAX_SAMPLE_RATE = 384_000  # Hz; the highest rate audio interfaces record at


def _one_clip(value: Any, row: int, column: str) -> Any:
    """A cell as MLflow hands it over: the ``inputs``/``instances`` forms wrap each value in an array."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "USOiuf":
        if value.size != 1:
            raise PayloadError(
                f"row {row}: {column} holds {value.size} values in one cell; send one clip per row, "
                'e.g. {"dataframe_records": [{"audio_base64": "..."}, {"audio_base64": "..."}]}'
            )
        return value.reshape(-1)[0]
    return value


@dataclass
class _Row:
    """A row measured from its header (or its samples), not yet decoded."""

    row: int
    as_wav: bool
    sample_rate: int
    frames: int  # as the header says (audio_base64) or as given (samples)
    channels: int = 1
    data: bytes | None = None  # the audio file (audio_base64)
    samples: Any = None  # the given samples, as MLflow parsed them

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def _audio_bytes(text: Any, row: int) -> bytes:
    text = _one_clip(text, row, "audio_base64")
    if not isinstance(text, str):
        raise PayloadError(f"row {row}: audio_base64 must be a base64 string, got {type(text).__name__}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError(f"row {row}: audio_base64 is not valid base64") from None
    if not data:
        raise PayloadError(f"row {row}: audio_base64 is empty")
    return data


def _unreadable(row: int) -> PayloadError:
    return PayloadError(f"row {row}: audio_base64 is not a readable audio file (send WAV, FLAC or OGG)")


def _measure_file(data: bytes, row: int) -> _Row:
    """Rate, length and channels from the file's header; no sample is decoded."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            sample_rate, frames, channels = int(f.samplerate), int(f.frames), int(f.channels)
    except (RuntimeError, sf.LibsndfileError):
        raise _unreadable(row) from None
    if not 0 < sample_rate <= MAX_SAMPLE_RATE:
        raise PayloadError(f"row {row}: the audio's sample rate {sample_rate} Hz is not in 1..{MAX_SAMPLE_RATE}")
    return _Row(row, True, sample_rate, max(frames, 0), max(channels, 1), data=data)


def _decode_file(entry: _Row, max_frames: int) -> tuple[np.ndarray, bool]:
    """Decode at most ``max_frames + 1`` frames (one past a budget, whatever the header said) as
    mono float32; the flag says whether there were more than ``max_frames``."""
    try:
        with sf.SoundFile(io.BytesIO(entry.data)) as f:
            audio = f.read(frames=max_frames + 1, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError):
        raise _unreadable(entry.row) from None
    return audio.mean(axis=1), audio.shape[0] > max_frames


def _too_long(row: int, seconds: float, max_seconds: float, at_least: bool = False) -> None:
    raise PayloadError(
        f"row {row}: the audio is {'more than ' if at_least else ''}{seconds:.1f} s long; this server accepts "
        f"at most {max_seconds:g} s (MLFLOW_DDSP_MAX_SECONDS)"
    )


def _check_audio(audio: np.ndarray, sample_rate: int, row: int, max_seconds: float) -> np.ndarray:
    if audio.size == 0:
        raise PayloadError(f"row {row}: the audio is empty")
    if not np.all(np.isfinite(audio)):
        raise PayloadError(f"row {row}: the audio contains NaN or infinite samples")
    seconds = audio.size / sample_rate
    if seconds > max_seconds:
        _too_long(row, seconds, max_seconds)
    return np.ascontiguousarray(audio, dtype=np.float32)


def _measure_row(record: Mapping[str, Any], row: int) -> _Row:
    encoded, samples = record.get("audio_base64"), record.get("samples")
    rate = _one_clip(record.get("sample_rate"), row, "sample_rate")
    if not _missing(encoded):
        if not _missing(samples):
            raise PayloadError(f"row {row}: send either audio_base64 or samples, not both")
        return _measure_file(_audio_bytes(encoded, row), row)
    if _missing(samples):
        raise PayloadError(f"row {row}: needs audio_base64 (a WAV file) or samples with sample_rate")
    try:
        rate = None if _missing(rate) else int(rate)
    except (TypeError, ValueError):
        rate = None
    if rate is None or not 0 < rate <= MAX_SAMPLE_RATE:
        raise PayloadError(
            f"row {row}: samples need a sample_rate in 1..{MAX_SAMPLE_RATE} Hz, got {record.get('sample_rate')!r}"
        )
    size = np.size(samples) if isinstance(samples, np.ndarray) else None
    if size is None:
        try:
            size = len(samples)
        except TypeError:
            raise PayloadError(f"row {row}: samples must be a list of numbers") from None
    return _Row(row, False, int(rate), int(size), samples=samples)


def _cost_note(seconds: float, cost: float, cost_reason: str) -> str:
    return f", counted {cost:.3g}x as {seconds * cost:.1f} s ({cost_reason})" if cost > 1 else ""


def parse_rows(
    rows: list[Mapping[str, Any]],
    *,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    limits: RequestLimits | None = None,
    cost: float = 1.0,
    cost_reason: str = "",
    check: Any = None,
) -> list[ConversionRequest]:
    """Validate request rows (``DataFrame.to_dict("records")``) into conversion requests.

    Every row is measured first (base64 decoded, the audio file's header read; no sample
    decoded) and the request is refused when its rows, a row's seconds, its seconds over
    all rows (times ``cost``) or the bytes its audio decodes to exceed ``limits``; only
    then are the rows decoded, each at most up to what is left of the budgets.

    Args:
        max_seconds: seconds per row when ``limits`` is not given.
        limits: the request budgets (:class:`RequestLimits`).
        cost: how many times each second counts against ``limits.request_seconds``
            (>= 1: a sampler that does more work than the version's own settings).
        cost_reason: what makes ``cost``, for the message.
        check: called as ``check(row)`` before each row is decoded (a request deadline).

    Raises:
        PayloadError: in one line naming the row or the budget, the value, and the
            environment variable that sets the limit.
    """
    limits = limits or RequestLimits(max_seconds=max_seconds)
    if not rows:  # also what MLflow makes of rows without any known column, e.g. [{}]
        raise PayloadError(
            "the request has no audio: each row needs audio_base64 (a WAV, FLAC or OGG file) "
            "or samples with sample_rate"
        )
    if len(rows) > limits.max_rows:
        raise PayloadError(f"the request has {len(rows)} rows; this server accepts at most {limits.max_rows} "
                           "per request (MLFLOW_DDSP_MAX_ROWS); send the others in further requests")  # fmt: skip
    measured = [_measure_row(record, row) for row, record in enumerate(rows)]
    for entry in measured:
        if entry.seconds > limits.max_seconds:
            _too_long(entry.row, entry.seconds, limits.max_seconds)
    _check_budgets(measured, limits, cost, cost_reason, at_least=False)
    done: list[_Row] = []  # rows decoded so far, at their decoded length
    requests = []
    for entry in measured:
        if check is not None:
            check(entry.row)
        rate = entry.sample_rate
        if entry.as_wav:
            # One frame past the smallest budget left, whatever the header said.
            seconds_left = limits.request_seconds / max(cost, 1.0) - sum(r.seconds for r in done)
            bytes_left = limits.decoded_mb * 1e6 - sum(r.frames * r.channels * 4 for r in done)
            budget = min(limits.max_seconds * rate, seconds_left * rate, bytes_left / (4 * entry.channels))
            audio, more = _decode_file(entry, max(int(budget), 0))
            if more:  # the header understated the length: name the budget it breaks
                if audio.size / rate > limits.max_seconds:
                    _too_long(entry.row, audio.size / rate, limits.max_seconds, at_least=True)
                got = _Row(entry.row, True, rate, audio.size, entry.channels)
                _check_budgets([*done, got], limits, cost, cost_reason, at_least=True)
                # Past a budget by one frame, so past it, whatever float rounding says:
                _check_budgets([*done, got], limits, cost, cost_reason, at_least=True, exceeded=True)
        else:
            try:
                audio = np.asarray(entry.samples, dtype=np.float64).reshape(-1).astype(np.float32)
            except (TypeError, ValueError):
                raise PayloadError(f"row {entry.row}: samples must be a list of numbers") from None
        requests.append(ConversionRequest(_check_audio(audio, rate, entry.row, limits.max_seconds), rate,
                                          entry.as_wav))  # fmt: skip
        done.append(_Row(entry.row, entry.as_wav, rate, audio.size, entry.channels))
    return requests


def _check_budgets(measured: list[_Row], limits: RequestLimits, cost: float, cost_reason: str, *,
                   at_least: bool, exceeded: bool = False) -> None:  # fmt: skip
    """Raise when ``measured`` exceeds the request's seconds or decoded bytes (``exceeded``: the
    seconds, without comparing)."""
    more = "more than " if at_least else ""
    seconds = sum(entry.seconds for entry in measured)
    if exceeded or seconds * max(cost, 1.0) > limits.request_seconds:
        raise PayloadError(
            f"the request's audio is {more}{seconds:.1f} s over {len(measured)} row(s)"
            f"{_cost_note(seconds, cost, cost_reason)}; this server accepts at most {limits.request_seconds:g} s "
            "per request (MLFLOW_DDSP_MAX_REQUEST_SECONDS)"
        )
    decoded = sum(entry.frames * entry.channels * 4 for entry in measured) / 1e6
    if decoded > limits.decoded_mb:
        raise PayloadError(
            f"the request's audio decodes to {more}{decoded:.1f} MB (float32 samples x channels at each file's "
            f"own rate, over {len(measured)} row(s)); this server accepts at most {limits.decoded_mb:g} MB "
            "per request (MLFLOW_DDSP_MAX_DECODED_MB); send mono audio at 44.1 or 48 kHz, or fewer rows"
        )


def _speaker_mix(text: str) -> dict[int, float] | None:
    # "1:0.5,2:0.5" or upstream's "{1: 0.5, 2: 0.5}"
    return parse_speaker_mix(text) if text.strip() else None


def parse_params(params: Mapping[str, Any] | None) -> ConversionParams:
    params = dict(params or {})

    def unset_if(name: str, unset: Any, kind):
        value = params.get(name)
        return None if value is None or value == unset or value == "" else kind(value)

    return ConversionParams(
        key=float(params.get("key", 0.0)),
        spk_id=int(params.get("spk_id", 1)),
        spk_mix=_speaker_mix(str(params.get("spk_mix", "") or "")),
        f0_extractor=str(params.get("f0_extractor") or "") or None,
        threshold_db=float(params.get("threshold", -60.0)),
        formant_shift=float(params.get("formant_shift", 0.0)),
        sampler=Sampler(
            method=unset_if("method", "", str),
            infer_step=unset_if("infer_step", 0, int),
            t_start=unset_if("t_start", -1.0, float),
            k_step=unset_if("k_step", 0, int),
            speedup=unset_if("speedup", 0, int),
        ),
    )


def encode_result(audio: np.ndarray, sample_rate: int, as_wav: bool) -> dict[str, Any]:
    if as_wav:
        return {"audio_base64": wav_base64(audio, sample_rate), "sample_rate": int(sample_rate)}
    return {"samples": np.asarray(audio, dtype=np.float32).astype(float).tolist(), "sample_rate": int(sample_rate)}
