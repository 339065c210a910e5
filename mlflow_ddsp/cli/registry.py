"""Registry commands: versions, verify, gc, keep, unkeep, alias, lineage."""

from __future__ import annotations

import json

import click

from .group import main
from .options import alias_option, created, human_size, open_store, progress


def spool_note(tracking_uri: str, name: str) -> str | None:
    """One line naming the checkpoints of ``name`` waiting in this machine's spool, if any."""
    from ..checkpoint.spool import Spool

    spool, waiting = Spool.waiting(tracking_uri, name)
    if not waiting:
        return None
    return (f"not in the registry yet, waiting in this machine's spool: {spool.describe(waiting)}; "
            f"committed when training into {name} starts again")  # fmt: skip


@main.command()
@click.argument("name")
@alias_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per version) instead of a table.")
@click.option("--verify/--no-verify", "verify_bytes", default=False, show_default=True,
              help="Also download every version and check its bytes against their sha256 (what `mlflow-ddsp "
              "verify` does); without it the list comes from the registry alone, at once.")  # fmt: skip
@click.pass_context
def versions(ctx: click.Context, name: str, alias: str, as_json: bool, verify_bytes: bool) -> None:
    """List the checkpoint versions of registered model NAME.

    Columns: version, step, kind (rolling | force_saved), aliases, size of the
    checkpoint file, whether its bytes still match their sha256 (`-`: not
    checked; checked with --verify), the training run, when it was registered,
    and why it is kept: force_saved, newest, keep_last, best, alias:<an alias
    of yours> (`mlflow-ddsp alias`), keep (`mlflow-ddsp keep`); a version with
    none is deleted by the next save or `mlflow-ddsp gc`. Without --verify it
    reads the registry only (a few requests, whatever the checkpoints' size)
    and says on stderr that the bytes were not checked.
    """
    from ..checkpoint.audit import audit_queue

    store = open_store(ctx)
    audit = audit_queue(store, name, alias, deep=verify_bytes, progress=progress("verifying"))
    note = spool_note(store.tracking_uri, name)
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
                "sha256_ok": a.intact if verify_bytes else None,
                "integrity": None if a.integrity is None else a.integrity.value,
                "kept": list(a.kept),
                "protected": list(a.protected),
                "run_id": v.run_id,
                "created": created(v.created_ms),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"{name} has no versions")
        if note:
            click.echo(note)
        return
    table = [("VERSION", "STEP", "KIND", "ALIASES", "SIZE", "SHA256", "RUN", "CREATED", "KEPT")]
    for r in rows:
        ok = {None: "-", "intact": "ok", "missing": "MISSING", "damaged": "MISMATCH"}[r["integrity"]]
        table.append(
            (
                str(r["version"]),
                "-" if r["step"] is None else str(r["step"]),
                r["kind"],
                ",".join(r["aliases"]) or "-",
                human_size(r["size_bytes"]),
                ok,
                (r["run_id"] or "-")[:12],
                r["created"],
                ",".join(r["kept"]) or ("-" if r["kind"].startswith("(") else "nothing"),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if note:
        click.echo(note)
    if not verify_bytes:  # on stderr: the table on stdout stays one header and one line per version
        click.echo(f"sha256 not checked (listed from the registry): `mlflow-ddsp versions {name} --verify` or "
                   f"`mlflow-ddsp verify {name}` downloads every version and checks its bytes", err=True)  # fmt: skip


@main.command()
@click.argument("name")
@alias_option
@click.pass_context
def verify(ctx: click.Context, name: str, alias: str) -> None:
    """Check every version of NAME byte for byte against its registration.

    Downloads each version and compares every file's sha256 with the manifest
    whose own sha256 was recorded at registration; also checks that the alias
    points at the newest intact checkpoint and that there is at most one rolling
    version and no orphaned files. Exits 1 on any mismatch.
    """
    from ..checkpoint.audit import audit_queue

    store = open_store(ctx)
    audit = audit_queue(store, name, alias, deep=True, progress=progress("verifying"))
    note = spool_note(store.tracking_uri, name)
    if note:
        click.echo(note)
    for a in audit.versions:
        status = {None: "not checked", "intact": "ok", "missing": "MISSING", "damaged": "MISMATCH"}[
            a.integrity.value if a.integrity else None
        ]
        click.echo(f"{a.version.label}: {a.version.kind or 'not written by mlflow-ddsp'}, {status}")
    if audit.ok:
        click.echo(f"{name}: {len(audit.versions)} versions verified, no problems")
        return
    for problem in audit.problems:
        click.echo(f"problem: {problem}", err=True)
    click.echo(f"{name}: {len(audit.problems)} problem(s); `mlflow-ddsp gc {name}` repairs all but damaged "
               "force-saved and protected versions, which it never deletes", err=True)  # fmt: skip
    ctx.exit(1)


@main.command()
@click.argument("name")
@click.option("--alias", default=None, help="The rolling alias (default: the one the queue recorded, else 'rolling').")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; change nothing.")
@click.option("--takeover", is_flag=True, help="Take the writer lease even from a live training process.")
@click.option("--forget-missing", is_flag=True,
              help="Give up versions whose files are gone (deleted, not just unmounted: removed, force-saved ones "
              "too) or whose checkpoint or config.yaml changed (rolling ones removed, force-saved ones kept); "
              "protected versions always stay, and the alias moves to the newest intact version.")  # fmt: skip
@click.pass_context
def gc(ctx: click.Context, name: str, alias: str | None, dry_run: bool, takeover: bool, forget_missing: bool) -> None:
    """Repair queue NAME after crashes and free checkpoint bytes no rule keeps.

    Applies the retention the queue recorded (keep_last, best) like a save
    does: removes unfinished uploads, rolling versions no rule keeps and orphaned
    files (in any experiment you can read: a deleted predecessor of NAME leaves
    some), and points the aliases at the newest (and best) intact checkpoint.
    Never removes force-saved versions, versions protected by an alias of yours
    or `mlflow-ddsp keep`, versions mlflow-ddsp did not write, or files outside
    this store. If the artifact store holds no file of NAME (not mounted?) it
    changes nothing and exits 1. Takes the writer lease, so it refuses to run
    while a training process writes into NAME.

    If registered model NAME was deleted (e.g. in the MLflow UI), deletes the
    checkpoint files its queue left in every experiment you can read, printing
    each and the bytes (none: exits 1, NAME does not exist).

    Then, store-wide, when the store holds dependency weights (experiment
    'mlflow-ddsp dependencies'): frees each one no LoggedModel references (and
    uploads that died over an hour ago), printing role, digest, file and bytes
    and the total, and names the deleted models whose leftovers alone keep some.
    A basic-auth server hides from a non-admin the experiments he cannot read,
    and their references: there only an admin collects dependencies (anyone
    else is told so in one line); it needs MANAGE on 'mlflow-ddsp dependencies'.
    """
    from ..checkpoint.dependency_gc import collect_store_dependencies
    from ..checkpoint.leftovers import collect_leftovers
    from ..checkpoint.reconcile import collect
    from ..checkpoint.lease import WriterLease

    store = open_store(ctx)
    prefix = "would " if dry_run else ""
    if not store.registered_model_exists(name):  # deleted: what its queue left (none: "does not exist")
        leftovers = collect_leftovers(store, name, dry_run=dry_run)
        click.echo("\n".join(leftovers.describe(prefix)))
        _print_dependencies(collect_store_dependencies(store, dry_run=dry_run, retiring=leftovers.model_ids), prefix)
        return
    lease = WriterLease(store, name, takeover=takeover).acquire()
    try:
        plan = collect(store, name, alias, dry_run=dry_run, forget_missing=forget_missing, everywhere=True)
    finally:
        lease.release()
    lines = plan.describe()
    note = spool_note(store.tracking_uri, name)
    if note:
        click.echo(note)
    if not lines:
        click.echo(f"{name}: nothing to do")
    for line in lines:
        click.echo(f"{prefix}{line}")
    retiring = {v.model_id for v in plan.delete_versions} | {m.model_id for m in plan.delete_models}
    _print_dependencies(collect_store_dependencies(store, dry_run=dry_run, retiring=retiring - {None}), prefix)


def _print_dependencies(collection, prefix: str) -> None:
    """The dependency part of gc: one line per file freed and the total, and one naming the deleted
    registered models whose leftovers alone keep files; nothing when the store has none."""
    if collection is None:  # the store holds no dependencies
        return
    if collection.refused:
        click.echo(collection.refused, err=True)
        return
    for record, size in collection.freed:
        click.echo(f"{prefix}free {record.label} ({record.files}, {size} bytes, {human_size(size)})")
    count = len(collection.freed)
    if count:  # said only when something was (or would be) freed
        click.echo(f"dependencies: {prefix}{'freed' if not prefix else 'free'} {count} file{'s' * (count != 1)}, "
                   f"{collection.total} bytes ({human_size(collection.total)})")  # fmt: skip
    if collection.stranded_note:
        click.echo(collection.stranded_note)


def _set_keep(ctx: click.Context, name: str, version: int, keep: bool) -> None:
    from ..tags import KEEP

    store = open_store(ctx)
    label = f"{name} v{version}"
    current = store.get_version(name, version)  # a one-line error if there is no such version
    if not keep and not current.keep:
        click.echo(f"{label} was not kept by `mlflow-ddsp keep`; nothing changed")
        return
    if keep:
        store.set_version_tag(name, version, KEEP, "true")
        click.echo(f"{label} is kept: mlflow-ddsp never deletes it (`mlflow-ddsp unkeep {name} {version}` undoes this)")
    else:
        store.delete_version_tag(name, version, KEEP)
        click.echo(f"{label} is no longer kept by you; if no other rule keeps it, the next save or "
                   f"`mlflow-ddsp gc {name}` deletes it")  # fmt: skip


@main.command()
@click.argument("name")
@click.argument("version", type=int)
@click.pass_context
def keep(ctx: click.Context, name: str, version: int) -> None:
    """Protect VERSION of NAME: nothing in mlflow-ddsp will ever delete it.

    Sets the version tag mlflow_ddsp.keep=true (setting it in the MLflow UI, or
    giving the version an alias of your own with `mlflow-ddsp alias`, protects
    it the same way).
    """
    _set_keep(ctx, name, version, True)


@main.command()
@click.argument("name")
@click.argument("version", type=int)
@click.pass_context
def unkeep(ctx: click.Context, name: str, version: int) -> None:
    """Remove the protection `keep` set on VERSION of NAME.

    A rolling checkpoint that no other rule keeps (newest, keep_last, best, an
    alias of yours) is then deleted by the next save or `mlflow-ddsp gc`.
    """
    _set_keep(ctx, name, version, False)


def _kept_now(store, name: str, version: int) -> str:
    """What keeps ``version`` of ``name`` now, by the rules the queue recorded, as a clause."""
    from ..checkpoint.audit import audit_queue

    audit = next((a for a in audit_queue(store, name, deep=False).versions if a.version.version == version), None)
    if audit is None:
        return f"v{version} is gone"
    if not audit.version.is_queue_version:
        return f"v{version} was not written by mlflow-ddsp, which never deletes it"
    if audit.kept:
        return f"v{version} stays, kept as {','.join(audit.kept)}"
    return f"v{version} is now kept by no rule: the next save or `mlflow-ddsp gc {name}` deletes it"


def _queue_aliases(store, name: str) -> tuple[set[str], dict[str, int], list[int]]:
    """The aliases the checkpoint queue of ``name`` maintains itself, all its aliases, its version numbers.

    The queue's own: its rolling alias (recorded, else 'rolling'), ``best``, and
    those it recorded setting (``mlflow_ddsp.own_aliases``); the same set `gc
    --alias` and the retention planner (``checkpoint/retention.py``) go by.
    """
    from ..checkpoint.policy_record import recorded_policy
    from ..checkpoint.snapshot import take_snapshot
    from ..names import BEST_ALIAS

    snapshot = take_snapshot(store, name, with_files=False)
    rolling, _ = recorded_policy(store, name)
    own = {rolling, BEST_ALIAS} | set(snapshot.own_aliases)
    return own, dict(snapshot.aliases), [v.version for v in snapshot.versions]


@main.command("alias")
@click.argument("name")
@click.argument("version", type=int, required=False)
@click.argument("alias_name", metavar="ALIAS", required=False)
@click.option("--delete", "delete", metavar="ALIAS", default=None, help="Remove your alias ALIAS from NAME instead.")
@click.pass_context
def alias_command(ctx: click.Context, name: str, version: int | None, alias_name: str | None, delete: str | None) -> None:
    """Point an alias of yours at VERSION of NAME, e.g. `mlflow-ddsp alias voice 6 champion`.

    An alias of yours protects its version: nothing in mlflow-ddsp deletes a
    version while one points at it (`versions` shows it in KEPT as
    alias:<ALIAS>), and models:/NAME@ALIAS names it in `infer`, `serve` and
    `export`. An alias that exists is moved. `--delete ALIAS` removes one
    (`mlflow-ddsp alias voice --delete champion`); each says what keeps the
    version afterwards. The queue's own aliases (its rolling alias, `best`, and
    those it recorded in mlflow_ddsp.own_aliases) are refused: it moves them
    itself. Needs the EDIT permission on NAME (MANAGE to delete).
    """
    from ..names import validate_alias
    from ..errors import CheckpointNotFoundError, ConfigError

    if delete is not None and (version is not None or alias_name is not None):
        raise click.UsageError("give VERSION ALIAS to set an alias, or --delete ALIAS to remove one, not both", ctx)
    if delete is None and (version is None or alias_name is None):
        raise click.UsageError(f"missing {'VERSION and ALIAS' if version is None else 'ALIAS'}: "
                               f"`mlflow-ddsp alias {name} VERSION ALIAS`, or `--delete ALIAS`", ctx)  # fmt: skip
    alias = delete if delete is not None else alias_name
    try:
        validate_alias(alias)
    except ConfigError as exc:  # its example names the queue's alias, which this command refuses
        raise ConfigError(str(exc).replace("e.g. 'rolling'", "e.g. 'champion'")) from None
    store = open_store(ctx)
    if not store.registered_model_exists(name):
        raise CheckpointNotFoundError(f"registered model {name!r} does not exist at {store.tracking_uri}")
    own, aliases, numbers = _queue_aliases(store, name)
    if alias in own:
        raise ConfigError(
            f"alias {alias!r} is the checkpoint queue's own on {name!r} (it maintains {', '.join(sorted(own))} "
            "itself); give your alias another name, e.g. champion"
        )
    if delete is not None:
        if alias not in aliases:
            theirs = sorted(set(aliases) - own)
            raise CheckpointNotFoundError(f"{name!r} has no alias {alias!r} (aliases of yours on it: "
                                          f"{', '.join(theirs) or 'none'})")  # fmt: skip
        was = aliases[alias]
        store.delete_alias(name, alias)
        click.echo(f"removed {name}@{alias} (was v{was}); {_kept_now(store, name, was)}")
        return
    assert version is not None
    if version not in numbers:
        listed = ", ".join(map(str, numbers)) if len(numbers) <= 8 else f"{len(numbers)}, {numbers[0]} to {numbers[-1]}"
        listed = listed or "none"
        raise CheckpointNotFoundError(f"{name!r} has no version {version} (its versions: {listed}; "
                                      f"`mlflow-ddsp versions {name}` lists them)")  # fmt: skip
    before = aliases.get(alias)
    if before == version:
        click.echo(f"{name}@{alias} already points at v{version}; nothing changed")
        return
    store.set_alias(name, alias, version)
    click.echo(f"{name}@{alias} -> v{version}: protected, mlflow-ddsp never deletes it while the alias points there "
               f"(models:/{name}@{alias}; `mlflow-ddsp alias {name} --delete {alias}` removes it)")  # fmt: skip
    if before is not None:
        click.echo(f"moved from v{before}; {_kept_now(store, name, before)}")


def _short(digest: str | None) -> str:
    return digest[:10] if digest else "-"


@main.command()
@click.argument("name")
@click.argument("version", type=int, required=False)
@alias_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per link) instead of text.")
@click.pass_context
def lineage(ctx: click.Context, name: str, version: int | None, alias: str, as_json: bool) -> None:
    """Print where VERSION of NAME (default: the alias's) came from, link by link.

    Follows the versions each training run resumed or fine-tuned from, across
    runs; a parent deleted since (a replaced rolling checkpoint) is still shown,
    from what its training run recorded. Each link shows the step, the run, the
    git commit (and whether the tree was dirty), and the config and dataset digests.
    """
    from ..checkpoint.policy_record import recorded_policy
    from ..lineage import lineage_chain

    store = open_store(ctx)
    chain = lineage_chain(store, name, version, alias=recorded_policy(store, name, alias)[0])
    if as_json:
        click.echo(json.dumps([entry.as_dict() for entry in chain], indent=2))
        return
    for depth, entry in enumerate(chain):
        state = entry.kind or "deleted"
        dirty = " (dirty)" if entry.git_dirty == "true" else ""
        commit = f"commit {entry.git_commit[:10]}{dirty}" if entry.git_commit else "commit -"
        line = (
            f"{entry.name} v{entry.version}  step {entry.step if entry.step is not None else '?'}  {state}  "
            f"run {(entry.run_id or '-')[:12]}  {commit}  config {_short(entry.config_digest)}  "
            f"data {_short(entry.dataset_digest)}"
            + (f"  created {created(entry.created_ms)}" if entry.created_ms else "")
            + (f"  imported from {entry.imported_from}" if entry.imported_from else "")
        )
        click.echo(("  " * (depth - 1) + "└ resumed from " if depth else "") + line)
    # The walk ends where a version has no parent: training started there, or it was imported.
    origin = "imported" if chain[-1].imported_from else "trained from scratch"
    click.echo("  " * (len(chain) - 1) + f"└ {origin}")
