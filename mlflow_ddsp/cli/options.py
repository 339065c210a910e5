"""Options and helpers shared by several commands."""

from __future__ import annotations

import datetime as _dt
import sys

import click

__all__ = ["alias_option", "set_option", "human_size", "created", "progress", "open_store"]


def open_store(ctx: click.Context):
    """The store for a command about existing models: an embedded one must exist already."""
    from ..errors import CheckpointNotFoundError
    from ..store import RegistryStore
    from ..store.location import embedded_database, resolve_tracking_uri

    uri = resolve_tracking_uri(ctx.obj["tracking_uri"])
    db = embedded_database(uri)
    if db is not None and not db.exists():
        raise CheckpointNotFoundError(
            f"no MLflow store at {db}: run this in the folder you trained in, or pass --tracking-uri / "
            "set MLFLOW_TRACKING_URI"
        )
    return RegistryStore(uri)


alias_option = click.option(
    "--alias", default=None, help="The rolling alias the queue maintains (default: the one it recorded, else 'rolling')."
)


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def created(ms: int) -> str:
    return _dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def progress(label: str):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (CI logs, pipes).
    return lambda items: tqdm(items, desc=label, unit="version", file=sys.stderr, leave=False, disable=None)




def _split_overrides(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """``--set a=1 --set 'b=2;c=3'`` -> ('a=1', 'b=2', 'c=3'); empty values are dropped (MLproject default)."""
    return tuple(item.strip() for value in values for item in value.split(";") if item.strip())


set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_split_overrides,
    help="Override a config value, e.g. --set train.lr=1e-4 --set train.max_steps=500 "
    "(repeatable, or several pairs separated by ';').",
)


