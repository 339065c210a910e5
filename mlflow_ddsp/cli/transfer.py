"""Transfer commands: import and export upstream DDSP-SVC experiment folders."""

from __future__ import annotations

import click

from .group import main


@main.command("import")
@click.argument("expdir", type=click.Path(exists=True, file_okay=False))
@click.option("--name", required=True, help="Registered model to import into.")
@click.pass_context
def import_command(ctx: click.Context, expdir: str, name: str) -> None:
    """Register an upstream experiment folder (model_<N>.pt + config.yaml) as versions of NAME.

    Older checkpoints become force-saved versions, the newest takes the rolling
    alias (force-saved too when its step is a multiple of the config's
    train.interval_force_save, as a save at that step would be); the files'
    bytes are kept exactly. Checkpoints already imported are
    skipped, so running it again is safe. A checkpoint that does not fit its
    config (model type, window size, unit channels) is refused with the reason.
    """
    from ..transfer import import_experiment

    report = import_experiment(expdir, name, tracking_uri=ctx.obj["tracking_uri"])
    for step, version, kind in report.imported:
        click.echo(f"imported model_{step}.pt as {name} v{version} ({kind})")
    for step, version in report.skipped:
        click.echo(f"skipped model_{step}.pt: already {name} v{version}")
    click.echo(f"{len(report.imported)} imported, {len(report.skipped)} already there")


@main.command("export")
@click.argument("model_uri")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Replace model_<N>.pt / config.yaml already in OUTDIR (a symlink is replaced, never written through).")
@click.pass_context
def export_command(ctx: click.Context, model_uri: str, outdir: str, force: bool) -> None:
    """Write model_<N>.pt + config.yaml of MODEL_URI into OUTDIR for upstream's tools.

    MODEL_URI is models:/NAME/VERSION or models:/NAME@ALIAS; the files are
    checked against their sha256 before they are written, each atomically.
    Files of those names already in OUTDIR are refused unless --force.
    """
    from ..transfer import export_version

    path = export_version(model_uri, outdir, tracking_uri=ctx.obj["tracking_uri"], force=force)
    click.echo(f"{path} (and config.yaml beside it)")
