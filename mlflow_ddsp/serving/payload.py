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
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..errors import AudioError

__all__ = [
    "PayloadError",
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


class PayloadError(AudioError):
    """A request the model cannot serve (bad audio, bad params, too long)."""


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
    from mlflow.models import ModelSignature
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
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), int(sample_rate),
             format="WAV", subtype="PCM_16")  # fmt: skip
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def input_example(sample_rate: int = 44100):
    """A short sung tone as a base64 WAV row: shows the request shape in the MLflow UI."""
    import pandas as pd

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


def _decode_wav(text: Any, row: int, max_seconds: float) -> tuple[np.ndarray, int]:
    """Decode base64 audio, never more than ``max_seconds`` of it.

    The length is read from the file's header first, and decoding stops one
    frame past the limit whatever the header says: a small, highly compressed
    file (two hours of FLAC silence is ~1.4 MB) cannot make the server decode
    gigabytes before refusing it.
    """
    import soundfile as sf

    text = _one_clip(text, row, "audio_base64")
    if not isinstance(text, str):
        raise PayloadError(f"row {row}: audio_base64 must be a base64 string, got {type(text).__name__}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError(f"row {row}: audio_base64 is not valid base64") from None
    if not data:
        raise PayloadError(f"row {row}: audio_base64 is empty")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            sample_rate = int(f.samplerate)
            if not 0 < sample_rate <= MAX_SAMPLE_RATE:
                raise PayloadError(f"row {row}: the audio's sample rate {sample_rate} Hz is not in 1..{MAX_SAMPLE_RATE}")
            limit = int(max_seconds * sample_rate)
            if f.frames > limit:  # from the header: refuse before decoding anything
                _too_long(row, f.frames / sample_rate, max_seconds)
            audio = f.read(frames=limit + 1, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError):
        raise PayloadError(f"row {row}: audio_base64 is not a readable audio file (send WAV, FLAC or OGG)") from None
    if audio.shape[0] > limit:  # the header understated the length
        _too_long(row, audio.shape[0] / sample_rate, max_seconds, at_least=True)
    return audio.mean(axis=1), sample_rate


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


def parse_rows(rows: list[Mapping[str, Any]], *, max_seconds: float = DEFAULT_MAX_SECONDS) -> list[ConversionRequest]:
    """Validate request rows (``DataFrame.to_dict("records")``) into conversion requests."""
    if not rows:  # also what MLflow makes of rows without any known column, e.g. [{}]
        raise PayloadError(
            "the request has no audio: each row needs audio_base64 (a WAV, FLAC or OGG file) "
            "or samples with sample_rate"
        )
    requests = []
    for row, record in enumerate(rows):
        encoded, samples = record.get("audio_base64"), record.get("samples")
        rate = _one_clip(record.get("sample_rate"), row, "sample_rate")
        if not _missing(encoded):
            if not _missing(samples):
                raise PayloadError(f"row {row}: send either audio_base64 or samples, not both")
            audio, sample_rate = _decode_wav(encoded, row, max_seconds)
            requests.append(ConversionRequest(_check_audio(audio, sample_rate, row, max_seconds), sample_rate, True))
            continue
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
        try:
            audio = np.asarray(samples, dtype=np.float64).reshape(-1).astype(np.float32)
        except (TypeError, ValueError):
            raise PayloadError(f"row {row}: samples must be a list of numbers") from None
        requests.append(ConversionRequest(_check_audio(audio, int(rate), row, max_seconds), int(rate), False))
    return requests


def _speaker_mix(text: str) -> dict[int, float] | None:
    from ..inference import parse_speaker_mix  # "1:0.5,2:0.5" or upstream's "{1: 0.5, 2: 0.5}"

    return parse_speaker_mix(text) if text.strip() else None


def parse_params(params: Mapping[str, Any] | None) -> ConversionParams:
    from ..inference import Sampler

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
