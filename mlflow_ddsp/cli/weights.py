"""Weights command: check-weights (which pretrained files a config needs; present? loads?)."""

from __future__ import annotations

import click

from .group import main
from .options import human_size, set_option


@main.command("check-weights")
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="The config you will preprocess and train with (upstream's configs work as they are).")  # fmt: skip
@set_option
@click.option("--train-only", is_flag=True,
              help="Only what preprocessing and training need: the vocoder's weights (for validation audio, "
              "converting and serving) may be missing.")  # fmt: skip
@click.option("--no-load", is_flag=True, help="Only look for the files and hash them; do not load them.")
@click.pass_context
def check_weights_command(ctx: click.Context, config_path: str, overrides: tuple[str, ...], train_only: bool,
                          no_load: bool) -> None:  # fmt: skip
    """Tell which weight files CONFIG needs, whether each is here, its size and sha256, and whether it loads.

    Run it before preprocessing. Needed: the content encoder's checkpoint
    (data.encoder_ckpt; none for logmel), RMVPE's model.pt for data.f0_extractor
    rmvpe (data.f0_ckpt; fcpe and crepe come with their wheels), and for
    RectifiedFlow / DiffusionFast the NSF-HiFiGAN vocoder (vocoder.ckpt and its
    config.json). Each file is loaded by the loader preprocessing and conversion
    use. Relative paths are from the current folder. Exit 1 when something
    needed is missing or does not load: one line per problem, naming the key
    and where the file comes from (see the README, "Weights: where they come from").
    """
    from ..config import load_config
    from ..weights import check_weights

    cfg = load_config(config_path, overrides)
    checks = check_weights(cfg, load=not no_load, train_only=train_only)
    if not checks:
        click.echo(f"{config_path}: no weight files needed (data.encoder {cfg.data.encoder}, data.f0_extractor "
                   f"{cfg.data.f0_extractor}, model.type {cfg.model.type})")  # fmt: skip
        return
    problems = []
    for check in checks:
        state = "ok" if check.ok else ("optional" if check.optional else "MISSING" if check.size is None else "BROKEN")
        where = str(check.path) if check.path is not None else "(a Python package)"
        click.echo(f"{state:8}  {check.key:18}  {check.what}")
        click.echo(f"          {where}  {human_size(check.size) if check.size is not None else '-'}"
                   f"{'  sha256 ' + check.sha256 if check.sha256 else ''}")  # fmt: skip
        click.echo(f"          needed by: {check.needed_for}; {check.detail}")
        if not check.ok and not check.optional:
            problems.append(check)
    for check in problems:
        detail = check.detail if check.detail.startswith(check.key) else f"{check.key}: {check.detail}"
        click.echo(f"error: {detail}", err=True)
    if problems:
        ctx.exit(1)
    click.echo(f"{config_path}: every weight file it needs is here and loads" if not no_load
               else f"{config_path}: every weight file it needs is here (not loaded: --no-load)")  # fmt: skip
