"""How much faster than real time a DDSP-SVC model converts singing.

In process (here): ``VoiceConverter.convert`` on synthetic singing of 10 s and
60 s (``mlflow_ddsp.demo_data`` phrases with pauses, so long clips are sliced at
silences as real songs are), the whole pipeline timed: resampling, f0, volume and
mask, content units, synthesis and joining. Two models, both untrained (speed
does not depend on the weights):

* ``full``: the default CombSubFast (768 unit channels) on a full-size fairseq
  HuBERT / ContentVec encoder (``contentvec768l12``: 12 layers, 768 wide), its
  random weights written to a temporary checkpoint file and loaded the way a
  real ``checkpoint_best_legacy_500.pt`` is;
* ``small``: CombSubFast with 128 unit channels on the weights-free ``logmel`` encoder.

For ``full`` the content encoder runs at the CPU default precision (``auto``: dynamic
int8, see ``mlflow_ddsp.features.encoders.precision``) and, interleaved with it in
the same loop (fp32, int8, fp32, int8, ...), at ``fp32``, so that machine load hits
both alike; the line ``int8/fp32`` gives the speed ratio. The quality guard is printed
under it: the mean (and worst) per-frame cosine similarity of the int8 units to the
fp32 units of the whole clip (goal >= 0.99), and the log-mel distance (mean absolute
difference of natural-log 128-band mel spectra at 16 kHz, 20 ms hop) of the int8
conversion to the fp32 conversion with the same noise seed, next to the distance
between two fp32 conversions that differ only in the synthesiser's noise seed
(what the listener already cannot rely on). The random encoder weights get fairseq's
``init_bert_params`` init (N(0, 0.02) Linear weights), as a real checkpoint's
transformer starts from.

The real-time factor here is audio seconds / wall seconds ("Nx faster than real
time"); each figure is the median of ``--repeats`` runs after one warm-up run of
the same clip (the first call builds oneDNN kernels for each new segment shape).

Through HTTP: the same model registered as a version (with its pyfunc files)
in an embedded store and served by a real ``mlflow models serve`` on
127.0.0.1; the same clip POSTed as a base64 WAV, the response decoded. The
difference to in-process is what serving costs (base64, JSON, WAV encoding).

    python bench/serve_latency.py [--seconds 10 60] [--models small full] [--repeats 3] [--no-http]
                                  [--precisions fp32 auto]

The header gives the machine's load and how torch's threads wait (passively:
``bench/calibration.py``); a warning line says when a model's speed is off by
more than 2x from the README's idle-host figure (then the run measured the
machine, not the model).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/calibration.py, also when loaded by path
import calibration  # noqa: E402  first, before torch: OMP_WAIT_POLICY is read when torch loads libgomp

import argparse
import base64
import io
import json
import statistics
import urllib.request
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.config import parse_config
from mlflow_ddsp.demo_data import VOICES, synthesize_clip
from mlflow_ddsp.features.encoders.fairseq_hubert import FairseqHubert, FairseqHubertConfig, init_bert_params_
from mlflow_ddsp.features.encoders.logmel import LogMel
from mlflow_ddsp.audio import resample
from mlflow_ddsp.inference import VoiceConverter
from mlflow_ddsp.testing.server import LocalModelServer
from mlflow_ddsp.models import build_model_from_config
from mlflow_ddsp.serving.model_files import pyfunc_files
from mlflow_ddsp.serving.payload import wav_base64
from mlflow_ddsp.subnormals import flushed_subnormals
from mlflow_ddsp.store.location import prepare_store

SAMPLING_RATE = 44100
#: Real-time factors of a 10 s clip in the README's "Measured" (idle 2-core Intel Xeon; an AMD EPYC is within 2x).
EXPECTED_RTF = {"small": 48.5, "fp32": 11.4, "int8": 25.3}
PHRASE_SECONDS = (4.0, 7.0)
PAUSE_SECONDS = (0.4, 1.2)


def synthetic_singing(seconds: float, sample_rate: int = SAMPLING_RATE, seed: int = 0) -> np.ndarray:
    """``[round(seconds * sample_rate)]`` float32: sung phrases of 4-7 s separated by pauses.

    The pauses are the demo data's -80 dB noise floor, so the slicer (-40 dB) cuts
    there as it would in a real recording.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    parts, total = [], 0
    while total < n:
        phrase = synthesize_clip(float(rng.uniform(*PHRASE_SECONDS)), VOICES[1], rng, sample_rate)
        pause = (1e-4 * rng.standard_normal(int(rng.uniform(*PAUSE_SECONDS) * sample_rate))).astype(np.float32)
        parts += [phrase, pause]
        total += phrase.size + pause.size
    return np.concatenate(parts)[:n]


@dataclass
class Measurement:
    """Timed conversions of one clip.

    Attributes:
        seconds: audio duration.
        walls: wall seconds of each timed run.
        stages: median seconds per stage (``Conversion.timings`` keys).
        segments: how many segments the clip was sliced into.
    """

    seconds: float
    walls: list[float]
    stages: dict[str, float]
    segments: int

    @property
    def rtf(self) -> float:
        """Audio seconds per wall second (median run)."""
        return self.seconds / statistics.median(self.walls)

    def split(self) -> str:
        """``f0 / units / synthesis / other`` as seconds and shares of the median run."""
        wall = statistics.median(self.walls)
        other = wall - sum(self.stages[k] for k in ("f0", "units", "synthesis"))
        parts = [(k, self.stages[k]) for k in ("f0", "units", "synthesis")] + [("other", max(other, 0.0))]
        return ", ".join(f"{name} {sec:.3f} s ({100 * sec / wall:.0f}%)" for name, sec in parts)


def measure_in_process_detailed(
    converter: VoiceConverter, seconds: float, *, repeats: int = 3, seed: int = 0
) -> Measurement:
    """Convert a ``seconds``-long synthetic clip ``repeats`` times after a warm-up run."""
    audio = synthetic_singing(seconds, converter.sample_rate, seed)
    converter.convert(audio, converter.sample_rate, seed=seed)  # warm-up
    walls, runs = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        result = converter.convert_detailed(audio, converter.sample_rate, seed=seed)
        walls.append(time.perf_counter() - started)
        runs.append(result)
    stages = {key: statistics.median(r.timings[key] for r in runs) for key in runs[0].timings}
    return Measurement(seconds=seconds, walls=walls, stages=stages, segments=len(runs[0].segments))


def measure_interleaved(
    converters: dict[str, VoiceConverter], seconds: float, *, repeats: int = 3, seed: int = 0
) -> dict[str, Measurement]:
    """Like :func:`measure_in_process_detailed` for several converters, timed in turns (A, B, A, B, ...)."""
    first = next(iter(converters.values()))
    audio = synthetic_singing(seconds, first.sample_rate, seed)
    for converter in converters.values():
        converter.convert(audio, converter.sample_rate, seed=seed)  # warm-up
    walls: dict[str, list[float]] = {name: [] for name in converters}
    runs: dict[str, list] = {name: [] for name in converters}
    for _ in range(repeats):
        for name, converter in converters.items():
            started = time.perf_counter()
            result = converter.convert_detailed(audio, converter.sample_rate, seed=seed)
            walls[name].append(time.perf_counter() - started)
            runs[name].append(result)
    out = {}
    for name in converters:
        stages = {key: statistics.median(r.timings[key] for r in runs[name]) for key in runs[name][0].timings}
        out[name] = Measurement(seconds=seconds, walls=walls[name], stages=stages, segments=len(runs[name][0].segments))
    return out


def log_mel_distance(a: np.ndarray, b: np.ndarray, sample_rate: int) -> float:
    """Mean |log-mel(a) - log-mel(b)| (natural log, 128 bands at 16 kHz, 20 ms hop)."""
    mel = LogMel(16000, 320)
    with torch.inference_mode():
        ma, mb = (mel(torch.from_numpy(resample(x, sample_rate, 16000))[None]) for x in (a, b))
    return float((ma - mb).abs().mean())


def quality_guard(reference: VoiceConverter, fast: VoiceConverter, seconds: float, seed: int = 0) -> str:
    """Units cosine (mean, worst frame) and log-mel distances of ``fast`` against ``reference``."""
    sr = reference.sample_rate
    audio = synthetic_singing(seconds, sr, seed)
    with flushed_subnormals(True), torch.inference_mode():  # as VoiceConverter encodes units
        a = reference.units_encoder.encode(audio, sr, reference.block_size)[0]
        b = fast.units_encoder.encode(audio, sr, fast.block_size)[0]
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    ref_out = reference.convert(audio, sr, seed=seed)
    fast_out = fast.convert(audio, sr, seed=seed)
    other_seed = reference.convert(audio, sr, seed=seed + 1)
    return (
        f"units cosine to fp32: mean {cosine.mean():.4f} (goal >= 0.99), worst frame {cosine.min():.4f}; "
        f"log-mel distance to the fp32 conversion {log_mel_distance(fast_out, ref_out, sr):.4f} "
        f"(fp32 with another noise seed: {log_mel_distance(other_seed, ref_out, sr):.4f})"
    )


def measure_in_process(converter: VoiceConverter, seconds: float, *, repeats: int = 3) -> float:
    """Real-time factor (audio seconds / wall seconds) of converting ``seconds`` of singing."""
    return measure_in_process_detailed(converter, seconds, repeats=repeats).rtf


def serve(converter: VoiceConverter, workdir: Path, name: str) -> LocalModelServer:
    """Register the converter's model as a version and start `mlflow models serve` on it."""
    uri = f"sqlite:///{workdir}/mlflow.db"
    prepare_store(uri)
    with CheckpointQueue(name, 1, None, config=converter.cfg.to_yaml(), tracking_uri=uri, experiment="bench",
                         extra_files=pyfunc_files(converter.sample_rate)) as queue:  # fmt: skip
        version = queue.save(1, converter.model).result()
    return LocalModelServer(f"models:/{name}/{version.version}", uri, workdir / f"serve-{name}.log").start()


def measure_http(url: str, seconds: float, sample_rate: int, *, repeats: int = 3, seed: int = 0) -> float:
    """Real-time factor of POSTing a ``seconds``-long clip as base64 WAV and decoding the answer."""
    import soundfile as sf

    body = json.dumps({"dataframe_records": [{"audio_base64": wav_base64(synthetic_singing(seconds, sample_rate, seed),
                                                                          sample_rate)}]}).encode()  # fmt: skip

    def once() -> float:
        request = urllib.request.Request(url + "/invocations", data=body, headers={"Content-Type": "application/json"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as response:
            answer = json.loads(response.read())["predictions"][0]
        audio, _ = sf.read(io.BytesIO(base64.b64decode(answer["audio_base64"])))
        wall = time.perf_counter() - started
        assert abs(audio.shape[0] - seconds * answer["sample_rate"]) <= 1024, "wrong output length"
        return wall

    once()  # warm-up, as in process
    return seconds / statistics.median(once() for _ in range(repeats))


def write_random_contentvec(path: Path, seed: int = 0) -> Path:
    """A full-size fairseq HuBERT-base / ContentVec checkpoint with random weights.

    Same layout as the released ``checkpoint_best_legacy_500.pt`` (weights under
    ``'model'``, architecture under ``'cfg'['model']``, a 256-wide ``final_proj``),
    so it loads through the same code path; only the weights are untrained.
    """
    torch.manual_seed(seed)
    model = init_bert_params_(FairseqHubert(FairseqHubertConfig(), final_proj_dim=256))
    cfg = {"_name": "hubert", "encoder_layers": 12, "encoder_embed_dim": 768, "final_dim": 256}
    torch.save({"model": model.state_dict(), "cfg": {"model": cfg, "task": {"sample_rate": 16000}}}, path)
    return path


def small_converter() -> VoiceConverter:
    """CombSubFast, 128 unit channels, ``logmel`` encoder."""
    cfg = parse_config({"data": {"encoder": "logmel", "encoder_out_channels": 128}, "device": "cpu"})
    torch.manual_seed(0)
    return VoiceConverter(build_model_from_config(cfg), cfg)


def full_converter(workdir: Path, precision: str = "auto", model=None) -> VoiceConverter:
    """CombSubFast, 768 unit channels, a full-size ``contentvec768l12`` with random weights.

    ``model``: reuse that synthesiser (to compare encoder precisions on one model).
    """
    ckpt = workdir / "checkpoint_best_legacy_500.pt"
    if not ckpt.exists():
        write_random_contentvec(ckpt)
    cfg = parse_config({"data": {"encoder": "contentvec768l12", "encoder_ckpt": str(ckpt)}, "device": "cpu"})
    torch.manual_seed(0)
    return VoiceConverter(model or build_model_from_config(cfg), cfg, encoder_precision=precision)


MODELS = {
    "small": ("CombSubFast n_unit=128, logmel", lambda _: small_converter()),
    "full": ("CombSubFast n_unit=768, contentvec768l12 (full-size HuBERT, random weights)", full_converter),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0], help="clip lengths")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["small", "full"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per clip (median reported)")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP measurement")
    parser.add_argument("--precisions", nargs="+", choices=["auto", "fp32", "int8"], default=["fp32", "auto"],
                        help="encoder precisions of 'full', measured interleaved (the first is the guard's reference)")  # fmt: skip
    args = parser.parse_args(argv)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; machine: {calibration.machine()}")
    with tempfile.TemporaryDirectory(prefix="serve-latency-") as tmp:
        for name in args.models:
            title, build = MODELS[name]
            converter = build(Path(tmp))
            print(f"\n{name}: {title}")
            if name == "full":
                converters = {p: full_converter(Path(tmp), p, converter.model) for p in args.precisions}
                labels = {p: f"{p}={c.units_encoder.precision}" if p == "auto" else p for p, c in converters.items()}
                for seconds in args.seconds:
                    ms = measure_interleaved(converters, seconds, repeats=args.repeats)
                    for p, m in ms.items():
                        spread = f"{m.seconds / max(m.walls):.1f}-{m.seconds / min(m.walls):.1f}x"
                        print(
                            f"  in process {seconds:5.0f} s clip, {m.segments} segments, encoder {labels[p]:9}: "
                            f"{m.rtf:6.1f}x faster than real time (runs {spread}); {m.split()}",
                            flush=True,
                        )
                        kind = converters[p].units_encoder.precision
                        if kind in EXPECTED_RTF:
                            calibration.check(f"full ({kind}) conversion of {seconds:g} s", m.rtf, EXPECTED_RTF[kind],
                                              "x real time", source="README, 10 s clip", higher_is_faster=True)  # fmt: skip
                    ref, *others = args.precisions
                    for p in others:
                        ratio = statistics.median(
                            a / b for a, b in zip(ms[ref].walls, ms[p].walls)
                        )
                        print(f"    {labels[p]} / {ref} speed: {ratio:.2f}x (median of the interleaved pairs)")
                        print(f"    quality {labels[p]} vs {ref}: {quality_guard(converters[ref], converters[p], seconds)}")
                converter = converters[args.precisions[-1]]
            for seconds in ([] if name == "full" else args.seconds):
                m = measure_in_process_detailed(converter, seconds, repeats=args.repeats)
                spread = f"{m.seconds / max(m.walls):.1f}-{m.seconds / min(m.walls):.1f}x"
                print(
                    f"  in process {seconds:5.0f} s clip, {m.segments} segments: {m.rtf:6.1f}x faster than real "
                    f"time (runs {spread}); {m.split()}",
                    flush=True,
                )
                calibration.check(f"{name} conversion of {seconds:g} s", m.rtf, EXPECTED_RTF[name], "x real time",
                                  source="README, 10 s clip", higher_is_faster=True)  # fmt: skip
            if args.no_http:
                continue
            with serve(converter, Path(tmp), name) as server:
                for seconds in args.seconds:
                    rtf = measure_http(server.url, seconds, converter.sample_rate, repeats=args.repeats)
                    print(f"  over HTTP  {seconds:5.0f} s clip: {rtf:6.1f}x faster than real time", flush=True)


if __name__ == "__main__":
    main()
