"""The ``mlflow-ddsp`` command line: a thin layer over the library.

Every command reports mlflow-ddsp's own errors as one line on stderr and exits
non-zero; tracebacks are for bugs only.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import signal
import sys
from typing import Any

import click

from .errors import MlflowDdspError

__all__ = ["main"]

log = logging.getLogger("mlflow_ddsp")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(message)s" if not verbose else "%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # MLflow and its dependencies are chatty at INFO (database migrations, retries).
    # MLflow re-applies MLFLOW_LOGGING_LEVEL whenever it is imported, so set that too.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if verbose else "WARNING")
    for noisy in ("mlflow", "alembic", "urllib3", "git", "matplotlib", "numba"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


class _Group(click.Group):
    """Turns MlflowDdspError into a one-line message and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MlflowDdspError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    default=None,
    metavar="URI",
    help="MLflow tracking server or store. Default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
    "in the current directory (artifacts in ./mlartifacts).",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging, including MLflow's own.")
@click.version_option(package_name="mlflow-ddsp")
@click.pass_context
def main(ctx: click.Context, tracking_uri: str | None, verbose: bool) -> None:
    """Train, keep, compare and serve DDSP-SVC voice models on MLflow.

    Checkpoints live in the MLflow model registry: the alias 'rolling' points at
    the newest one, force-saved versions are kept forever.
    """
    _setup_logging(verbose)
    # MLflow draws a progress bar per downloaded file; ours cover whole operations.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    ctx.obj = {"tracking_uri": tracking_uri}


def _store(ctx: click.Context):
    from .checkpoint import RegistryStore

    return RegistryStore(ctx.obj["tracking_uri"])


_alias_option = click.option(
    "--alias", default="rolling", show_default=True, help="The rolling alias the queue maintains."
)


def _human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def _created(ms: int) -> str:
    return _dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _progress(label: str):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (CI logs, pipes).
    return lambda items: tqdm(items, desc=label, unit="version", file=sys.stderr, leave=False, disable=None)


@main.command()
@click.argument("name")
@_alias_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per version) instead of a table.")
@click.option("--no-verify", is_flag=True, help="Skip downloading versions to check their sha256.")
@click.pass_context
def versions(ctx: click.Context, name: str, alias: str, as_json: bool, no_verify: bool) -> None:
    """List the checkpoint versions of registered model NAME.

    Columns: version, step, kind (rolling | force_saved), aliases, size of the
    checkpoint file, whether its bytes still match their sha256, the training
    run, and when it was registered.
    """
    from .checkpoint.audit import audit_queue

    audit = audit_queue(_store(ctx), name, alias, deep=not no_verify, progress=_progress("verifying"))
    rows = []
    for a in audit.versions:
        v = a.version
        rows.append(
            {
                "version": v.version,
                "step": v.step,
                "kind": v.kind or "(not mlflow-ddsp)",
                "aliases": a.aliases,
                "size_bytes": v.size,
                "sha256_ok": None if no_verify else a.intact,
                "run_id": v.run_id,
                "created": _created(v.created_ms),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"{name} has no versions")
        return
    table = [("VERSION", "STEP", "KIND", "ALIASES", "SIZE", "SHA256", "RUN", "CREATED")]
    for r in rows:
        ok = {None: "-", True: "ok", False: "MISMATCH"}[r["sha256_ok"]]
        table.append(
            (
                str(r["version"]),
                "-" if r["step"] is None else str(r["step"]),
                r["kind"],
                ",".join(r["aliases"]) or "-",
                _human_size(r["size_bytes"]),
                ok,
                (r["run_id"] or "-")[:12],
                r["created"],
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@main.command()
@click.argument("name")
@_alias_option
@click.pass_context
def verify(ctx: click.Context, name: str, alias: str) -> None:
    """Check every version of NAME byte for byte against its registration.

    Downloads each version and compares every file's sha256 with the manifest
    whose own sha256 was recorded at registration; also checks that the alias
    points at the newest intact checkpoint and that there is at most one rolling
    version and no orphaned files. Exits 1 on any mismatch.
    """
    from .checkpoint.audit import audit_queue

    audit = audit_queue(_store(ctx), name, alias, deep=True, progress=_progress("verifying"))
    for a in audit.versions:
        status = "ok" if a.intact else "MISMATCH"
        click.echo(f"{a.version.label}: {a.version.kind or 'not written by mlflow-ddsp'}, {status}")
    if audit.ok:
        click.echo(f"{name}: {len(audit.versions)} versions verified, no problems")
        return
    for problem in audit.problems:
        click.echo(f"problem: {problem}", err=True)
    click.echo(f"{name}: {len(audit.problems)} problem(s); `mlflow-ddsp gc {name}` repairs all but damaged force-saved versions", err=True)
    ctx.exit(1)


@main.command()
@click.argument("name")
@_alias_option
@click.option("--dry-run", is_flag=True, help="Print what would be removed; change nothing.")
@click.option("--takeover", is_flag=True, help="Take the writer lease even from a live training process.")
@click.pass_context
def gc(ctx: click.Context, name: str, alias: str, dry_run: bool, takeover: bool) -> None:
    """Repair queue NAME after crashes and free orphaned checkpoint bytes.

    Removes unfinished uploads, stale rolling versions and orphaned files, and
    points the alias at the newest intact checkpoint. Force-saved versions are
    never removed. Takes the writer lease, so it refuses to run while a training
    process writes into NAME.
    """
    from .checkpoint.gc import collect
    from .checkpoint.lease import WriterLease

    store = _store(ctx)
    if not store.registered_model_exists(name):
        raise click.ClickException(f"registered model {name!r} does not exist at {store.tracking_uri}")
    lease = WriterLease(store, name, takeover=takeover)
    lease.acquire()
    try:
        plan = collect(store, name, alias, dry_run=dry_run)
    finally:
        lease.release()
    lines = plan.describe(alias)
    if not lines:
        click.echo(f"{name}: nothing to do")
        return
    prefix = "would " if dry_run else ""
    for line in lines:
        click.echo(f"{prefix}{line}")


def _split_overrides(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """``--set a=1 --set 'b=2;c=3'`` -> ('a=1', 'b=2', 'c=3'); empty values are dropped (MLproject default)."""
    return tuple(item.strip() for value in values for item in value.split(";") if item.strip())


_set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_split_overrides,
    help="Override a config value, e.g. --set train.lr=1e-4 --set train.max_steps=500 "
    "(repeatable, or several pairs separated by ';').",
)


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="DDSP-SVC config yaml (an upstream configs/*.yaml works unchanged).")  # fmt: skip
@_set_option
@click.option("--init-from", metavar="MODEL_URI", default=None,
              help="Start from this pinned version (models:/NAME/7) instead of resuming, e.g. to fine-tune.")  # fmt: skip
@click.option("--takeover", type=click.BOOL, is_flag=False, flag_value=True, default=False,
              help="Take the registered model's writer lease from a live process (also --takeover true|false).")  # fmt: skip
@click.pass_context
def train(ctx: click.Context, config_path: str, overrides: tuple[str, ...], init_from: str | None, takeover: bool) -> None:
    """Train a DDSP-SVC model, tracked in MLflow, checkpoints in the model registry.

    Resumes from the registered model's 'rolling' alias when it exists (on any
    machine that reaches the tracking server). Every train.interval_val steps it
    validates, logs metrics, a spectrogram and audio, and saves a checkpoint;
    Ctrl-C or SIGTERM saves the current step before exiting (exit status 130 / 143).
    Run `mlflow-ddsp preprocess -c CONFIG` first.
    """
    from .training.session import train as run_training

    result = run_training(
        config_path, overrides, tracking_uri=ctx.obj["tracking_uri"], takeover=takeover, init_from=init_from or None
    )
    click.echo(
        f"trained {result.registered_model} from step {result.start_step} to {result.final_step} "
        f"(run {result.run_id}); `mlflow-ddsp versions {result.registered_model}` lists its checkpoints"
    )
    if result.stopped_by:
        ctx.exit(128 + signal.Signals[result.stopped_by].value)


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
    from .demo_data import DEFAULT_SECONDS_PER_SPEAKER, make_demo_dataset

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
@_set_option
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    help="Worker processes, each loading the encoder once; 1 works in this process; "
    "0 (the default): the usable cores, at most 4.",
)
@click.pass_context
def preprocess_command(ctx: click.Context, config_path: str, overrides: tuple[str, ...], workers: int) -> None:
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
    """
    from .config import load_config
    from .preprocess import preprocess

    cfg = load_config(config_path, overrides)
    report = preprocess(cfg, workers=workers or None)
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


@main.command()
@click.option("-m", "--model", "model_uri", required=True, metavar="MODEL_URI",
              help="models:/NAME/VERSION, models:/NAME@ALIAS (e.g. @rolling) or models:/NAME/latest.")  # fmt: skip
@click.option("-i", "--input", "input_path", required=True, metavar="IN.wav", help="Audio to convert (any rate, mixed to mono).")
@click.option("-o", "--output", "output_path", required=True, metavar="OUT.wav", help="Where to write the result (at the model's rate).")
@click.option("-k", "--key", type=float, default=0.0, show_default=True, help="Pitch shift in semitones (-36..36).")
@click.option("--spk-id", type=int, default=1, show_default=True, help="Target speaker id, 1..model.n_spk.")
@click.option("--spk-mix", default=None, metavar="ID:W,...", help="Blend speakers instead, e.g. '1:0.5,2:0.5' (overrides --spk-id).")
@click.option("--f0-extractor", default=None, metavar="NAME", help="parselmouth, dio or harvest. Default: the model's data.f0_extractor.")
@click.option("--threshold", type=float, default=-60.0, show_default=True, help="Mute the output where the input is below this level (dB).")
@click.option("--encoder-ckpt", default=None, metavar="PATH", help="Content-encoder checkpoint on this machine (overrides data.encoder_ckpt).")
@click.option("--device", default="cpu", show_default=True, help="Torch device: cpu, cuda, cuda:N or mps.")
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
) -> None:
    """Convert a singing voice with a registered checkpoint (upstream's main.py).

    Resolves MODEL_URI to a concrete version, downloads it and checks its
    sha256, then converts IN.wav: f0 shifted by KEY semitones, long inputs split
    at silences and cross-faded, output muted below --threshold. Prints one line
    with the version, the durations and the speed.
    """
    import time

    from tqdm import tqdm

    from .audio import load_audio, save_wav
    from .checkpoint.reader import CheckpointReader, parse_model_uri
    from .inference import VoiceConverter, parse_speaker_mix

    mix = parse_speaker_mix(spk_mix) if spk_mix is not None else None
    ref = parse_model_uri(model_uri)
    restored = CheckpointReader(ref.name, tracking_uri=ctx.obj["tracking_uri"]).fetch(model_uri)
    label = restored.version.label
    log.info("%s resolved to %s (step %d), sha256 verified", model_uri, label, restored.step)
    converter = VoiceConverter.from_checkpoint(
        restored.checkpoint, restored.config_yaml, device=device, encoder_ckpt=encoder_ckpt
    )
    rate = converter.sample_rate
    audio = load_audio(input_path, rate)
    bar: tqdm | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:  # disable=None: no bar when stderr is not a terminal
            bar = tqdm(total=total, desc="converting", unit="segment", file=sys.stderr, leave=False, disable=None)
        bar.update(done - bar.n)

    started = time.perf_counter()
    try:
        result = converter.convert(
            audio, rate, key=key, spk_id=spk_id, spk_mix=mix, f0_extractor=f0_extractor,
            threshold_db=threshold, progress=progress,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - started
    save_wav(output_path, result, rate)
    seconds_in, seconds_out = audio.shape[0] / rate, result.shape[0] / rate
    click.echo(
        f"{output_path}: {label} (step {restored.step}), {seconds_in:.2f} s in, {seconds_out:.2f} s out "
        f"at {rate} Hz, converted in {wall:.2f} s = {seconds_in / max(wall, 1e-9):.1f}x faster than real time"
    )
