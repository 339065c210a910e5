"""Client command: convert (a file of any length through a served version)."""

from __future__ import annotations

import click

from .group import main


@main.command()
@click.option("--url", required=True, metavar="http://HOST:PORT",
              help="The server: `mlflow-ddsp serve` (or `mlflow models serve`) of a version, e.g. http://127.0.0.1:5001.")  # fmt: skip
@click.option("-i", "--input", "input_path", required=True, metavar="IN.wav", type=click.Path(dir_okay=False),
              help="Audio to convert: any length, any rate (mixed to mono; WAV, FLAC, OGG...).")  # fmt: skip
@click.option("-o", "--output", "output_path", required=True, metavar="OUT.wav", help="Where to write the result (WAV at the model's rate).")
@click.option("-k", "--key", type=float, default=None, help="Pitch shift in semitones (request param key; default 0).")
@click.option("--spk-id", type=int, default=None, help="Target speaker id, 1..model.n_spk (default 1).")
@click.option("--spk-mix", default=None, metavar="ID:W,...", help="Blend speakers instead, e.g. '1:0.5,2:0.5'.")
@click.option("--f0-extractor", default=None, metavar="NAME", help="An f0 extractor the server allows (default: the model's).")
@click.option("--threshold", type=float, default=None, help="Mute the output where the input is below this level (dB; default -60).")
@click.option("--formant-shift", type=float, default=None, help="Formant shift in semitones (models trained with model.use_pitch_aug).")
@click.option("--method", default=None, metavar="NAME", help="RectifiedFlow: euler or rk4; DiffusionFast: dpm-solver, ddim, pndm or unipc.")
@click.option("--infer-step", type=int, default=None, help="RectifiedFlow: sampling steps.")
@click.option("--t-start", type=float, default=None, help="RectifiedFlow: flow time to start from.")
@click.option("--k-step", type=int, default=None, help="DiffusionFast: diffusion steps.")
@click.option("--speedup", type=int, default=None, help="DiffusionFast: k_step // speedup solver steps.")
@click.option("--max-seconds", type=float, default=None, metavar="S",
              help="Longest piece per request (default 120, the server's default MLFLOW_DDSP_MAX_SECONDS). A longer "
              "clip is cut at silences; a server that takes less says so and the rest is cut to fit.")  # fmt: skip
@click.option("--timeout", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Seconds to wait for one answer (the server gives up after its own --timeout: HTTP 504).")  # fmt: skip
def convert(url: str, input_path: str, output_path: str, key: float | None, spk_id: int | None, spk_mix: str | None,
            f0_extractor: str | None, threshold: float | None, formant_shift: float | None, method: str | None,
            infer_step: int | None, t_start: float | None, k_step: int | None, speedup: int | None,
            max_seconds: float | None, timeout: float) -> None:  # fmt: skip
    """Convert IN.wav with a served version and write OUT.wav: no length limit.

    Posts the audio to URL/invocations (as the request body, never on a command
    line), in pieces cut at silences when it is longer than the server takes per
    request, and joins the answers. Prints one line: the lengths, the requests
    and the time. The server down, a refused request (400), a busy server (503)
    or one past its timeout (504): one line, exit 1, nothing written.
    """
    import logging

    from ..destinations import check_output_file
    from ..serving.client import convert_file

    log = logging.getLogger("mlflow_ddsp")
    check_output_file(output_path, "-o/--output")  # before any request
    given = {"key": key, "spk_id": spk_id, "spk_mix": spk_mix, "f0_extractor": f0_extractor, "threshold": threshold,
             "formant_shift": formant_shift, "method": method, "infer_step": infer_step, "t_start": t_start,
             "k_step": k_step, "speedup": speedup}  # fmt: skip
    params = {name: value for name, value in given.items() if value is not None}
    result = convert_file(url, input_path, output_path, params, max_seconds=max_seconds, timeout=timeout,
                          on_split=lambda note: log.info("%s", note),
                          on_piece=lambda done, total, at: log.info("piece %d/%d converted (to %.1f s)", done, total, at)
                          if total > 1 else None)  # fmt: skip
    click.echo(
        f"{result.output}: {result.seconds_in:.2f} s in, {result.seconds_out:.2f} s out at {result.sample_rate} Hz, "
        f"{result.requests} request(s) of at most {result.piece_seconds:.1f} s, {result.wall_seconds:.2f} s"
    )
