"""Request limits are enforced before the work: a small file cannot make the server decode hours of audio."""

from __future__ import annotations

import base64
import io
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from mlflow_ddsp.serving.payload import PayloadError, parse_rows


def _b64(audio: np.ndarray, rate: int, fmt: str) -> str:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format=fmt, subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def hour_of_flac_silence() -> str:
    return _b64(np.zeros(3600 * 8000, dtype=np.int16), 8000, "FLAC")  # ~0.3 MB of FLAC, 57.6 MB decoded


def test_a_long_compressed_file_is_refused_from_its_header(hour_of_flac_silence):
    assert len(hour_of_flac_silence) < 2_000_000
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError, match=r"row 0: the audio is 3600.0 s long; this server accepts at most 60 s"):
            parse_rows([{"audio_base64": hour_of_flac_silence}], max_seconds=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000  # the base64 text and the FLAC bytes; not the decoded hour (115 MB as float32)


def test_decoding_stops_at_the_limit_when_the_header_has_no_length():
    # A WAV whose header claims "unknown/huge" length is read only up to the limit.
    audio = np.zeros(5 * 8000, dtype=np.float32)
    raw = bytearray(base64.b64decode(_b64(audio, 8000, "WAV")))
    raw[4:8] = (0xFFFFFFFF).to_bytes(4, "little")  # RIFF size: "streaming", unknown
    with pytest.raises(PayloadError, match=r"at most 2 s"):
        parse_rows([{"audio_base64": base64.b64encode(bytes(raw)).decode()}], max_seconds=2)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"samples": [0.1, 0.2], "sample_rate": 10**9}, r"sample_rate in 1\.\.384000 Hz, got 1000000000"),
        ({"samples": [0.1, 0.2], "sample_rate": "fast"}, r"sample_rate in 1\.\.384000 Hz, got 'fast'"),
        ({"samples": [0.1, 0.2], "sample_rate": 0}, r"sample_rate in 1\.\.384000 Hz, got 0"),
        ({"samples": [0.1] * 300, "sample_rate": 100}, r"is 3.0 s long; this server accepts at most 2 s"),
    ],
)
def test_bad_rates_and_lengths_name_the_problem(row, message):
    with pytest.raises(PayloadError, match=message):
        parse_rows([row], max_seconds=2)


def test_a_clip_within_the_limit_decodes():
    tone = (0.3 * np.sin(np.arange(16000) / 8000 * 2 * np.pi * 220)).astype(np.float32)
    (request,) = parse_rows([{"audio_base64": _b64(tone, 16000, "FLAC")}], max_seconds=2)
    assert request.sample_rate == 16000 and request.audio.shape == (16000,)


def test_a_request_beyond_the_concurrency_limit_is_503_at_once():
    """Two requests on a 1-slot model: the second is refused (TEMPORARILY_UNAVAILABLE) while the first runs."""
    import threading

    from mlflow.exceptions import MlflowException

    from mlflow_ddsp.serving.pyfunc import DdspVoiceModel

    inside, release = threading.Event(), threading.Event()

    class Converter:
        class cfg:  # noqa: N801 - the attribute shape VoiceConverter has
            class data:  # noqa: N801
                sampling_rate = 16000

        def convert(self, audio, rate, **_):
            inside.set()
            release.wait(60)
            return audio

    model = DdspVoiceModel(Converter(), step=1, sha256="0" * 64, max_seconds=5, max_concurrent=1)
    row = [{"samples": [0.1] * 1600, "sample_rate": 16000}]
    first = threading.Thread(target=model.predict, args=(row,))
    first.start()
    assert inside.wait(60)
    with pytest.raises(MlflowException) as refused:
        model.predict(row)
    assert refused.value.get_http_status_code() == 503 and "MLFLOW_DDSP_MAX_CONCURRENT" in refused.value.message
    release.set()
    first.join(60)
    assert model.predict(row)[0]["sample_rate"] == 16000  # the slot is free again


@pytest.mark.parametrize("value", ["0", "-1", "many", "nan", "inf"])
def test_serving_limits_from_the_environment_are_checked(monkeypatch, value):
    from mlflow_ddsp.errors import ConfigError
    from mlflow_ddsp.serving.pyfunc import _positive_env

    monkeypatch.setenv("MLFLOW_DDSP_MAX_SECONDS", value)
    with pytest.raises(ConfigError, match=rf"MLFLOW_DDSP_MAX_SECONDS='{value}' must be a positive number"):
        _positive_env("MLFLOW_DDSP_MAX_SECONDS", 120.0, float)
