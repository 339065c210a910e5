"""A request the model cannot serve is answered 400 with our one-line reason first, through
MLflow's own scoring-server code path (``scoring_server.invocations`` + its JSON error body)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server

from mlflow_ddsp.serving.pyfunc import DdspVoiceModel, request_error


class _Served:
    """What the scoring server needs of a loaded model: ``predict`` and ``metadata``."""

    def __init__(self, model: DdspVoiceModel):
        self.predict = model.predict
        self.metadata = SimpleNamespace()


def answer(body: dict) -> tuple[int, dict]:
    """Status and JSON body as `mlflow models serve` sends them for an exception in predict."""
    model = _Served(DdspVoiceModel(converter=None, step=1, sha256="0" * 64, max_seconds=5))
    try:
        scoring_server.invocations(json.dumps(body), "application/json", model, None)
    except MlflowException as exc:  # what the server's handler turns into the HTTP answer
        return exc.get_http_status_code(), json.loads(exc.serialize_as_json())
    raise AssertionError("the request was served")


@pytest.mark.parametrize(
    "body, reason",
    [
        ({"dataframe_records": [{"samples": [], "sample_rate": 16000}]}, "the audio is empty"),
        ({"dataframe_records": [{"samples": [0.1] * 50000, "sample_rate": 8000}]}, "at most 5 s"),
        ({"dataframe_records": [{"samples": [0.1, 0.2]}]}, "samples need a sample_rate in 1..384000 Hz"),
        ({"dataframe_records": [{"audio_base64": "%%%"}]}, "not valid base64"),
        ({"dataframe_records": [{"samples": [0.1], "sample_rate": 16000}], "params": {"spk_mix": "1:x"}}, "is not SPEAKER_ID:WEIGHT"),
    ],
)  # fmt: skip
def test_the_reason_is_the_whole_one_line_message(body, reason):
    status, error = answer(body)
    assert status == 400 and error["error_code"] == "INVALID_PARAMETER_VALUE"
    message = error["message"]
    assert "\n" not in message and reason in message, message
    assert "Failed to predict data" not in message and "0.1, 0.1" not in message  # the payload is not echoed


def test_request_error_is_an_invalid_parameter_value_with_one_line():
    exc = request_error("spk_id=9: unknown speaker id 9;\n ids are 1..2")
    assert exc.get_http_status_code() == 400
    exc.message = "Failed to predict data '<payload>'. \nError: " + exc.message  # the scoring server's rewrite
    assert exc.message == "spk_id=9: unknown speaker id 9; ids are 1..2" == str(exc)


@pytest.fixture
def guarded(monkeypatch):
    """MLflow's scoring server guarded as `mlflow models serve` has it, for one test only."""
    from mlflow_ddsp.serving.pyfunc import guard_scoring_server

    monkeypatch.setattr(scoring_server, "invocations", scoring_server.invocations)  # restored afterwards
    guard_scoring_server(scoring_server)
    guard_scoring_server(scoring_server)  # idempotent: one wrapper
    assert not getattr(scoring_server.invocations.__wrapped__, "_mlflow_ddsp_guard", False)
    return _Served(DdspVoiceModel(converter=None, step=1, sha256="0" * 64, max_seconds=5))


def guarded_answer(model, body: str | bytes, content_type: str | None = "application/json") -> tuple[int, str]:
    with pytest.raises(MlflowException) as caught:
        scoring_server.invocations(body, content_type, model, None)
    return caught.value.get_http_status_code(), json.loads(caught.value.serialize_as_json())["message"]


ROW = '{"dataframe_records": [{"samples": [0.1, 0.2, 0.1], "sample_rate": 16000}]}'


@pytest.mark.parametrize(
    "body, content_type, reason",
    [
        ('{"dataframe_records": ' + "[" * 100_000 + "]" * 100_000 + "}", "application/json",
         "the request's JSON nests too deeply"),
        ("not json " * 2_000, "application/json", "Ensure that input is a valid JSON formatted string"),
        (b'{"x": "\xc3\x28' + b"not json " * 2_000 + b'"}', "application/json", "UnicodeDecodeError('utf-8', b'...'"),
        ('{"dataframe_records": 5}', "application/json", "Dataframe records format must be a list of records"),
        ('{"foo": 1}', "application/json", "exactly one of the input fields"),
        (ROW, None, "the request has no Content-Type header"),
    ],
)  # fmt: skip
def test_mlflows_own_refusals_are_one_line_once_guarded(guarded, body, content_type, reason):
    status, message = guarded_answer(guarded, body, content_type)
    assert status == 400
    assert reason in message and "\n" not in message and "not json not json" not in message, message
    assert len(message) <= 300


def test_an_unexpected_error_in_predict_is_one_line_and_its_traceback_is_logged(guarded, caplog):
    """converter=None: predict fails with an AttributeError, which MLflow answers with its traceback attached."""
    with caplog.at_level("ERROR", logger="mlflow_ddsp.serving.pyfunc"):
        status, message = guarded_answer(guarded, ROW)
    assert status == 400 and "\n" not in message and "unexpected error" in message, message
    assert "Traceback" in caplog.text and "AttributeError" in caplog.text, caplog.text


def test_mlflows_schema_refusal_keeps_the_reason_and_drops_the_data():
    from mlflow_ddsp.serving.pyfunc import mlflow_request_reason

    message = ("Failed to predict data '{'sample_rate': array([16000]),\n 'samples': array([[0.1, 0.1]])}'. \nError: "
               "Failed to enforce schema of data '{'sample_rate': array([16000]),\n 'samples': array([[0.1]])}' with "
               "schema '['audio_base64': string (optional)]'. Error: Incompatible input types for column sample_rate.")  # fmt: skip
    assert mlflow_request_reason(message) == (
        "the request does not fit the model's input schema: Incompatible input types for column sample_rate."
    )
