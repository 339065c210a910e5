"""`mlflow-ddsp convert --url ... -i in.wav -o out.wav`: a clip of any length through a real `mlflow-ddsp serve`.

The server runs with MLFLOW_DDSP_MAX_SECONDS=30, so a 10-minute clip meets both rules of the
client: pieces of at most 120 s (the server's default budget) cut at silences, and a 400 naming
a smaller budget re-cuts the rest to fit it. 503 and 504 come from a stub that answers as
MLflow's scoring server does (making a real server busy or late on cue would be a race).
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import scaled_timeout
from mlflow_ddsp.testing.server import LocalModelServer, free_port
from mlflow_ddsp.serving.client import budget_seconds, silence_cuts
from mlflow_ddsp.serving.payload import PayloadError, RequestLimits, parse_rows, wav_base64

SERVER_MAX_SECONDS = 30


def phrases(seconds: float, rate: int, sing: float = 7.0, rest: float = 1.0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Sung phrases of ``sing`` s separated by ``rest`` s of silence; returns the audio and the rests' spans."""
    from test_serving import sung_tone

    phrase = sung_tone(sing, rate) * np.hanning(int(sing * rate)).astype(np.float32) ** 0.1
    gap = np.zeros(int(rest * rate), dtype=np.float32)
    pieces, rests, at = [], [], 0
    while at < seconds * rate:
        pieces += [phrase, gap]
        rests.append((at + phrase.size, at + phrase.size + gap.size))
        at += phrase.size + gap.size
    return np.concatenate(pieces)[: int(seconds * rate)], rests


# ------------------------------------------------------------------------------------- no server


def test_cuts_fall_in_the_silences_and_respect_the_limit():
    rate = 16000
    audio, rests = phrases(600, rate)
    cuts = silence_cuts(audio, rate, 120)
    assert cuts[0] == 0 and cuts[-1] == audio.size and len(cuts) == 7  # 600 s in 6 pieces of <= 120 s
    assert all(0 < b - a <= 120 * rate for a, b in zip(cuts, cuts[1:]))
    for cut in cuts[1:-1]:
        assert any(lo + 0.4 * rate <= cut < hi - 0.4 * rate for lo, hi in rests), f"{cut / rate:.2f} s: not mid-rest"
    # No silence at all: still within the limit.
    noise = np.random.default_rng(0).normal(0, 0.1, 50 * rate).astype(np.float32)
    cuts = silence_cuts(noise, rate, 20)
    assert all(0 < b - a <= 20 * rate for a, b in zip(cuts, cuts[1:])) and cuts[-1] == noise.size


@pytest.mark.parametrize("limits, rows, cost, expected", [
    (RequestLimits(max_seconds=30), [40.0], 1.0, 30.0),  # per row (MLFLOW_DDSP_MAX_SECONDS)
    (RequestLimits(max_seconds=60, max_request_seconds=20), [25.0], 1.0, 20.0),  # per request
    (RequestLimits(max_seconds=60), [20.0], 4.0, 15.0),  # a sampler counted 4x
    (RequestLimits(max_seconds=600, max_decoded_mb=1.0), [20.0], 1.0, 1e6 / 4 / 16000),  # decoded MB
])  # fmt: skip
def test_the_client_reads_the_budget_from_the_servers_own_messages(limits, rows, cost, expected):
    """The 400 messages the payload module really raises, parsed back into seconds of mono 16 kHz audio."""
    records = [{"audio_base64": wav_base64(np.zeros(int(s * 16000), np.float32), 16000)} for s in rows]
    with pytest.raises(PayloadError) as raised:
        parse_rows(records, limits=limits, cost=cost, cost_reason="rk4")
    assert budget_seconds(str(raised.value), 16000) == pytest.approx(expected)
    assert budget_seconds("row 0: the audio contains NaN or infinite samples", 16000) is None


# ------------------------------------------------------------------------------------ a real server


@pytest.fixture(scope="module")
def served(tmp_path_factory, sqlite_template):
    """`mlflow-ddsp serve` of a random-weight CombSubFast version (2 speakers), at most 30 s per request."""
    from conftest import fresh_embedded
    from mlflow_ddsp import CheckpointQueue
    from mlflow_ddsp.config import parse_config
    from mlflow_ddsp.models import build_model_from_config
    from mlflow_ddsp.serving.model_files import pyfunc_files
    from test_serving import TINY

    root = tmp_path_factory.mktemp("convert")
    backend = fresh_embedded(sqlite_template, root, "convert")
    cfg = parse_config(TINY)
    with CheckpointQueue("singer", 10, 20, config=cfg.to_yaml(), tracking_uri=backend.uri,
                         experiment="convert", extra_files=pyfunc_files()) as queue:  # fmt: skip
        version = queue.save(10, build_model_from_config(cfg)).result()
    with LocalModelServer(f"models:/singer/{version.version}", backend.uri, root / "serve.log",
                          env={"MLFLOW_DDSP_MAX_SECONDS": str(SERVER_MAX_SECONDS)}) as server:  # fmt: skip
        yield server.url


def convert(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlflow_ddsp", "convert", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=scaled_timeout(600))  # fmt: skip


@pytest.mark.slow
def test_a_ten_minute_clip_converts_in_pieces_that_fit_the_server(served, tmp_path):
    rate = 22050
    audio, _ = phrases(600, rate)
    sf.write(tmp_path / "in.wav", audio, rate, subtype="PCM_16")
    result = convert("--url", served, "-i", "in.wav", "-o", "out.wav", "-k", "2", "--spk-id", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out, out_rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert out_rate == 44100
    assert abs(out.size / out_rate - 600) < 0.5  # every piece answered and joined
    # 120 s pieces were refused (400: at most 30 s), the rest cut to fit: one line each says so.
    assert "sending it in 6 pieces of at most 120 s" in result.stderr
    assert "the server takes less (row 0: the audio is " in result.stderr
    assert f"this server accepts at most {SERVER_MAX_SECONDS} s (MLFLOW_DDSP_MAX_SECONDS)" in result.stderr
    (summary,) = result.stdout.splitlines()
    assert summary.startswith("out.wav: 600.00 s in, ")
    requests, longest = map(float, re.search(r"(\d+) request\(s\) of at most ([0-9.]+) s", summary).groups())
    assert 600 / SERVER_MAX_SECONDS <= requests <= 2 * 600 / SERVER_MAX_SECONDS and longest <= SERVER_MAX_SECONDS


@pytest.mark.slow
def test_the_readmes_plain_http_recipe_carries_a_ten_minute_clip(served, tmp_path):
    """The README's request file + curl (its one-liner, as printed, port aside): a 10-minute clip reaches
    the server (which answers its one-line 400: it takes 30 s), where `$(base64 -w0 in.wav)` on curl's
    command line failed with `Argument list too long` above ~1 s of audio."""
    from test_readme import printed

    rate = 22050
    sf.write(tmp_path / "in.wav", phrases(600, rate)[0], rate, subtype="PCM_16")
    build = printed("""{ printf '{"dataframe_records": [{"audio_base64": "'; base64 -w0 in.wav; printf '"}], """
                    """"params": {"key": 2, "spk_id": 2}}'; } > req.json""")  # fmt: skip
    post = printed("curl -s localhost:5001/invocations -H 'Content-Type: application/json' --data-binary @req.json")
    port = served.rsplit(":", 1)[1]
    result = subprocess.run(["bash", "-c", f"{build}\n{post.replace('5001', port)}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=scaled_timeout(300))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "req.json").stat().st_size > 4 / 3 * (tmp_path / "in.wav").stat().st_size
    answer = json.loads(result.stdout)
    assert answer["message"] == ("row 0: the audio is 600.0 s long; this server accepts at most 30 s "
                                 "(MLFLOW_DDSP_MAX_SECONDS)")  # fmt: skip


@pytest.mark.slow
def test_refusals_and_an_absent_server_are_one_line_and_write_nothing(served, tmp_path):
    rate = 16000
    sf.write(tmp_path / "in.wav", phrases(3, rate)[0], rate, subtype="PCM_16")
    refused = convert("--url", served, "-i", "in.wav", "-o", "out.wav", "--spk-id", "9", cwd=tmp_path)
    assert refused.returncode == 1
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"error: {served}/invocations refused the audio at 0.0-3.0 s (HTTP 400): ")
    assert "spk_id" in line or "speaker" in line
    assert not (tmp_path / "out.wav").exists()

    down = convert("--url", f"http://127.0.0.1:{free_port()}", "-i", "in.wav", "-o", "out.wav", cwd=tmp_path)
    assert down.returncode == 1
    (line,) = down.stderr.splitlines()
    assert line.startswith("error: cannot reach http://127.0.0.1:") and "is `mlflow-ddsp serve` running there?" in line
    assert not (tmp_path / "out.wav").exists()

    bad_url = convert("--url", "localhost:5001", "-i", "in.wav", "-o", "out.wav", cwd=tmp_path)
    assert bad_url.returncode == 1
    assert bad_url.stderr.strip() == "error: --url 'localhost:5001': expected the server's address, e.g. http://127.0.0.1:5001"


class _Stub(http.server.BaseHTTPRequestHandler):
    """Answers every POST as MLflow's scoring server answers a busy (our 503) or late (its 504) request."""

    answers = {
        503: json.dumps({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy: 1 conversion(s) already running "
                         "(MLFLOW_DDSP_MAX_CONCURRENT); retry later"}),  # fmt: skip
        504: "Request processing time exceeded limit",  # mlflow.pyfunc.scoring_server's timeout_middleware
    }
    status = 503

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        body = self.answers[self.server.status].encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, expected", [
    (503, "is busy (HTTP 503: busy: 1 conversion(s) already running (MLFLOW_DDSP_MAX_CONCURRENT); retry later); "
          "retry later, or start the server with a higher MLFLOW_DDSP_MAX_CONCURRENT or more --workers"),
    (504, "gave up on the 3.0 s at 0.0-3.0 s past its request timeout (HTTP 504: Request processing time exceeded "
          "limit); send shorter pieces (--max-seconds) or start the server with a longer --timeout"),
])  # fmt: skip
def test_busy_and_late_answers_are_one_line_saying_what_to_do(tmp_path, status, expected):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.status = status
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        sf.write(tmp_path / "in.wav", phrases(3, 16000)[0], 16000, subtype="PCM_16")
        from click.testing import CliRunner

        from mlflow_ddsp.cli import main

        result = CliRunner().invoke(main, ["convert", "--url", url, "-i", "in.wav", "-o", "out.wav"])
        assert result.exit_code == 1
        assert result.stderr.strip() == f"error: {url}/invocations {expected}"
        assert not (tmp_path / "out.wav").exists()
    finally:
        server.shutdown()
        server.server_close()



def test_a_server_that_never_answers_is_one_line_after_the_timeout(tmp_path):
    import socket

    from click.testing import CliRunner

    from mlflow_ddsp.cli import main

    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        sf.write(tmp_path / "in.wav", phrases(2, 16000)[0], 16000, subtype="PCM_16")
        result = CliRunner().invoke(main, ["convert", "--url", url, "-i", "in.wav", "-o", "out.wav", "--timeout", "1"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"error: no answer from {url}/invocations within 1 s (--timeout); the server may "
                                     "still be converting: send shorter pieces (--max-seconds) or wait longer")  # fmt: skip
    assert not (tmp_path / "out.wav").exists()
