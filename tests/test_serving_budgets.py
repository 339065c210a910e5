"""Serving budgets per request (issue 20, points 6 and 7).

* rows, seconds over all rows and decoded bytes are checked from the audio headers before any
  row is decoded, each refusal a one-line 400 naming the value, the limit and the variable;
* a request the scoring server times out (504) stops its work and frees its slot;
* the ``f0_extractor`` param cannot choose an extractor too slow for the budget (full CREPE),
  and a cascade sampler that works harder than the version's own settings counts its seconds
  that many times.

Real HTTP against ``mlflow models serve`` for what a client meets; the payload checks in
process with tracemalloc for what they cost.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
import tracemalloc
import urllib.error
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from mlflow_ddsp.serving.payload import PayloadError, RequestLimits, parse_rows


def encoded(audio: np.ndarray, rate: int, fmt: str = "WAV") -> str:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format=fmt, subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode()


def sung_tone(seconds: float, rate: int, f0: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(k * 2 * np.pi * f0 * t) / k for k in range(1, 6)) * 0.2
    return (tone * np.minimum(1, t / 0.05)).astype(np.float32)


# -- in process: what a refusal costs ---------------------------------------------------------


def test_eight_rows_of_long_flac_silence_are_refused_from_the_headers_before_decoding():
    """The issue's request: 8 rows of 119 s FLAC silence, each within the per-row limit. Before the
    budgets every row was decoded (8 x 21 MB float32 at 44.1 kHz) and converted past the timeout."""
    row = encoded(np.zeros(119 * 44100, dtype=np.int16), 44100, "FLAC")
    rows = [{"audio_base64": row}] * 8
    assert len(row) * 8 < 2_000_000  # a small request
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError) as refused:
            parse_rows(rows, limits=RequestLimits())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(refused.value) == ("the request's audio is 952.0 s over 8 row(s); this server accepts at most 120 s "
                                  "per request (MLFLOW_DDSP_MAX_REQUEST_SECONDS)")  # fmt: skip
    assert peak < 8_000_000  # the FLAC bytes; not one decoded row (21 MB)


def test_too_many_rows_are_refused_before_any_is_read():
    rows = [{"audio_base64": "not even base64 %%%"}] * 17  # never looked at
    with pytest.raises(PayloadError, match=r"^the request has 17 rows; this server accepts at most 16 per request "
                                           r"\(MLFLOW_DDSP_MAX_ROWS\)"):  # fmt: skip
        parse_rows(rows, limits=RequestLimits())


def test_decoded_bytes_count_channels_and_rate_from_the_header():
    """10 s of 8-channel 48 kHz audio: within every seconds limit, 15.4 MB once decoded."""
    row = encoded(np.zeros((10 * 48000, 8), dtype=np.int16), 48000, "FLAC")
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError) as refused:
            parse_rows([{"audio_base64": row}], limits=RequestLimits(max_decoded_mb=10))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(refused.value).startswith("the request's audio decodes to 15.4 MB (float32 samples x channels")
    assert "at most 10 MB per request (MLFLOW_DDSP_MAX_DECODED_MB)" in str(refused.value)
    assert peak < 5_000_000


def test_samples_rows_count_towards_the_request_seconds_and_the_per_row_limit_still_holds():
    three = {"samples": [0.1] * 300, "sample_rate": 100}  # 3 s
    with pytest.raises(PayloadError, match=r"the request's audio is 9.0 s over 3 row\(s\); .* at most 8 s per"):
        parse_rows([three] * 3, limits=RequestLimits(max_seconds=5, max_request_seconds=8))
    with pytest.raises(PayloadError, match=r"^row 1: the audio is 6.0 s long; this server accepts at most 5 s "
                                           r"\(MLFLOW_DDSP_MAX_SECONDS\)"):  # fmt: skip
        parse_rows([three, {"samples": [0.1] * 600, "sample_rate": 100}], limits=RequestLimits(max_seconds=5))
    assert len(parse_rows([three] * 2, limits=RequestLimits(max_seconds=5, max_request_seconds=8))) == 2


def test_a_header_that_understates_the_length_is_cut_at_the_request_budget():
    """A WAV whose RIFF size says "unknown": decoding stops one frame past what the request has left."""
    raw = bytearray(base64.b64decode(encoded(np.zeros(5 * 8000, dtype=np.int16), 8000)))
    raw[4:8] = (0xFFFFFFFF).to_bytes(4, "little")
    row = {"audio_base64": base64.b64encode(bytes(raw)).decode()}
    with pytest.raises(PayloadError, match=r"the request's audio is .* at most 7 s per request"):
        parse_rows([row, row], limits=RequestLimits(max_seconds=6, max_request_seconds=7))


def test_a_cascade_sampler_that_works_harder_counts_its_seconds_that_many_times():
    from mlflow_ddsp.config import parse_config
    from mlflow_ddsp.inference import Sampler
    from mlflow_ddsp.serving.pyfunc import sampler_cost, sampler_evaluations

    reflow = parse_config({"model": {"type": "RectifiedFlow"}})  # infer_step 20, euler
    cost, reason = sampler_cost(Sampler(infer_step=80, method="rk4"), reflow)
    assert cost == 16 and "320 network evaluations per frame against the version's own 20" in reason
    assert sampler_cost(Sampler(t_start=0.0), reflow) == (1.0, "")  # t_start moves no evaluation
    assert sampler_cost(Sampler(infer_step=5), reflow) == (1.0, "")  # cheaper counts once
    diffusion = parse_config({"model": {"type": "DiffusionFast"}})  # k_step 100, speedup 10
    assert sampler_cost(Sampler(speedup=1), diffusion)[0] == 10  # DDPM: every one of the 100 steps
    assert sampler_evaluations(Sampler(method="pndm").keywords(diffusion)) == 11
    assert sampler_cost(Sampler(), parse_config({"model": {"type": "CombSubFast"}})) == (1.0, "")
    ten = {"samples": [0.1] * 1000, "sample_rate": 100}  # 10 s: 160 s at 16x
    with pytest.raises(PayloadError, match=r"^the request's audio is 10.0 s over 1 row\(s\), counted 16x as 160.0 s "
                                           r"\(infer_step=80, method=rk4, t_start=0.7: 320 network evaluations"):  # fmt: skip
        parse_rows([ten], limits=RequestLimits(), cost=cost, cost_reason=reason)


class _Recorder:
    """A converter that converts nothing and records what it was asked (for the param checks only)."""

    def __init__(self, cfg):
        self.cfg, self.calls, self.default_f0_extractor = cfg, [], cfg.f0_extractor

    def convert(self, audio, rate, **kwargs):
        self.calls.append(kwargs)
        return audio


def test_the_sampler_cost_reaches_the_budget_through_mlflows_scoring_path():
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    from mlflow_ddsp.config import parse_config
    from mlflow_ddsp.serving.pyfunc import DdspVoiceModel

    converter = _Recorder(parse_config({"model": {"type": "RectifiedFlow"}}))
    model = DdspVoiceModel(converter, step=1, sha256="0" * 64, limits=RequestLimits(max_seconds=30))
    served = SimpleNamespace(predict=model.predict, metadata=SimpleNamespace())
    body = {"dataframe_records": [{"samples": [0.1] * 1000, "sample_rate": 100}], "params": {"infer_step": 80}}
    with pytest.raises(MlflowException) as refused:
        scoring_server.invocations(json.dumps(body), "application/json", served, None)
    assert refused.value.get_http_status_code() == 400
    assert "counted 4x as 40.0 s" in refused.value.message and "(MLFLOW_DDSP_MAX_REQUEST_SECONDS)" in refused.value.message
    assert converter.calls == []  # refused before any work
    body["params"] = {"infer_step": 40}  # 2x: 20 s counted, within 30
    scoring_server.invocations(json.dumps(body), "application/json", served, None)
    assert len(converter.calls) == 1


def test_the_conversion_stops_between_stages_when_interrupted():
    """The hook the request deadline uses: called before each stage; what it raises ends the conversion."""
    from mlflow_ddsp.config import parse_config
    from mlflow_ddsp.inference import VoiceConverter
    from mlflow_ddsp.models import build_model_from_config

    cfg = parse_config({"data": {"encoder": "logmel", "encoder_out_channels": 128, "sampling_rate": 44100,
                                 "block_size": 512}, "model": {"type": "CombSubFast", "n_spk": 1}})  # fmt: skip
    converter = VoiceConverter(build_model_from_config(cfg), cfg)
    audio = np.concatenate([sung_tone(1.0, 16000), np.zeros(8000, np.float32), sung_tone(1.0, 16000)])
    stages: list[str] = []
    converter.convert(audio, 16000, interrupt=stages.append)
    assert stages[:3] == ["resample", "f0", "volume"] and stages[-1] == "join"
    assert stages[3:-1] == [f"segment {i}/{len(stages) - 4}" for i in range(1, len(stages) - 3)]

    class Stop(Exception):
        pass

    def stop_at_f0(stage: str) -> None:
        if stage == "f0":
            raise Stop

    with pytest.raises(Stop):
        converter.convert(audio, 16000, interrupt=stop_at_f0)


# -- over HTTP: `mlflow models serve` ----------------------------------------------------------

from test_serving import TINY  # noqa: E402 - the same tiny servable model as the serving tests


@pytest.fixture(scope="module")
def registered(tmp_path_factory, sqlite_template):
    """A random-weight version with its pyfunc files, in an embedded store."""
    from conftest import fresh_embedded

    from mlflow_ddsp import CheckpointQueue
    from mlflow_ddsp.config import parse_config
    from mlflow_ddsp.models import build_model_from_config
    from mlflow_ddsp.serving.model_files import pyfunc_files

    backend = fresh_embedded(sqlite_template, tmp_path_factory.mktemp("budgets"), "budgets")
    cfg = parse_config(TINY)
    with CheckpointQueue("budgets", 10, 20, config=cfg.to_yaml(), tracking_uri=backend.uri,
                         experiment="budgets", extra_files=pyfunc_files()) as queue:  # fmt: skip
        version = queue.save(10, build_model_from_config(cfg)).result()
    return backend, version


def serve(registered, tmp_path_factory, env: dict[str, str], *, plain: bool = False):
    from mlflow_ddsp.testing.server import LocalModelServer

    backend, version = registered
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    return LocalModelServer(f"models:/budgets/{version.version}", backend.uri, log, env=env, plain=plain), log


def post(url: str, body: dict, timeout: float = 300) -> tuple[int, dict | str]:
    request = urllib.request.Request(url + "/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text


BUDGETS = {"MLFLOW_DDSP_MAX_SECONDS": "5", "MLFLOW_DDSP_MAX_REQUEST_SECONDS": "8", "MLFLOW_DDSP_MAX_ROWS": "3",
           "MLFLOW_DDSP_MAX_DECODED_MB": "2"}  # fmt: skip


@pytest.fixture(scope="module")
def budgeted(registered, tmp_path_factory):
    server, _ = serve(registered, tmp_path_factory, BUDGETS)
    with server:
        yield server.url


def row(seconds: float, rate: int = 16000, channels: int = 1) -> dict:
    tone = sung_tone(seconds, rate)
    return {"audio_base64": encoded(np.repeat(tone[:, None], channels, axis=1) if channels > 1 else tone, rate)}


@pytest.mark.slow
@pytest.mark.parametrize(
    "rows, params, message",
    [
        (lambda: [row(3.0)] * 3, {}, "the request's audio is 9.0 s over 3 row(s); this server accepts at most 8 s "
                                     "per request (MLFLOW_DDSP_MAX_REQUEST_SECONDS)"),
        (lambda: [row(0.5)] * 4, {}, "the request has 4 rows; this server accepts at most 3 per request "
                                     "(MLFLOW_DDSP_MAX_ROWS)"),
        (lambda: [row(4.0, 16000, 8)], {}, "the request's audio decodes to 2.0 MB"),
        (lambda: [row(6.0)], {}, "row 0: the audio is 6.0 s long; this server accepts at most 5 s"),
        (lambda: [row(0.5)], {"f0_extractor": "crepe"},
         "f0_extractor='crepe' is too slow for this server's request budget; requests may name parselmouth, dio, "
         "harvest, fcpe, rmvpe (MLFLOW_DDSP_F0_EXTRACTORS"),
        (lambda: [row(0.5)], {"f0_extractor": "crepe-tiny"}, "f0_extractor='crepe-tiny' is too slow"),
        (lambda: [row(0.5)], {"f0_extractor": "yin"}, "f0_extractor='yin' is unknown; requests may name"),
    ],
    ids=["request-seconds", "rows", "decoded-bytes", "row-seconds", "crepe", "crepe-tiny", "unknown-extractor"],
)  # fmt: skip
def test_a_request_over_a_budget_is_a_one_line_400_and_the_server_keeps_serving(budgeted, rows, params, message):
    status, answer = post(budgeted, {"dataframe_records": rows(), "params": params})
    assert status == 400, answer
    assert answer["message"].startswith(message) or message in answer["message"], answer
    assert "\n" not in answer["message"] and len(answer["message"]) <= 300
    status, answer = post(budgeted, {"dataframe_records": [row(2.0)] * 3})  # 6 s, 3 rows: within every budget
    assert status == 200, answer
    assert len(answer["predictions"]) == 3


@pytest.mark.slow
def test_the_operator_chooses_the_extractors_a_request_may_name(registered, tmp_path_factory):
    server, _ = serve(registered, tmp_path_factory, {"MLFLOW_DDSP_F0_EXTRACTORS": "parselmouth"})
    with server:
        status, answer = post(server.url, {"dataframe_records": [row(0.5)], "params": {"f0_extractor": "fcpe"}})
        assert status == 400 and "requests may name parselmouth (MLFLOW_DDSP_F0_EXTRACTORS" in answer["message"]
        status, answer = post(server.url, {"dataframe_records": [row(0.5)], "params": {"f0_extractor": "Parselmouth"}})
        assert status == 200, answer


@pytest.mark.slow
def test_a_request_that_times_out_stops_its_work_and_frees_the_slot(registered, tmp_path_factory):
    """MLflow's scoring server answers 504 at MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT (1 s here) and lets the
    thread run on; the conversion must stop at the same deadline instead of converting every row."""
    rows = 16
    env = {"MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "1", "MLFLOW_DDSP_MAX_ROWS": str(rows),
           "MLFLOW_DDSP_MAX_REQUEST_SECONDS": "1000"}  # fmt: skip
    server, log = serve(registered, tmp_path_factory, env, plain=True)  # plain: the timeout from the environment
    with server:
        status, answer = post(server.url, {"dataframe_records": [row(5.0)] * rows})  # 80 s: several seconds of work
        assert status == 504, answer
        # The slot frees once the work stops: poll a short request until it is served (not 503 busy).
        small = {"dataframe_records": [{"samples": sung_tone(0.2, 16000).tolist(), "sample_rate": 16000}]}
        answered, deadline = None, time.monotonic() + 120
        while time.monotonic() < deadline:
            answered, _ = post(server.url, small)
            if answered != 503:
                break
        assert answered == 200
        stopped = re.search(r"request stopped at the scoring server's 1 s timeout \(MLFLOW_SCORING_SERVER_REQUEST_"
                            r"TIMEOUT; it answered 504\) before (.+?) of row (\d+) of 16", log.read_text())  # fmt: skip
        assert stopped, log.read_text()[-3000:]
        assert int(stopped.group(2)) < rows - 1  # stopped, not finished: rows were left unconverted


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MLFLOW_DDSP_MAX_ROWS", "1.5", r"MLFLOW_DDSP_MAX_ROWS='1.5' must be a positive whole number"),
        ("MLFLOW_DDSP_MAX_REQUEST_SECONDS", "0", r"MLFLOW_DDSP_MAX_REQUEST_SECONDS='0' must be a positive number"),
        ("MLFLOW_DDSP_MAX_DECODED_MB", "lots", r"MLFLOW_DDSP_MAX_DECODED_MB='lots' must be a positive number"),
        ("MLFLOW_DDSP_F0_EXTRACTORS", "fcpe, yin", r"MLFLOW_DDSP_F0_EXTRACTORS='fcpe, yin': 'yin' is not an f0 "
                                                   r"extractor; name some of parselmouth, dio, harvest, fcpe, crepe"),
        ("MLFLOW_DDSP_F0_EXTRACTORS", ",", r"'no name' is not|no name is not"),
    ],
)  # fmt: skip
def test_the_budget_settings_are_checked_at_load(monkeypatch, name, value, message):
    from mlflow_ddsp.errors import ConfigError
    from mlflow_ddsp.serving.pyfunc import request_f0_extractors_from_env, request_limits_from_env

    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        request_f0_extractors_from_env() if name == "MLFLOW_DDSP_F0_EXTRACTORS" else request_limits_from_env()


def test_the_budget_defaults_follow_the_per_row_limit(monkeypatch):
    from mlflow_ddsp.serving.pyfunc import REQUEST_F0_EXTRACTORS, request_f0_extractors_from_env, request_limits_from_env

    monkeypatch.setenv("MLFLOW_DDSP_MAX_SECONDS", "600")  # the README's long-clip setting: one 600 s clip fits
    limits = request_limits_from_env()
    assert (limits.max_seconds, limits.request_seconds, limits.max_rows) == (600, 600, 16)
    assert limits.decoded_mb == pytest.approx(600 * 384_000 * 4 / 1e6)  # 600 s of mono 384 kHz (or 48 kHz x 8)
    assert RequestLimits().decoded_mb == pytest.approx(184.32)
    assert "crepe" not in REQUEST_F0_EXTRACTORS and "crepe-tiny" not in REQUEST_F0_EXTRACTORS
    monkeypatch.setenv("MLFLOW_DDSP_F0_EXTRACTORS", " FCPE,parselmouth ")
    assert request_f0_extractors_from_env() == ("fcpe", "parselmouth")
