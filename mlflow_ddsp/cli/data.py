"""Data commands: demo-data, preprocess."""

from __future__ import annotations

import click

from .group import main
from .options import set_option


@main.command("demo-data")
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--seconds-per-speaker",
    type=click.FloatRange(min=2.5),
    default=None,
    metavar="SECONDS",
    help="Training audio per speaker, in clips of 3.5-6 s.  [default: 75]",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same files.")
def demo_data(directory: str, seconds_per_speaker: float | None, seed: int) -> None:
    """Synthesize a small two-singer dataset into DIRECTORY for demos and tests.

    Writes DIRECTORY/train/audio/{1,2}/*.wav (the training audio of speakers 1
    and 2) and DIRECTORY/val/audio/{1,2}/*.wav (two 3 s clips each): sung notes
    with vibrato, glides, vowel changes, breaths and pauses, 44.1 kHz. The two
    voices differ in pitch range, formants and brightness. Point data.train_path
    and data.valid_path at DIRECTORY/train and DIRECTORY/val (model.n_spk: 2),
    then run `mlflow-ddsp preprocess`.
    """
    from ..demo_data import DEFAULT_SECONDS_PER_SPEAKER, make_demo_dataset
    from ..destinations import check_output_dir

    check_output_dir(directory, "DIRECTORY")

    seconds = DEFAULT_SECONDS_PER_SPEAKER if seconds_per_speaker is None else seconds_per_speaker
    dataset = make_demo_dataset(directory, seconds_per_speaker=seconds, seed=seed)
    for line in dataset.lines():
        click.echo(line)
    click.echo(
        f"{dataset.n_files} files, {dataset.total_seconds:.1f} s at {dataset.sampling_rate} Hz; next: set "
        f"data.train_path={dataset.root / 'train'} data.valid_path={dataset.root / 'val'} model.n_spk=2 "
        "and run `mlflow-ddsp preprocess -c CONFIG`"
    )


@main.command("preprocess")
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="DDSP-SVC config yaml; data.* says where the recordings are and which features to extract.")  # fmt: skip
@set_option
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    help="Worker processes, each loading the encoder once; 1 works in this process; "
    "0 (the default): the usable cores, at most 4.",
)
@click.option("--strict", type=click.BOOL, is_flag=False, flag_value=True, default=False,
              help="Refuse, before extracting anything, recordings that cannot fill the model's band: a sample rate "
              "below data.sampling_rate, or content that stops below half its Nyquist frequency (also --strict "
              "true|false).")  # fmt: skip
@click.pass_context
def preprocess_command(ctx: click.Context, config_path: str, overrides: tuple[str, ...], workers: int,
                       strict: bool) -> None:  # fmt: skip
    """Extract f0, volume and content units for data.train_path and data.valid_path.

    Reads every recording <path>/audio/<name> and writes <path>/f0/<name>.npy,
    volume/<name>.npy and units/<name>.npy as upstream DDSP-SVC does, with
    data.f0_extractor and data.encoder.
    Recordings without any voiced frame are moved to <path>/skip/. Unreadable or
    empty recordings are reported by name and the others are still processed;
    the exit status is then 1.

    Running it again only processes what changed: recordings whose features were
    made from the same bytes with the same feature settings are skipped (recorded
    in <path>/.mlflow_ddsp_preprocess.json); changing a feature setting
    (sampling rate, block size, f0 extractor or range, encoder) redoes all.

    Recordings that cannot fill the model's band (recorded at a lower rate than
    data.sampling_rate, or low-passed: an 8 kHz phone call or a 16 kHz MP3 gives a
    model with nothing above 4 or 8 kHz) are named in a warning and listed in
    <path>/band_limited.txt; --strict refuses them before any work.
    """
    from ..config import load_config
    from ..preprocess import preprocess

    cfg = load_config(config_path, overrides)
    report = preprocess(cfg, workers=workers or None, strict=strict)
    for split in report.splits:
        for rel in split.moved_to_skip:
            click.echo(f"moved to {split.root / 'skip' / rel}: no voiced frame")
    for line in report.lines():
        click.echo(line)
    for _, message in report.failed:
        click.echo(f"failed: {message}", err=True)
    if not report.ok:
        click.echo(f"{len(report.failed)} recording(s) failed; fix or remove them and run again", err=True)
        ctx.exit(1)


