"""The retention planner: from the registry's state and the policy, what stays and what goes.

Pure logic, no I/O; the one place that decides what is deleted. A save (after
its commit point), every queue start (reconcile after a crash) and
``mlflow-ddsp gc`` compute a plan here and apply it through the one deleter;
``versions``/``verify`` show it. Shaped like Orbax's preservation policies:
the rules are objects (``rules.py``), ``policy.rules()`` lists them, and the
planner folds that list over the versions; a version is deleted only when it
is a rolling checkpoint that no rule preserves. A new rule needs no change here.

What is preserved (a version may have several reasons; ``kept`` and the
versions' descriptions give them in this order):

* ``force_saved``: every force-saved version, forever (upstream's rule);
* ``newest``: the newest intact checkpoint; the queue's alias points at it;
* ``keep_last``: the newest ``keep_last`` checkpoints not known to be damaged;
* ``best``: with ``best_metric``, the intact version with the best value
  (ties: the earlier step); the alias ``best`` points at it, unless a person
  already uses that alias name;
* ``alias:<a>``, ``keep`` (``protected``): any alias that is not the queue's own
  (a person promoted it), or the tag ``mlflow_ddsp.keep=true``. The queue's own
  are the rolling alias and those it set itself, recorded on the registered
  model (``mlflow_ddsp.own_aliases``); one it set and no longer uses (an option
  changed) is removed. Nothing in this package deletes a protected version;
* versions the queue did not write are never touched.

Evidence rules (absence of evidence is not damage): a version is judged only
by a check that ran (``Integrity``); versions not checked count as intact, and so
do versions whose only changed files are auxiliary (``Integrity.AUXILIARY``:
validation media, ``MLmodel``...; issue 20). A plan may retire a DAMAGED version;
``gc.collect`` applies such a plan only under ``--forget-missing`` and otherwise
stops, naming the file (a failed check alone never deletes a checkpoint). When
every checked queue version is MISSING (the store is empty, e.g. not mounted
yet), the plan deletes nothing and says so (``store_unavailable``). A crash can
also leave LoggedModels that no version uses (unfinished uploads, or the files
of a version deleted before its bytes were): those are orphans to remove.

The same list of rules bounds the local spool of saves not yet committed (a
server outage): :func:`spool_drops` folds it over the spooled saves and drops a
rolling save that the plan would retire anyway once the newer spooled saves are
committed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from .. import tags as T
from ..store.records import CheckpointVersion, Integrity, QueueModel
from .policy import BEST_ALIAS, RetentionPolicy
from .rules import Candidate, ForceSaved, InFlight, Newest, Protected, Table, fold, preserved_by

log = logging.getLogger(__name__)
_SAID_UNCLEAR: set[tuple[int, str]] = set()  # (version, keep tag value) already warned about

__all__ = [
    "RegistrySnapshot",
    "RetentionPlan",
    "plan_retention",
    "protection",
    "assume_intact",
    "describe_version",
    "committed_reasons",
    "SpoolItem",
    "spool_drops",
]

# Descriptions this package wrote (this format, or an older release's); a person's own text is left alone.
_OUR_DESCRIPTION = re.compile(r"^(step \d+ · |Rolling checkpoint at step |Force-saved checkpoint at step |$)")


@dataclass(frozen=True)
class RegistrySnapshot:
    """The registry state the planner decides on."""

    versions: Sequence[CheckpointVersion]  # every live version of the registered model
    aliases: Mapping[str, int]  # every alias of the registered model -> its version number
    queue_models: Sequence[QueueModel] = ()  # LoggedModels written by this queue (orphan candidates)
    own_aliases: frozenset[str] = frozenset()  # aliases the queue set (recorded on the registered model)

    def aliases_of(self, version: int) -> list[str]:
        return sorted(a for a, v in self.aliases.items() if v == version)


@dataclass(frozen=True)
class RetentionPlan:
    """Changes in the order they must be applied: aliases first, then deletions.

    MLflow silently drops an alias when its version is deleted, so aliases move
    off a version before that version is deleted.
    """

    alias_targets: Mapping[str, CheckpointVersion | None]  # our aliases -> where they must point
    alias_moves: tuple[tuple[str, CheckpointVersion | None], ...] = ()  # those not already there
    delete_versions: tuple[CheckpointVersion, ...] = ()
    delete_models: tuple[QueueModel, ...] = ()  # orphans: bytes, then record
    # version -> why it stays: force_saved, newest, keep_last, best, alias:<a person's alias>, keep
    kept: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    protected: Mapping[int, tuple[str, ...]] = field(default_factory=dict)  # version -> alias:<name> / keep
    damaged_kept: tuple[CheckpointVersion, ...] = ()  # damaged, kept (force-saved or protected)
    store_unavailable: bool = False  # every checked version is MISSING: nothing is deleted
    alias_taken: bool = False  # the rolling alias is a person's (set by someone else): nothing is changed
    descriptions: tuple[tuple[CheckpointVersion, str], ...] = ()  # one-line descriptions to bring up to date
    own_aliases: frozenset[str] = frozenset()  # the aliases the queue had set before this plan
    given_up: Mapping[int, str] = field(default_factory=dict)  # forget_missing: version -> why its check failed

    @property
    def is_empty(self) -> bool:
        return not (self.alias_moves or self.delete_versions or self.delete_models)

    def target(self, alias: str) -> CheckpointVersion | None:
        return self.alias_targets.get(alias)

    def describe(self) -> list[str]:
        lines = []
        for alias, target in self.alias_moves:
            lines.append(f"point alias '{alias}' at {target.label}" if target else f"remove alias '{alias}'")
        lines += [
            f"delete {v.kind or 'unknown-kind'} version {v.label}"
            + (f": {self.given_up[v.version]}" if v.version in self.given_up else "")
            for v in self.delete_versions
        ]
        lines += [
            f"delete orphaned checkpoint files {m.model_id} ({m.status.lower()}, step {m.step})"
            for m in self.delete_models
        ]
        lines += [
            f"keep damaged version {v.label} (kept as {', '.join(self.kept.get(v.version, ()))}; never "
            "deleted: see `mlflow-ddsp verify`)"
            for v in self.damaged_kept
        ]
        return lines


def describe_version(version: CheckpointVersion, kept: Sequence[str], metric: str | None) -> str:
    """A version's one-line description: step, the best metric's value, what keeps it.

    e.g. ``step 300 · loss 1.323 · kept: force_saved, newest, best``. The MLflow UI's
    version list shows a description's first 32 characters (``truncate(description, 32)``
    in its model registry page, MLflow 3): step and metric come first so they stay in
    sight; the kind is not repeated (it is the version's second tag, and ``force_saved``
    is what keeps a force-saved version); the metric is named by its last part
    (``validation/loss`` -> ``loss``).
    """
    parts = [f"step {version.step}"]
    value = version.metric(metric) if metric else None
    if value is not None:
        parts.append(f"{metric.rsplit('/', 1)[-1]} {value:.4g}")
    parts.append(f"kept: {', '.join(kept)}" if kept else "kept by no rule: deleted by the next save or gc")
    return " · ".join(parts)


def assume_intact(version: CheckpointVersion) -> Integrity:
    """No check ran: no evidence of damage (the check used right after a save)."""
    return Integrity.INTACT


def _candidate(version: CheckpointVersion, aliases: Sequence[str] = ()) -> Candidate:
    """A registry version as the rules see it (key: its version number)."""
    return Candidate(
        key=version.version, step=version.step, kind=version.kind, newness=version.newness(),
        metric=version.metric, aliases=tuple(aliases), keep=version.keep, source=version,
    )  # fmt: skip


def protection(version: CheckpointVersion, aliases: Sequence[str], own_aliases: set[str]) -> tuple[str, ...]:
    """What protects ``version`` from deletion by a person's choice: foreign aliases, the keep tag
    (the :class:`~.rules.Protected` rule on this one version)."""
    table = Table((), own_aliases=frozenset(own_aliases), others=[_candidate(version, aliases)])
    return fold([Protected()], table).get(version.version, ())


def committed_reasons(kind: str) -> tuple[str, ...]:
    """What keeps a version at its commit point, before the plan that follows it runs.

    The rules that hold of a new version alone: it is the newest (the highest
    version number), and force-saved when its kind is. ``keep_last`` and ``best``
    depend on the other versions; the plan after the commit adds them to the
    description. e.g. ``("force_saved", "newest")``.
    """
    return fold([ForceSaved(), Newest()], Table([Candidate(0, 0, kind)])).get(0, ())


def _warn_unclear_keep(versions: Sequence[CheckpointVersion]) -> None:
    """Say once per process (the plan runs at every save) which keep tags are neither yes nor no."""
    unclear = [(v.version, v.keep_value_unclear) for v in versions
               if v.keep_value_unclear is not None and (v.version, v.keep_value_unclear) not in _SAID_UNCLEAR]  # fmt: skip
    _SAID_UNCLEAR.update(unclear)
    if unclear:
        log.warning("%s=%s: not a yes or no (true/yes/1/on or false/no/0/off); kept, as a keep tag is meant to keep",
                    T.KEEP, ", ".join(f"{value!r} on v{n}" for n, value in unclear))  # fmt: skip


def _table(snapshot: RegistrySnapshot, integrity: Callable[[CheckpointVersion], Integrity], own: set[str]) -> Table:
    """The snapshot as the rules see it: the queue's versions, and the others (only protection looks at them)."""
    candidates = [_candidate(v, snapshot.aliases_of(v.version)) for v in snapshot.versions]
    return Table(
        [c for c in candidates if c.source.is_queue_version],
        lambda c: integrity(c.source),
        own_aliases=frozenset(own),
        others=[c for c in candidates if not c.source.is_queue_version],
    )


def plan_retention(
    snapshot: RegistrySnapshot,
    policy: RetentionPolicy,
    alias: str,
    integrity: Callable[[CheckpointVersion], Integrity] = assume_intact,
    *,
    forget_missing: bool = False,
) -> RetentionPlan:
    """Decide where the queue's aliases point and which versions are deleted.

    Folds ``policy.rules()`` (``rules.py``) over the snapshot's versions: a rolling
    version no rule preserves is deleted.

    Args:
        snapshot: the registry state.
        policy: keep_last and best_metric/best_mode (kinds come from version tags).
        alias: the queue's rolling alias.
        integrity: checks one version; called lazily, newest first for the
            rolling alias and best first for ``best``, only as far as needed;
            with ``forget_missing``, once for every queue version (issue 20: a
            lazy check stopped at the first intact version and never found the
            older ones whose files are gone).
        forget_missing: the files of MISSING versions are really gone (``gc
            --forget-missing``): such versions are deleted, force-saved ones too;
            only protected ones stay (a person's alias or keep tag).

    Returns:
        The plan. After it is applied: the alias is on the newest intact queue
        version, ``best`` on the best intact one, and the only versions left are
        the preserved ones, the damaged ones that may not be deleted, and
        versions the queue did not write.
    """
    # The queue's own aliases: the rolling one, and those it set (recorded); ``best`` also
    # when the policy wants it and nobody else has taken the name. Every other alias is a person's.
    recorded = set(snapshot.own_aliases)
    if recorded and alias not in recorded and alias in snapshot.aliases:
        # The queue's alias setting names an alias someone else set: never take it over.
        return RetentionPlan(alias_targets={}, alias_taken=True)
    wants_best = policy.best_metric is not None and (BEST_ALIAS in recorded or BEST_ALIAS not in snapshot.aliases)
    own = {alias} | recorded | ({BEST_ALIAS} if wants_best else set())
    table = _table(snapshot, integrity, own)
    if forget_missing:  # a person's repair: every version is judged, not only the newest few
        table.check_all()
    # The evidence, gathered before the rules fold: the alias targets, checked newest first and best first.
    newest = table.newest()
    if newest is None and table.newest_first and not forget_missing and all(
        s is Integrity.MISSING for s in table.checked.values()
    ):
        # Absence of evidence is not damage: an empty or unmounted store deletes nothing.
        return RetentionPlan(alias_targets={}, store_unavailable=True)
    best = table.best(policy.best_metric, policy.best_mode) if policy.best_metric is not None else None
    _warn_unclear_keep(snapshot.versions)
    rules = policy.rules()
    reasons = fold(rules, table)
    protected = dict(preserved_by(rules, table))

    targets = {alias: newest.source if newest else None}
    if wants_best:
        targets[BEST_ALIAS] = best.source if best else None
    for stale in sorted(recorded - set(targets)):  # set by the queue, no longer used (option changed)
        targets[stale] = None
    ours = [c.source for c in table.newest_first]
    delete, given_up = _deletions(ours, table.checked, reasons, protected, forget_missing)
    bad = {n for n, s in table.checked.items() if not s.usable}
    # Files no version uses: unfinished uploads, or a deletion a crash cut short.
    referenced = {v.model_id for v in snapshot.versions}
    return RetentionPlan(
        own_aliases=frozenset(recorded),
        descriptions=_descriptions(ours, reasons, delete, policy.best_metric),
        alias_targets=targets,
        alias_moves=tuple((a, t) for a, t in targets.items() if snapshot.aliases.get(a) != (t.version if t else None)),
        delete_versions=delete,
        delete_models=tuple(m for m in snapshot.queue_models if m.model_id not in referenced),
        kept=reasons,
        protected=protected,
        damaged_kept=tuple(v for v in ours if v.version in bad and v.version in reasons and v not in delete),
        given_up=given_up,
    )


def _deletions(
    ours: Sequence[CheckpointVersion],
    checked: Mapping[int, Integrity],
    reasons: Mapping[int, tuple[str, ...]],
    protected: Mapping[int, tuple[str, ...]],
    forget_missing: bool,
) -> tuple[tuple[CheckpointVersion, ...], dict[int, str]]:
    """The versions to delete (newest first) and, with ``forget_missing``, why each judged one is given up.

    A rolling version no rule preserves goes. With ``forget_missing`` a MISSING one goes
    too, whatever kept it, unless a person protects it.
    """
    delete = tuple(v for v in ours if v.kind == T.KIND_ROLLING and v.version not in reasons)
    given_up: dict[int, str] = {}
    if forget_missing:
        gone = {n for n, s in checked.items() if s is Integrity.MISSING}
        delete += tuple(v for v in ours if v.version in gone and v.version not in protected and v not in delete)
        for n, s in checked.items():
            if s is Integrity.MISSING:
                given_up[n] = "its files are gone"
            elif s is Integrity.DAMAGED:
                given_up[n] = "its checkpoint or config.yaml differs from its registration"
    return delete, given_up


def _descriptions(
    ours: Sequence[CheckpointVersion],
    reasons: Mapping[int, tuple[str, ...]],
    delete: Sequence[CheckpointVersion],
    metric: str | None,
) -> tuple[tuple[CheckpointVersion, str], ...]:
    """The kept versions whose description (ours, not a person's) no longer says what keeps them."""
    descriptions = []
    for v in ours:
        # Not of a version this plan deletes (forget_missing gives up force-saved ones too).
        if v.version in reasons and v not in delete and _OUR_DESCRIPTION.match(v.description or ""):
            text = describe_version(v, reasons[v.version], metric)
            if text != v.description:
                descriptions.append((v, text))
    return tuple(descriptions)


@dataclass(frozen=True)
class SpoolItem:
    """A save waiting in the local spool: its step, kind and metrics."""

    step: int
    kind: str
    metrics: Mapping[str, float] = field(default_factory=dict)


def spool_drops(items: Sequence[SpoolItem], policy: RetentionPolicy, *, in_flight: int | None = None) -> frozenset[int]:
    """The steps of spooled saves that are dropped without being committed.

    Folds the same ``policy.rules()`` as :func:`plan_retention` over the spooled
    saves (all intact, none protected), plus :class:`~.rules.InFlight` for the one
    being committed (``in_flight``): the spool keeps what the planner would keep
    among them once they are all committed: every force-saved one, the newest
    ``keep_last`` saves, and the best by ``best_metric`` among them (the registry
    may hold a better one; it is then retired after its commit, as any version
    would be). A save no rule keeps is dropped. So an outage holds at most
    ``keep_last`` rolling saves (+1 in flight, +1 best) besides the force-saves.
    """
    rules = policy.rules() + ((InFlight(in_flight),) if in_flight is not None else ())
    kept = fold(rules, Table([_spooled(i) for i in items]))
    return frozenset(i.step for i in items if i.step not in kept)


def _spooled(item: SpoolItem) -> Candidate:
    """A spooled save as the rules see it (key and newness: its step; a NaN metric counts as absent)."""

    def metric(name: str) -> float | None:
        value = item.metrics.get(name)
        return value if value is not None and value == value else None

    return Candidate(key=item.step, step=item.step, kind=item.kind, newness=item.step, metric=metric, source=item)
