"""A client for a served version (``mlflow-ddsp serve``): convert an audio file of any length over HTTP.

``mlflow-ddsp convert --url http://HOST:5001 -i in.wav -o out.wav -k 2`` posts the file to
``/invocations`` as the request body (never on a command line: one argument is limited to
128 KiB, about 1 s of audio as base64) and writes the answer. A served version converts at most
``MLFLOW_DDSP_MAX_SECONDS`` (default 120 s) per request (see :mod:`.payload`), so a longer clip is
sent in pieces cut at its quietest 10 ms frame before each limit and the answers are joined:

* pieces of at most ``max_seconds`` (default 120, the server's default budget), one request each,
  one after the other (a served version converts ``MLFLOW_DDSP_MAX_CONCURRENT`` clips at once, 1
  by default: parallel requests would get 503);
* a 400 that names a smaller seconds or MB budget (``this server accepts at most 30 s per request
  (MLFLOW_DDSP_MAX_SECONDS)``, a sampler's cost factor ``counted 4x``, ``... at most 5 MB``) cuts
  the rest of the clip into pieces that fit it, and the conversion goes on;
* everything else (the server down, another 400, 503 busy, 504 past the server's timeout) is a
  :class:`ConversionServerError` in one line that says what to do; nothing is written then.

The input is mixed to mono and sent as 16-bit PCM WAV at its own rate (the server resamples);
the output is 16-bit PCM WAV at the model's rate. Only the standard library (urllib) does HTTP.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AudioError, ConfigError, ConversionServerError, one_line

__all__ = [
    "DEFAULT_PIECE_SECONDS",
    "ConversionServerError",
    "ConvertResult",
    "convert_file",
    "invocations_url",
    "silence_cuts",
    "budget_seconds",
]

#: seconds per request when the caller does not say: the server's default MLFLOW_DDSP_MAX_SECONDS
DEFAULT_PIECE_SECONDS = 120.0
#: a piece never gets shorter than this (a server whose budget is smaller is refused in one line)
MIN_PIECE_SECONDS = 1.0
_FRAME_SECONDS = 0.01  # silence is looked for in 10 ms frames


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert_file` did.

    Attributes:
        output: the written file.
        seconds_in: the input's length (s).
        seconds_out: the output's length (s).
        sample_rate: the output's rate (Hz: the model's).
        requests: conversion requests answered (one per piece).
        piece_seconds: the longest piece sent (s).
        wall_seconds: time from the first request to the last answer (s).
    """

    output: Path
    seconds_in: float
    seconds_out: float
    sample_rate: int
    requests: int
    piece_seconds: float
    wall_seconds: float


def invocations_url(url: str) -> str:
    """``http://HOST:PORT`` (or ``.../invocations``) -> the scoring endpoint's URL.

    Raises:
        ConfigError: not an http(s) URL with a host.
    """
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"--url {url!r}: expected the server's address, e.g. http://127.0.0.1:5001")
    path = parsed.path.rstrip("/")
    if not path.endswith("/invocations"):
        path += "/invocations"
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, parsed.query, ""))


def silence_cuts(audio: np.ndarray, sample_rate: int, max_seconds: float) -> list[int]:
    """Where to cut mono ``audio [N]`` into pieces of at most ``max_seconds``: sample indices
    ``[0, c1, ..., N]``, each cut in the middle of the longest run of the quietest 10 ms frames (RMS)
    in the second half of the span before the limit (of equally long runs, the latest), so a piece
    is never shorter than half the limit, except the last."""
    n = int(audio.shape[0])
    limit = max(int(max_seconds * sample_rate), 1)
    frame = max(int(_FRAME_SECONDS * sample_rate), 1)
    cuts = [0]
    while n - cuts[-1] > limit:
        start = cuts[-1]
        lo, hi = start + limit // 2, start + limit  # cut somewhere in [lo, hi]
        frames = (hi - lo) // frame
        if frames < 1:
            cuts.append(hi)
            continue
        window = audio[lo : lo + frames * frame].astype(np.float64).reshape(frames, frame)
        rms = np.sqrt(np.mean(window * window, axis=1))
        quiet = np.flatnonzero(rms <= rms.min() + 1e-3 * rms.max() + 1e-12)  # the quietest frames
        runs = np.split(quiet, np.flatnonzero(np.diff(quiet) > 1) + 1)  # ... in runs of adjacent frames
        longest = max(runs[::-1], key=len)  # the longest run (of equals, the latest): the middle of a rest
        cuts.append(lo + (int(longest[0]) + int(longest[-1]) + 1) * frame // 2)
    cuts.append(n)
    return cuts


_SECONDS_BUDGET = re.compile(r"accepts at most ([0-9.]+(?:e[+-]?\d+)?) s\b")
_COST = re.compile(r"counted ([0-9.]+(?:e[+-]?\d+)?)x")
_MB_BUDGET = re.compile(r"accepts at most ([0-9.]+(?:e[+-]?\d+)?) MB per request")


def budget_seconds(message: str, sample_rate: int) -> float | None:
    """The seconds of mono audio at ``sample_rate`` that fit the budget a server's 400 ``message``
    names (:mod:`.payload`'s messages: seconds per row or request, divided by a sampler's cost
    factor; MB the audio decodes to, as float32), or None when it names no such budget."""
    seconds = _SECONDS_BUDGET.search(message)
    if seconds:
        cost = _COST.search(message)
        return float(seconds.group(1)) / (float(cost.group(1)) if cost else 1.0)
    megabytes = _MB_BUDGET.search(message)
    if megabytes:
        return float(megabytes.group(1)) * 1e6 / (4 * sample_rate)
    return None


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), int(sample_rate), format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _request_body(wav: bytes, params: Mapping[str, Any]) -> bytes:
    record = {"audio_base64": base64.b64encode(wav).decode("ascii")}
    return json.dumps({"dataframe_records": [record], "params": dict(params)}).encode("utf-8")


def _server_message(raw: bytes) -> str:
    """The one-line reason of an error answer: MLflow's ``{"message": ...}``, else the text."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return one_line(text)[:500] or "(no message)"
    if isinstance(doc, Mapping) and doc.get("message"):
        return one_line(str(doc["message"]))[:500]
    return one_line(text)[:500]


def _post(url: str, body: bytes, timeout: float) -> Any:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raise _Refused(exc.code, _server_message(exc.read() or b"")) from None
    except (socket.timeout, TimeoutError):
        raise ConversionServerError(
            f"no answer from {url} within {timeout:g} s (--timeout); the server may still be converting: "
            "send shorter pieces (--max-seconds) or wait longer"
        ) from None
    except (urllib.error.URLError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise ConversionServerError(f"no answer from {url} within {timeout:g} s (--timeout); is the server "
                                        "overloaded? send shorter pieces (--max-seconds) or wait longer") from None  # fmt: skip
        raise ConversionServerError(
            f"cannot reach {url}: {one_line(reason)}; is `mlflow-ddsp serve` running there? (check --url)"
        ) from None
    try:
        return json.loads(raw)
    except ValueError:
        raise ConversionServerError(f"{url} answered 200 with something that is not JSON: "
                                    f"{one_line(raw[:200].decode('utf-8', 'replace'))}") from None  # fmt: skip


def _decode_answer(answer: Any, url: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        row = answer["predictions"][0]
        data = base64.b64decode(row["audio_base64"], validate=True)
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, sf.LibsndfileError):
        shown = one_line(json.dumps(answer)[:200])
        raise ConversionServerError(f"{url} answered with something that is not a conversion: {shown}") from None
    return audio.mean(axis=1), int(rate)


def _read_input(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if not path.is_file():
        raise AudioError(f"-i/--input {path}: audio file not found")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise AudioError(f"-i/--input {path}: not a readable audio file ({one_line(exc)})") from None
    if audio.shape[0] == 0:
        raise AudioError(f"-i/--input {path}: the file holds no samples")
    return audio.mean(axis=1), int(rate)


def convert_file(
    url: str,
    input_path: str | Path,
    output_path: str | Path,
    params: Mapping[str, Any] | None = None,
    *,
    max_seconds: float | None = None,
    timeout: float = 600.0,
    on_piece: Callable[[int, int, float], None] | None = None,
    on_split: Callable[[str], None] | None = None,
) -> ConvertResult:
    """Convert ``input_path`` with the version served at ``url`` and write ``output_path``.

    Args:
        url: ``http://HOST:PORT`` of ``mlflow-ddsp serve`` (or ``mlflow models serve``).
        params: request params (``key``, ``spk_id``, ``spk_mix``, ...; see :mod:`.payload`).
        max_seconds: the longest piece sent in one request (default 120 s, the server's default
            ``MLFLOW_DDSP_MAX_SECONDS``); a 400 naming a smaller budget shrinks it.
        timeout: seconds to wait for one answer (the server answers 504 after its own
            ``--timeout``, 60 s by default).
        on_piece: called as ``on_piece(done, total, seconds)`` after each answered piece.
        on_split: called with a one-line note when the clip is sent in pieces, or re-cut.

    Returns:
        A :class:`ConvertResult`.

    Raises:
        ConfigError: a bad ``url`` or ``max_seconds``.
        AudioError: the input is missing, unreadable or empty.
        ConversionServerError: the server is unreachable, refuses a piece (400 other than a
            budget that can be met by cutting, 503 busy, 504 timeout) or answers nonsense;
            one line with the status, the server's reason and what to do. Nothing is written.
    """
    endpoint = invocations_url(url)
    piece = DEFAULT_PIECE_SECONDS if max_seconds is None else float(max_seconds)
    if not piece >= MIN_PIECE_SECONDS or math.isinf(piece):
        raise ConfigError(f"--max-seconds {max_seconds!r}: must be a number of seconds >= {MIN_PIECE_SECONDS:g}")
    params = dict(params or {})
    audio, rate = _read_input(Path(input_path))
    total_seconds = audio.shape[0] / rate
    cuts = silence_cuts(audio, rate, piece)
    if len(cuts) > 2 and on_split is not None:
        on_split(f"{input_path} is {total_seconds:.1f} s; sending it in {len(cuts) - 1} pieces of at most "
                 f"{piece:g} s, cut at silences (--max-seconds)")  # fmt: skip
    outputs: list[np.ndarray] = []
    out_rate: int | None = None
    longest = 0.0
    started = time.perf_counter()
    index = 0
    while index < len(cuts) - 1:
        start, end = cuts[index], cuts[index + 1]
        span = f"{start / rate:.1f}-{end / rate:.1f} s"
        body = _request_body(_wav_bytes(audio[start:end], rate), params)
        try:
            answer = _post(endpoint, body, timeout)
        except _Refused as refused:
            fits = budget_seconds(refused.message, rate) if refused.status == 400 else None
            seconds = (end - start) / rate
            if fits is not None and MIN_PIECE_SECONDS <= fits * 0.99 < seconds:
                piece = math.floor(fits * 0.99 * 100) / 100  # a margin for the header's rounding
                cuts = cuts[: index + 1] + [start + c for c in silence_cuts(audio[start:], rate, piece)[1:]]
                if on_split is not None:
                    on_split(f"the server takes less ({refused.message}); sending the rest in pieces of at most "
                             f"{piece:g} s")  # fmt: skip
                continue
            raise ConversionServerError(_refusal(endpoint, refused, span, seconds)) from None
        converted, answer_rate = _decode_answer(answer, endpoint)
        if out_rate is not None and answer_rate != out_rate:
            raise ConversionServerError(f"{endpoint} answered at {answer_rate} Hz for {span}, at {out_rate} Hz "
                                        "before: was the server restarted with another version?")  # fmt: skip
        out_rate = answer_rate
        outputs.append(converted)
        longest = max(longest, (end - start) / rate)
        index += 1
        if on_piece is not None:
            on_piece(index, len(cuts) - 1, end / rate)
    wall = time.perf_counter() - started
    result = np.concatenate(outputs) if outputs else np.zeros(0, dtype=np.float32)
    output = Path(output_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        output.write_bytes(_wav_bytes(result, out_rate or rate))
    except OSError as exc:
        raise ConfigError(f"-o/--output {output} cannot be written: {exc.strerror or exc}") from None
    return ConvertResult(output, total_seconds, result.shape[0] / (out_rate or rate), int(out_rate or rate),
                         len(outputs), longest, wall)  # fmt: skip


def _refusal(endpoint: str, refused: _Refused, span: str, seconds: float) -> str:
    status, message = refused.status, refused.message
    if status == 400:
        return f"{endpoint} refused the audio at {span} (HTTP 400): {message}"
    if status == 503:
        return (f"{endpoint} is busy (HTTP 503: {message}); retry later, or start the server with a higher "
                "MLFLOW_DDSP_MAX_CONCURRENT or more --workers")  # fmt: skip
    if status == 504:
        return (f"{endpoint} gave up on the {seconds:.1f} s at {span} past its request timeout (HTTP 504: {message}); "
                "send shorter pieces (--max-seconds) or start the server with a longer --timeout")  # fmt: skip
    return f"{endpoint} failed on the audio at {span} (HTTP {status}): {message}"
