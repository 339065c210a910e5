"""The ``mlflow-ddsp`` command line: a thin layer over the library.

Every command reports mlflow-ddsp's own errors as one line on stderr and exits
non-zero; tracebacks are for bugs only.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
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
