"""The ``mlflow-ddsp`` click group: logging, the tracking-URI option, and one line per error.

The command modules (``cli/registry.py``, ``cli/serving.py``...) register their
commands on :func:`main`; ``cli/__init__.py`` imports them.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from ..errors import MlflowDdspError

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


def _note_on_project_run(ctx: click.Context, exc: Exception) -> None:
    """Under ``mlflow run`` (``MLFLOW_RUN_ID`` set), say on MLflow's own run why the command failed.

    ``mlflow run`` creates that run before our command starts, so a failed start cannot
    avoid it; it ends FAILED, and its description (MLflow's note, shown on the run page)
    now carries the one-line error instead of nothing. Best effort: never raises, and
    skipped when the error is the tracking server itself.
    """
    from ..errors import NotAuthenticatedError, PermissionDeniedError, TrackingServerUnavailable

    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id or isinstance(exc, (TrackingServerUnavailable, NotAuthenticatedError, PermissionDeniedError)):
        return
    try:
        from .. import tags as T
        from ..store import RegistryStore

        command = ctx.invoked_subcommand or "mlflow-ddsp"
        store = RegistryStore((ctx.obj or {}).get("tracking_uri"))
        store.set_run_tags(run_id, {T.MLFLOW_NOTE: f"`mlflow-ddsp {command}` failed: {exc}"})
    except Exception:  # noqa: BLE001 - the error itself was printed; the note is a courtesy
        pass


class _Group(click.Group):
    """Turns MlflowDdspError into a one-line message and exit status 1, usage errors into one line and 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            where = f"mlflow-ddsp {exc.ctx.info_name} --help" if exc.ctx is not None else "mlflow-ddsp --help"
            click.echo(f"error: {exc.format_message()} (see `{where}`)", err=True)
            ctx.exit(exc.exit_code)
        except MlflowDdspError as exc:
            click.echo(f"error: {exc}", err=True)
            _note_on_project_run(ctx, exc)
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
