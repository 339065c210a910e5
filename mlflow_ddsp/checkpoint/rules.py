"""Retention rules as objects: each names the checkpoints it preserves, and why.

Shaped like Orbax's preservation policies (``orbax.checkpoint``'s
``preservation_policy``: a policy answers, for a list of checkpoints, which to
preserve; policies compose by union), written here for the registry and the
spool. A rule is any object with one method, ``preserve(table)``, giving the
``(key, reason)`` of each candidate it preserves; :func:`fold` joins the answers
of a list of rules, reasons in the list's order. The list is built from the
:class:`~mlflow_ddsp.checkpoint.policy.RetentionPolicy` (``policy.rules()``) and
folded by both the planner (``retention.plan_retention``: registry versions, key
= version number) and the spool (``retention.spool_drops``: spooled saves, key =
step). A candidate no rule preserves is retired (a rolling version is deleted, a
spooled save dropped). A new rule is a new class here and one more entry in
``RetentionPolicy.rules()``: the planner does not change.

The rules (reason strings as ``mlflow-ddsp versions`` shows them):

* :class:`ForceSaved` (``force_saved``): upstream DDSP-SVC's trainers
  (``diffusion/solver.py``, ``reflow/solver.py``; ``solver.py`` keeps all) delete
  the previous validation checkpoint unless its step is a multiple of
  ``interval_force_save``; so such a step is kept forever (step 0, upstream's
  pretrained ``model_0.pt``, too). Decided at save time; the kind tag records it.
* :class:`Newest` (``newest``): upstream keeps the newest checkpoint; here the
  newest intact one, which the rolling alias points at.
* :class:`KeepLast` (``keep_last``): ours; the newest N not known to be damaged.
* :class:`Best` (``best``): ours; the intact one with the best value of a metric
  (ties: the earlier step), which the alias ``best`` points at.
* :class:`Protected` (``alias:<a>``, ``keep``): a person's choice, an alias the
  queue did not set or the keep tag (``mlflow-ddsp keep``); nothing here deletes it.
* :class:`InFlight` (``in_flight``): the spooled save being committed now.

Evidence (:class:`Table`): a candidate is judged damaged only by a check that
ran. :meth:`Table.newest` and :meth:`Table.best` check lazily, newest first and
best first, only as far as needed; :class:`KeepLast` reads only the checks that
ran (a candidate not checked counts as intact). The planner asks for the newest
and the best (its alias targets) before it folds, so every rule sees the same
evidence whatever the order of the list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Mapping, Sequence

from .. import tags as T
from ..store.records import Integrity

__all__ = [
    "Candidate",
    "Table",
    "Rule",
    "ForceSaved",
    "Newest",
    "KeepLast",
    "Best",
    "Protected",
    "InFlight",
    "fold",
    "preserved_by",
]


def _no_metric(name: str) -> float | None:
    return None


def _intact(candidate: Candidate) -> Integrity:
    return Integrity.INTACT


@dataclass(frozen=True)
class Candidate:
    """One checkpoint as the rules see it: a registry version or a spooled save.

    ``key`` names it in a fold's answer (a version number, or a spooled save's
    step); ``newness`` orders "newest" (the version number, or the step);
    ``metric(name)`` is its comparable value of a metric or None; ``aliases``
    are every alias on it, ``keep`` the keep tag; ``source`` is what it was made
    from (for the integrity check).
    """

    key: int
    step: int
    kind: str | None
    newness: int = 0
    metric: Callable[[str], float | None] = _no_metric
    aliases: tuple[str, ...] = ()
    keep: bool = False
    source: object = None


class Table:
    """The candidates a fold decides on, newest first, and the evidence gathered about them.

    Args:
        candidates: the queue's checkpoints (any order).
        integrity: checks one candidate; called at most once each, only when a
            rule needs to know (default: every candidate is intact, as a spooled
            save or a version right after its commit).
        own_aliases: the aliases the queue sets itself; every other is a person's.
        others: checkpoints the queue did not write; only :class:`Protected` looks at them.
    """

    def __init__(
        self,
        candidates: Sequence[Candidate],
        integrity: Callable[[Candidate], Integrity] = _intact,
        *,
        own_aliases: frozenset[str] | set[str] = frozenset(),
        others: Sequence[Candidate] = (),
    ) -> None:
        self.newest_first: tuple[Candidate, ...] = tuple(sorted(candidates, key=lambda c: c.newness, reverse=True))
        self.others = tuple(others)
        self.own_aliases = frozenset(own_aliases)
        self.checked: dict[int, Integrity] = {}  # key -> what its check found
        self._integrity = integrity
        self._best: dict[tuple[str, str], Candidate | None] = {}

    def state(self, candidate: Candidate) -> Integrity:
        """What ``candidate``'s check finds (run once, then remembered)."""
        if candidate.key not in self.checked:
            self.checked[candidate.key] = self._integrity(candidate)
        return self.checked[candidate.key]

    def usable(self, candidate: Candidate) -> bool:
        return self.state(candidate).usable

    def known_bad(self, candidate: Candidate) -> bool:
        """A check ran and found it unusable (no check: not known to be bad)."""
        found = self.checked.get(candidate.key)
        return found is not None and not found.usable

    def check_all(self) -> None:
        """Check every candidate (``gc --forget-missing``: every version is judged)."""
        for c in self.newest_first:
            self.state(c)

    def newest(self) -> Candidate | None:
        """The newest usable candidate, checking newest first only as far as needed."""
        return next((c for c in self.newest_first if self.usable(c)), None)

    def best(self, metric: str, mode: str) -> Candidate | None:
        """The usable candidate with the best ``metric`` (``mode`` "min"/"max"; ties: the
        earlier step, then the lower key), checking best first only as far as needed."""
        if (metric, mode) not in self._best:
            sign = 1.0 if mode == "min" else -1.0
            scored = [c for c in self.newest_first if c.metric(metric) is not None]
            ranked = sorted(scored, key=lambda c: (sign * c.metric(metric), c.step, c.key))
            self._best[(metric, mode)] = next((c for c in ranked if self.usable(c)), None)
        return self._best[(metric, mode)]


class Rule:
    """A retention rule: which candidates of a :class:`Table` it preserves, and why.

    Subclass it (or give any object a ``preserve`` method) and add it to
    ``RetentionPolicy.rules()``; the planner and the spool fold it with the others.
    """

    #: a person's choice: shown as ``protected``, and kept even by ``gc --forget-missing``
    personal: ClassVar[bool] = False

    def preserve(self, table: Table) -> Iterable[tuple[int, str]]:
        """``(key, reason)`` for each candidate this rule preserves."""
        raise NotImplementedError


@dataclass(frozen=True)
class ForceSaved(Rule):
    """Force-saved checkpoints stay forever (``force_saved``).

    Upstream DDSP-SVC's trainer (``interval_force_save``; ``diffusion/solver.py``,
    ``reflow/solver.py``) deletes the previous validation checkpoint unless its step
    is a multiple of ``interval_force_save``. :meth:`is_force_step` decides it when
    a checkpoint is saved or imported; the version's kind tag records the decision,
    and :meth:`preserve` reads the tag (a plan needs no intervals).
    """

    interval: int | None = None  # train.interval_force_save; None: only step 0

    def is_force_step(self, step: int) -> bool:
        """Whether a checkpoint saved at ``step`` is kept forever: a multiple of the
        interval, or step 0 (upstream never deletes its pretrained ``model_0.pt``)."""
        return step == 0 or (self.interval is not None and step % self.interval == 0)

    def preserve(self, table: Table) -> Iterable[tuple[int, str]]:
        return [(c.key, "force_saved") for c in table.newest_first if c.kind == T.KIND_FORCE_SAVED]


@dataclass(frozen=True)
class Newest(Rule):
    """The newest usable checkpoint stays (``newest``); the rolling alias points at it.

    Upstream's trainers keep the newest ``model_<N>.pt`` (DDSP-SVC ``solver.py``).
    """

    def preserve(self, table: Table) -> Iterable[tuple[int, str]]:
        newest = table.newest()
        return [(newest.key, "newest")] if newest is not None else []


@dataclass(frozen=True)
class KeepLast(Rule):
    """The newest ``count`` checkpoints not known to be damaged stay (``keep_last``;
    ours, ``train.keep_last``; 1 is upstream's rule, which :class:`Newest` already is)."""

    count: int = 1

    def preserve(self, table: Table) -> Iterable[tuple[int, str]]:
        newest = table.newest()
        last = [c for c in table.newest_first if not table.known_bad(c)][: self.count]
        return [(c.key, "keep_last") for c in last if c is not newest]


@dataclass(frozen=True)
class Best(Rule):
    """The usable checkpoint with the best ``metric`` stays (``best``; ours,
    ``train.best_metric``/``best_mode``); ties go to the earlier step."""

    metric: str
    mode: str = "min"

    def preserve(self, table: Table) -> Iterable[tuple[int, str]]:
        best = table.best(self.metric, self.mode)
        return [(best.key, "best")] if best is not None else []


@dataclass(frozen=True)
class Protected(Rule):
    """What a person protects stays (``alias:<a>`` for each alias the queue did not
    set, then ``keep`` for the keep tag), the queue's checkpoints and others alike."""

    personal: ClassVar[bool] = True

    def preserve(self, table: Table) -> Iterable[tuple[int, str]]:
        found = []
        for c in (*table.others, *table.newest_first):
            found += [(c.key, f"alias:{a}") for a in sorted(c.aliases) if a not in table.own_aliases]
            if c.keep:
                found.append((c.key, "keep"))
        return found


@dataclass(frozen=True)
class InFlight(Rule):
    """The spooled save being committed now stays (``in_flight``): its upload has begun."""

    key: int

    def preserve(self, table: Table) -> Iterable[tuple[int, str]]:
        return [(c.key, "in_flight") for c in table.newest_first if c.key == self.key]


def fold(rules: Iterable[Rule], table: Table) -> dict[int, tuple[str, ...]]:
    """Join the rules' answers: key -> every reason it is preserved, in the rules' order.

    A key no rule names is not preserved.
    """
    reasons: dict[int, list[str]] = {}
    for rule in rules:
        for key, why in rule.preserve(table):
            reasons.setdefault(key, []).append(why)
    return {key: tuple(why) for key, why in reasons.items()}


def preserved_by(rules: Iterable[Rule], table: Table) -> Mapping[int, tuple[str, ...]]:
    """:func:`fold` of the rules that are a person's choice (``Rule.personal``)."""
    return fold([r for r in rules if getattr(r, "personal", False)], table)
