"""Serving commands: infer, serve, compare."""

from __future__ import annotations

import logging
import sys

import click

from .group import main

log = logging.getLogger("mlflow_ddsp")


@main.command()
@click.option("-m", "--model", "model_uri", required=True, metavar="MODEL_URI",
              help="models:/NAME/VERSION, models:/NAME@ALIAS (e.g. @rolling) or models:/NAME/latest.")  # fmt: skip
@click.option("-i", "--input", "input_path", required=True, metavar="IN.wav", type=click.Path(exists=True, dir_okay=False),
              help="Audio to convert (any rate, mixed to mono).")  # fmt: skip
@click.option("-o", "--output", "output_path", required=True, metavar="OUT.wav", help="Where to write the result (at the model's rate).")
@click.option("-k", "--key", type=float, default=0.0, show_default=True, help="Pitch shift in semitones (-36..36).")
@click.option("--spk-id", type=int, default=1, show_default=True, help="Target speaker id, 1..model.n_spk.")
@click.option("--spk-mix", default=None, metavar="ID:W,...", help="Blend speakers instead, e.g. '1:0.5,2:0.5' (overrides --spk-id).")
@click.option("--f0-extractor", default=None, metavar="NAME", help="parselmouth, dio, harvest, fcpe, crepe, crepe-tiny or rmvpe. Default: the model's data.f0_extractor.")
@click.option("--threshold", type=float, default=-60.0, show_default=True, help="Mute the output where the input is below this level (dB).")
@click.option("--encoder-ckpt", default=None, metavar="PATH", help="Content-encoder checkpoint on this machine (overrides data.encoder_ckpt).")
@click.option("--device", default="cpu", show_default=True, help="Torch device: auto, cpu, cuda, cuda:N or mps.")
@click.option("--encoder-precision", type=click.Choice(["auto", "fp32", "int8"], case_sensitive=False), default="auto",
              show_default=True, help="Content encoder: auto = int8 on the CPU for ContentVec/HuBERT (fp32 on GPUs), "
              "fp32, or int8 (CPU only).")  # fmt: skip
@click.option("--formant-shift", type=float, default=0.0, show_default=True,
              help="Formant (timbre) shift in semitones, for models trained with model.use_pitch_aug (upstream's -fk).")  # fmt: skip
@click.option("--method", default=None, metavar="NAME",
              help="RectifiedFlow: euler or rk4; DiffusionFast: dpm-solver, ddim, pndm or unipc. Default: infer.method.")  # fmt: skip
@click.option("--infer-step", type=int, default=None, help="RectifiedFlow: sampling steps (default infer.infer_step).")
@click.option("--t-start", type=float, default=None,
              help="RectifiedFlow: flow time to start from, raised to at least model.t_start (default it).")  # fmt: skip
@click.option("--k-step", type=int, default=None, help="DiffusionFast: diffusion steps, at most model.k_step_max (default it).")
@click.option("--speedup", type=int, default=None, help="DiffusionFast: k_step // speedup solver steps (default infer.speedup).")
@click.option("--vocoder-ckpt", default=None, metavar="PATH",
              help="RectifiedFlow / DiffusionFast: NSF-HiFiGAN weights on this machine, config.json beside it "
              "(overrides vocoder.ckpt).")  # fmt: skip
@click.option("--seed", type=int, default=None, help="Seed the synthesiser's noise (the same seed, the same output).")
@click.pass_context
def infer(
    ctx: click.Context,
    model_uri: str,
    input_path: str,
    output_path: str,
    key: float,
    spk_id: int,
    spk_mix: str | None,
    f0_extractor: str | None,
    threshold: float,
    encoder_ckpt: str | None,
    device: str,
    encoder_precision: str,
    formant_shift: float,
    method: str | None,
    infer_step: int | None,
    t_start: float | None,
    k_step: int | None,
    speedup: int | None,
    vocoder_ckpt: str | None,
    seed: int | None,
) -> None:
    """Convert a singing voice with a registered checkpoint (upstream's main.py, main_reflow.py, main_diff.py).

    Resolves MODEL_URI to a concrete version, downloads it and checks its
    sha256, then converts IN.wav: f0 shifted by KEY semitones, long inputs split
    at silences and cross-faded, output muted below --threshold. Prints one line
    with the version, the durations and the speed.
    """
    import time

    from ..audio import load_audio, save_wav
    from ..checkpoint.reader import CheckpointReader, parse_model_uri
    from ..destinations import check_output_file
    from ..device import resolve_device
    from ..errors import ConfigError
    from ..inference import Sampler, VoiceConverter, parse_speaker_mix
    from ..progress import Progress
    from ..serving.dependencies import converter_files, registered_dependencies, resolve_dependencies

    torch_device = resolve_device(device, setting="--device")  # refuse before downloading anything
    check_output_file(output_path, "-o/--output")  # before the download and the conversion
    mix = parse_speaker_mix(spk_mix) if spk_mix is not None else None
    ref = parse_model_uri(model_uri)
    reader = CheckpointReader(ref.name, tracking_uri=ctx.obj["tracking_uri"])
    restored = reader.fetch(model_uri)
    label = restored.version.label
    log.info("%s resolved to %s, sha256 verified", model_uri, label)
    # the weight files its manifest records, verified (old versions: the config as it is)
    records = registered_dependencies(reader.store, restored.version)
    config = resolve_dependencies(
        reader.store, records, restored.config_yaml, label=label,
        overrides={"encoder": ("--encoder-ckpt", encoder_ckpt), "vocoder": ("--vocoder-ckpt", vocoder_ckpt)},
    )  # fmt: skip
    files = converter_files(records, config, encoder_ckpt=encoder_ckpt, vocoder_ckpt=vocoder_ckpt)
    converter = VoiceConverter.from_checkpoint(
        restored.checkpoint, config, device=torch_device, encoder_precision=encoder_precision,
        encoder_precision_key="--encoder-precision", source=f"checkpoint {label}", **files,
    )  # fmt: skip
    sampler = Sampler(method=method, infer_step=infer_step, t_start=t_start, k_step=k_step, speedup=speedup)
    if converter.vocoder is not None:
        sampler.keywords(converter.cfg)  # a bad option in one line before the audio is read
    rate = converter.sample_rate
    audio = load_audio(input_path, rate)
    bar: Progress | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:  # a bar on a terminal, else a line every MLFLOW_DDSP_PROGRESS_SECONDS
            bar = Progress("converting", total, unit="segment", leave=False)
        bar.update(done - bar.n)

    started = time.perf_counter()
    try:
        result = converter.convert(
            audio, rate, key=key, spk_id=spk_id, spk_mix=mix, f0_extractor=f0_extractor,
            threshold_db=threshold, progress=progress, formant_shift=formant_shift, sampler=sampler, seed=seed,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - started
    try:
        save_wav(output_path, result, rate)
    except OSError as exc:  # checked before converting; the file system may have changed since
        raise ConfigError(f"-o/--output {output_path} cannot be written: {exc.strerror or exc}") from exc
    seconds_in, seconds_out = audio.shape[0] / rate, result.shape[0] / rate
    click.echo(
        f"{output_path}: {label}, {seconds_in:.2f} s in, {seconds_out:.2f} s out "
        f"at {rate} Hz, converted in {wall:.2f} s = {_speed(seconds_in / max(wall, 1e-9))}"
    )


def _speed(ratio: float) -> str:
    """``12.3x faster than real time``, or ``4.2x slower than real time`` below 1."""
    if ratio >= 1:
        return f"{ratio:.1f}x faster than real time"
    return f"{1 / max(ratio, 1e-9):.1f}x slower than real time"


@main.command()
@click.option("-m", "--model", "model_uri", required=True, metavar="MODEL_URI",
              help="models:/NAME/VERSION or models:/NAME@ALIAS (pinned to its current version).")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("-p", "--port", type=int, default=5001, show_default=True)
@click.option("-t", "--timeout", type=click.IntRange(min=1), default=60, show_default=True,
              envvar="MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT",
              help="Seconds a request may take (MLflow's scoring-server timeout, also "
                   "$MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT); a request past it gets 504 and its conversion stops. "
                   "Raise it with MLFLOW_DDSP_MAX_SECONDS.")  # fmt: skip
@click.option("-w", "--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes, each with its own copy of the model (memory x N).")  # fmt: skip
@click.option("--device", envvar="MLFLOW_DDSP_DEVICE", default="cpu", show_default=True,
              help="Torch device for the served model: auto, cpu, cuda, cuda:N or mps (also $MLFLOW_DDSP_DEVICE).")  # fmt: skip
@click.pass_context
def serve(ctx: click.Context, model_uri: str, host: str, port: int, timeout: int, workers: int, device: str) -> None:
    """Serve a version over HTTP (`mlflow models serve`), pinned to a concrete version.

    An alias is resolved once, here, so the server answers with one version even
    while training moves the alias on. Every file of the version, MLmodel
    included, is downloaded and checked against the registry's sha256 record
    before MLflow reads any of it; the server then loads that verified copy.
    POST /invocations with
    {"dataframe_records": [{"audio_base64": "<WAV>"}], "params": {"key": 2}}.
    Limits, which must fit together: MLFLOW_DDSP_MAX_SECONDS (default 120) per
    clip, converted within --timeout (default 60 s; a full-size encoder on 2 CPU
    cores converts ~19x faster than real time); MLFLOW_DDSP_MAX_CONCURRENT
    (default 1) conversions per worker, further requests get 503 at once. Per
    request: MLFLOW_DDSP_MAX_REQUEST_SECONDS over all rows, MLFLOW_DDSP_MAX_ROWS
    (16), MLFLOW_DDSP_MAX_DECODED_MB, checked from the audio headers before
    decoding (400); f0 extractors a request may name: MLFLOW_DDSP_F0_EXTRACTORS.
    For longer clips raise both, e.g. MLFLOW_DDSP_MAX_SECONDS=600 with --timeout 180.
    """
    import os

    from ..device import resolve_device
    from ..checkpoint.reader import CheckpointReader, parse_model_uri
    from ..serving.resolve import fetch_servable, pin_version, serving_folder
    from ..store.location import resolve_tracking_uri

    from_env = ctx.get_parameter_source("device") == click.core.ParameterSource.ENVIRONMENT
    # Refuse here, in one line, not in the server's model load.
    resolve_device(device, setting="MLFLOW_DDSP_DEVICE" if from_env else "--device")
    reader = CheckpointReader(parse_model_uri(model_uri).name, tracking_uri=ctx.obj["tracking_uri"])
    pinned, version = pin_version(model_uri, reader=reader)
    folder = serving_folder(version.name, version.version)
    fetch_servable(pinned, folder, reader=reader)
    click.echo(f"serving {version.label} ({pinned}, verified copy in {folder}) on http://{host}:{port}/invocations",
               err=True)  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": resolve_tracking_uri(ctx.obj["tracking_uri"])}
    env["MLFLOW_DDSP_DEVICE"] = device  # the pyfunc model's load reads it
    # `mlflow models serve` runs uvicorn from this environment's bin/.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(folder), "--env-manager", "local",
               "-h", host, "-p", str(port), "-t", str(timeout), "-w", str(workers)]  # fmt: skip
    os.execve(sys.executable, command, env)


@main.command()
@click.argument("name")
@click.argument("versions", nargs=-1, type=int, required=True)
@click.option("-i", "--input", "clip", required=True, type=click.Path(exists=True, dir_okay=False), help="Clip to convert.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the results.")
@click.option("-k", "--key", type=float, default=0.0, show_default=True, help="Pitch shift in semitones.")
@click.option("--spk-id", type=int, default=1, show_default=True, help="Target speaker id.")
@click.option("--no-log", is_flag=True, help="Do not log the comparison as an MLflow run.")
@click.option("--device", default="cpu", show_default=True, help="Torch device: auto, cpu, cuda, cuda:N or mps.")
@click.option("--vocoder-ckpt", default=None, metavar="PATH",
              help="RectifiedFlow / DiffusionFast: NSF-HiFiGAN weights on this machine (overrides vocoder.ckpt).")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed, the same for every version.")
@click.pass_context
def compare(ctx: click.Context, name: str, versions: tuple[int, ...], clip: str, out_dir: str, key: float,
            spk_id: int, no_log: bool, device: str, vocoder_ckpt: str | None, seed: int) -> None:  # fmt: skip
    """Convert one clip with VERSIONS of NAME and compare them side by side.

    Writes <clip>_v<N>.wav per version, <clip>_compare.png (the input's and
    every version's spectrogram side by side) and <clip>_compare.tsv (step,
    validation loss and checkpoint size per version) into the output folder,
    prints the table, and logs them as a `compare-NAME` run in MLflow.
    """
    from pathlib import Path

    from ..compare import compare_versions
    from ..destinations import check_output_dir

    # Before any download: the folder, and every file compare writes into it (each replaced if it exists).
    stem = Path(clip).stem
    written = [f"{stem}_v{number}.wav" for number in versions] + [f"{stem}_compare.png", f"{stem}_compare.tsv"]
    check_output_dir(out_dir, "-o/--output", files=written)
    result = compare_versions(name, versions, clip, out_dir, key=key, spk_id=spk_id,
                              tracking_uri=ctx.obj["tracking_uri"], log_to_mlflow=not no_log, device=device,
                              vocoder_ckpt=vocoder_ckpt, seed=seed)  # fmt: skip
    for number, path in result.outputs.items():
        click.echo(f"v{number}: {path}")
    click.echo(f"spectrograms: {result.image}")
    for line in result.table_lines():
        click.echo(line)
    if result.run_id:
        click.echo(f"logged as run {result.run_id}")
