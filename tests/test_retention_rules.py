"""The retention rules as objects (issue 22, point 3): each alone, their fold, and a new rule composed in.

Pure logic on hand-made tables, like Orbax's preservation-policy tests; the last
test imports an upstream folder into a real registry to show that ``import``
decides force saves by the config's ``train.interval_force_save`` through the
same rule as a save.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mlflow_ddsp import tags as T
from mlflow_ddsp.checkpoint.policy import RetentionPolicy
from mlflow_ddsp.store import Integrity
from mlflow_ddsp.checkpoint.retention import (
    RegistrySnapshot,
    SpoolItem,
    committed_reasons,
    plan_retention,
    spool_drops,
)
from mlflow_ddsp.checkpoint.rules import (
    Best,
    Candidate,
    ForceSaved,
    InFlight,
    KeepLast,
    Newest,
    Protected,
    Rule,
    Table,
    fold,
    preserved_by,
)
from mlflow_ddsp.transfer import import_experiment

from test_retention_plan import version
from test_transfer import UPSTREAM_CONFIG, write_upstream_expdir

R, F = T.KIND_ROLLING, T.KIND_FORCE_SAVED


def candidate(key: int, kind: str = R, loss: float | None = None, aliases=(), keep=False, step=None) -> Candidate:
    """A checkpoint whose key, newness and step (x10 unless given) follow its number."""
    return Candidate(key, key * 10 if step is None else step, kind, newness=key,
                     metric=lambda name: loss if name == "loss" else None, aliases=tuple(aliases), keep=keep)  # fmt: skip


def table(*candidates: Candidate, bad=(), missing=(), own=(), others=()) -> tuple[Table, list[int]]:
    """A table whose check finds ``bad`` DAMAGED and ``missing`` MISSING; also the keys checked, in order."""
    checked: list[int] = []

    def check(c: Candidate) -> Integrity:
        checked.append(c.key)
        return Integrity.MISSING if c.key in missing else Integrity.DAMAGED if c.key in bad else Integrity.INTACT

    return Table(candidates, check, own_aliases=frozenset(own), others=others), checked


# -- each rule alone ---------------------------------------------------------------------
@pytest.mark.parametrize(("interval", "step", "forever"), [
    (30, 30, True), (30, 60, True), (30, 40, False), (None, 40, False),
    (None, 0, True), (30, 0, True),  # upstream's model_0.pt is never deleted
])  # fmt: skip
def test_force_saved_decides_by_the_interval_and_keeps_by_the_kind(interval, step, forever):
    assert ForceSaved(interval).is_force_step(step) is forever
    assert RetentionPolicy(10, interval).is_force_save(step) is forever  # the policy asks the rule
    t, checked = table(candidate(1, F), candidate(2), candidate(3, F), candidate(4))
    assert sorted(ForceSaved(interval).preserve(t)) == [(1, "force_saved"), (3, "force_saved")]
    assert checked == []  # a kind needs no check


def test_newest_is_the_newest_usable_one_checked_newest_first_only_as_far_as_needed():
    t, checked = table(candidate(1), candidate(2), candidate(3), candidate(4), bad={4}, missing={3})
    assert list(Newest().preserve(t)) == [(2, "newest")]
    assert checked == [4, 3, 2]
    t, _ = table(candidate(1), bad={1})
    assert list(Newest().preserve(t)) == []


def test_keep_last_counts_only_what_a_check_found_bad():
    t, checked = table(candidate(1), candidate(2), candidate(3), candidate(4), bad={3, 2})
    assert list(Newest().preserve(t)) == [(4, "newest")] and checked == [4]
    # 3 and 2 were not checked: not known to be bad, so they count.
    assert list(KeepLast(3).preserve(t)) == [(3, "keep_last"), (2, "keep_last")]
    assert checked == [4]  # keep_last never checks
    t.check_all()
    assert list(KeepLast(3).preserve(t)) == [(1, "keep_last")]  # now known: skipped, the older one counts


def test_keep_last_one_is_the_newest_rule_alone():
    t, _ = table(candidate(1), candidate(2))
    assert list(KeepLast(1).preserve(t)) == []
    assert list(KeepLast(2).preserve(t)) == [(1, "keep_last")]


@pytest.mark.parametrize(("mode", "best"), [("min", 2), ("max", 4)])
def test_best_ranks_by_the_metric_ties_to_the_earlier_step(mode, best):
    t, _ = table(candidate(1), candidate(2, loss=0.1), candidate(3, loss=0.1), candidate(4, loss=0.5))
    assert list(Best("loss", mode).preserve(t)) == [(best, "best")]
    assert list(Best("accuracy", mode).preserve(t)) == []  # no candidate has it


def test_best_skips_a_damaged_one_checking_best_first():
    t, checked = table(candidate(1, loss=0.3), candidate(2, loss=0.1), candidate(3, loss=0.2), bad={2})
    assert list(Best("loss", "min").preserve(t)) == [(3, "best")]
    assert checked == [2, 3]


def test_protected_names_each_foreign_alias_and_the_keep_tag_on_any_version():
    theirs = candidate(9, kind=None, aliases=["prod"])  # a version the queue did not write
    t, checked = table(candidate(1, aliases=["rolling", "champion", "a-b"], keep=True), candidate(2, aliases=["best"]),
                       own={"rolling", "best"}, others=[theirs])  # fmt: skip
    assert sorted(Protected().preserve(t)) == [(1, "alias:a-b"), (1, "alias:champion"), (1, "keep"), (9, "alias:prod")]
    assert checked == []
    assert Protected.personal and not Newest.personal


def test_in_flight_keeps_the_save_being_committed_if_it_is_there():
    t, _ = table(candidate(1), candidate(2))
    assert list(InFlight(1).preserve(t)) == [(1, "in_flight")]
    assert list(InFlight(7).preserve(t)) == []


# -- the fold --------------------------------------------------------------------------
def test_the_fold_joins_reasons_in_the_rules_order():
    t, _ = table(candidate(1, F, loss=0.1), candidate(2, loss=0.2), candidate(3, loss=0.3, aliases=["champion"]),
                 candidate(4, loss=0.4), own={"rolling"})  # fmt: skip
    rules = (ForceSaved(), Newest(), KeepLast(2), Best("loss", "min"), Protected())
    assert fold(rules, t) == {1: ("force_saved", "best"), 3: ("keep_last", "alias:champion"), 4: ("newest",)}
    assert fold(reversed(rules), t)[1] == ("best", "force_saved")
    assert preserved_by(rules, t) == {3: ("alias:champion",)}


@pytest.mark.parametrize(("policy", "names"), [
    (RetentionPolicy(10, None), ["ForceSaved", "Newest", "Protected"]),
    (RetentionPolicy(10, 30, keep_last=3), ["ForceSaved", "Newest", "KeepLast", "Protected"]),
    (RetentionPolicy(10, 30, best_metric="loss", best_mode="max"), ["ForceSaved", "Newest", "Best", "Protected"]),
])  # fmt: skip
def test_the_policy_builds_the_list_of_rules(policy, names):
    rules = policy.rules()
    assert [type(r).__name__ for r in rules] == names
    assert rules[0] == ForceSaved(policy.interval_force_save)
    assert all(r == Best("loss", "max") for r in rules if isinstance(r, Best))


def test_the_planner_and_the_spool_fold_the_same_rules():
    policy = RetentionPolicy(10, 30, keep_last=2, best_metric="validation/loss")
    versions = [version(1, 10, loss=0.1), version(2, 20, loss=0.5), version(3, 30, F, loss=0.4),
                version(4, 40, loss=0.3), version(5, 50, loss=0.6)]  # fmt: skip
    plan = plan_retention(RegistrySnapshot(versions, {"rolling": 5}), policy, "rolling")
    assert plan.kept == {1: ("best",), 3: ("force_saved",), 4: ("keep_last",), 5: ("newest",)}
    assert [v.version for v in plan.delete_versions] == [2]
    spooled = [SpoolItem(v.step, v.kind, {"validation/loss": v.metric("validation/loss")}) for v in versions]
    assert spool_drops(spooled, policy) == {20}
    assert spool_drops(spooled, policy, in_flight=20) == frozenset()


def test_a_new_versions_description_comes_from_the_rules():
    assert committed_reasons(F) == ("force_saved", "newest")
    assert committed_reasons(R) == ("newest",)


# -- a new rule, composed in without touching the planner ------------------------------------
@dataclass(frozen=True)
class Milestones(Rule):
    """Keeps every checkpoint whose step is a multiple of ``every`` (a rule the project does not have)."""

    every: int

    def preserve(self, table: Table):
        return [(c.key, "milestone") for c in table.newest_first if c.step % self.every == 0]


@dataclass(frozen=True)
class MilestonePolicy(RetentionPolicy):
    every: int = 20

    def rules(self):
        return (*super().rules(), Milestones(self.every))


def test_a_custom_rule_composes_into_the_planner_the_spool_and_the_descriptions():
    policy = MilestonePolicy(10, None, every=20)
    versions = [version(1, 10), version(2, 20), version(3, 30), version(4, 40, keep=True), version(5, 50)]
    plain = plan_retention(RegistrySnapshot(versions, {"rolling": 5}), RetentionPolicy(10, None), "rolling")
    assert [v.version for v in plain.delete_versions] == [3, 2, 1]
    plan = plan_retention(RegistrySnapshot(versions, {"rolling": 5}), policy, "rolling")
    assert [v.version for v in plan.delete_versions] == [3, 1]
    assert plan.kept == {2: ("milestone",), 4: ("keep", "milestone"), 5: ("newest",)}  # in the rules' order
    assert plan.protected == {4: ("keep",)}  # not a person's choice: not shown as protected
    described = {v.version: text for v, text in plan.descriptions}
    assert described[2] == "step 20 · kept: milestone"
    spooled = [SpoolItem(s, R) for s in (10, 20, 30, 40, 50)]
    assert spool_drops(spooled, RetentionPolicy(10, None)) == {10, 20, 30, 40}
    assert spool_drops(spooled, policy) == {10, 30}


def test_a_custom_rule_sees_the_evidence_the_plan_gathered():
    """A rule reading ``known_bad`` sees the checks the plan ran for its alias targets."""

    @dataclass(frozen=True)
    class Damaged(Rule):
        def preserve(self, table: Table):
            return [(c.key, "seen_damaged") for c in table.newest_first if table.known_bad(c)]

    @dataclass(frozen=True)
    class Policy(RetentionPolicy):
        def rules(self):
            return (Damaged(), *super().rules())

    versions = [version(1, 10), version(2, 20), version(3, 30)]
    plan = plan_retention(RegistrySnapshot(versions, {"rolling": 3}), Policy(10, None), "rolling",
                          lambda v: Integrity.DAMAGED if v.version == 3 else Integrity.INTACT)  # fmt: skip
    assert plan.kept == {3: ("seen_damaged",), 2: ("newest",)}
    assert plan.target("rolling").version == 2
    assert [v.version for v in plan.damaged_kept] == [3] and [v.version for v in plan.delete_versions] == [1]


# -- import decides force saves by the config's interval, through the same rule ---------------
@pytest.mark.parametrize(("interval", "newest_kind"), [(4000, F), (None, R)])
def test_import_force_saves_the_newest_by_the_configs_interval(backend, model_name, tmp_path, interval, newest_kind):
    config = {**UPSTREAM_CONFIG, "train": {**UPSTREAM_CONFIG["train"], "interval_force_save": interval}}
    expdir = tmp_path / "exp" / "combsub-test"
    write_upstream_expdir(expdir, [2000, 8000], config, with_optimizer=False)
    report = import_experiment(expdir, model_name, tracking_uri=backend.uri, experiment=backend.experiment)
    assert [(s, k) for s, _, k in report.imported] == [(2000, F), (8000, newest_kind)]
