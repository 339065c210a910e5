"""Training commands: train, demo."""

from __future__ import annotations

import signal

import click

from .group import main
from .options import set_option


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="DDSP-SVC config yaml (an upstream configs/*.yaml works unchanged).")  # fmt: skip
@set_option
@click.option("--init-from", metavar="MODEL_URI|FILE", default=None,
              help="Start from this pinned version (models:/NAME/7), or an upstream checkpoint file such as a "
              "pretrained model_0.pt (loaded non-strictly, as upstream does), instead of resuming; used only while "
              "the registered model has no checkpoint of its own.")  # fmt: skip
@click.option("--takeover", type=click.BOOL, is_flag=False, flag_value=True, default=False,
              help="Take the registered model's writer lease from a live process (also --takeover true|false).")  # fmt: skip
@click.option("--new-run", is_flag=True, default=False,
              help="Log to a new MLflow run. By default a resumed training continues its own run (same run id) "
              "unless that run is FINISHED; a run stopped by Ctrl-C/SIGTERM is FINISHED with the tag "
              "mlflow_ddsp.stopped_by and is continued.")  # fmt: skip
@click.pass_context
def train(ctx: click.Context, config_path: str, overrides: tuple[str, ...], init_from: str | None, takeover: bool,
          new_run: bool) -> None:  # fmt: skip
    """Train a DDSP-SVC model, tracked in MLflow, checkpoints in the model registry.

    Resumes from the registered model's 'rolling' alias when it exists (on any
    machine that reaches the tracking server). Every train.interval_val steps it
    validates, logs metrics, a spectrogram and audio, and saves a checkpoint;
    Ctrl-C or SIGTERM saves the current step before exiting (exit status 130 / 143).
    One training is one MLflow run: a resume continues the run it resumes (--new-run: a new one).
    Run `mlflow-ddsp preprocess -c CONFIG` first. Data parallel:
    `torchrun --nproc-per-node N -m mlflow_ddsp train -c CONFIG` (rank 0 logs and saves;
    train.batch_size is per process).
    """
    from ..training.session import train as run_training

    result = run_training(
        config_path, overrides, tracking_uri=ctx.obj["tracking_uri"], takeover=takeover, init_from=init_from or None,
        new_run=new_run,
    )
    if result.is_main:  # under torchrun, one summary (from rank 0)
        click.echo(summary(result))
    if result.stopped_by:
        ctx.exit(128 + signal.Signals[result.stopped_by].value)


def summary(result) -> str:
    """The last line of `train`: what was trained, and where its checkpoints are."""
    trained = f"trained {result.registered_model} from step {result.start_step} to {result.final_step} (run {result.run_id})"
    if result.final_step == result.start_step and not result.stopped_by:
        trained = (f"no step trained: {result.registered_model} is at step {result.start_step}, at or past "
                   f"train.max_steps (run {result.run_id}); raise it with --set train.max_steps=N")  # fmt: skip
    if result.left_in_spool:  # the server did not answer at the end: they are not in the registry yet
        return (f"{trained}; not committed yet: {result.left_in_spool} (the tracking server did not answer); "
                "the next `mlflow-ddsp train` of this model on this machine commits them first")  # fmt: skip
    return f"{trained}; `mlflow-ddsp versions {result.registered_model}` lists its checkpoints"


@main.command()
@click.option("--workdir", default="demo", show_default=True, help="Where the demo dataset is written.")
@click.option("--config", "config_path", default="projects/demo/config.yaml", show_default=True,
              help="The demo config (relative to the mlflow-ddsp checkout).")  # fmt: skip
@click.option("--max-steps", type=int, default=None, help="Training steps (default: the config's train.max_steps).")
@click.pass_context
def demo(ctx: click.Context, workdir: str, config_path: str, max_steps: int | None) -> None:
    """Run everything on a small synthetic dataset: data, preprocess, train, versions.

    The MLflow Project's main entry point (`mlflow run . --env-manager local`).
    Synthesizes two sung voices, extracts features, trains the small CPU config
    through several validation and force-save steps, then prints the registered
    versions and how to open the MLflow UI. A few minutes on 2 CPU cores.
    """
    from ..demo import run_demo, ui_hint
    from ..destinations import check_output_dir
    from ..store.location import resolve_tracking_uri
    from .registry import versions

    check_output_dir(workdir, "--workdir")  # before synthesizing, preprocessing or training anything
    cfg, result = run_demo(workdir, config_path, max_steps=max_steps, tracking_uri=ctx.obj["tracking_uri"])
    click.echo(f"\ntrained {result.registered_model} to step {result.final_step} (run {result.run_id})\n")
    ctx.invoke(versions, name=result.registered_model, alias=cfg.mlflow.alias, as_json=False, verify_bytes=True)
    uri = resolve_tracking_uri(ctx.obj["tracking_uri"])
    click.echo(f"\nLook at the runs, metrics, spectrograms, audio and versions:\n  {ui_hint(uri)}")
    click.echo(f"Convert a clip with the newest checkpoint:\n  mlflow-ddsp infer -m models:/{result.registered_model}@"
               f"{cfg.mlflow.alias} -i {workdir}/val/audio/1/val_00.wav -o converted.wav --spk-id 2")  # fmt: skip
