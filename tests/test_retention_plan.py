"""The retention planner on hand-made registry snapshots: pure logic, no MLflow.

Tables in the shape of Orbax's policy tests: a registry state, a policy, and
the versions expected to stay, the aliases' targets and what is deleted.
"""

import pytest

from mlflow_ddsp import tags as T
from mlflow_ddsp.checkpoint.policy import RetentionPolicy
from mlflow_ddsp.store.records import CheckpointVersion, Integrity, QueueModel
from mlflow_ddsp.checkpoint.retention import RegistrySnapshot, SpoolItem, plan_retention, spool_drops

R, F = T.KIND_ROLLING, T.KIND_FORCE_SAVED


def version(number: int, step: int, kind: str = R, ours: bool = True, loss: float | None = None, keep=False):
    tags = {T.STEP: str(step), T.KIND: kind} if ours else {}
    if loss is not None:
        tags[T.metric_tag("validation/loss")] = repr(loss)
    if keep:
        tags[T.KEEP] = keep if isinstance(keep, str) else "true"
    return CheckpointVersion("voice", number, f"models:/m-{number:04d}", "run", 0, tags)


def files(model_number: int, status: str = "READY") -> QueueModel:
    return QueueModel(f"m-{model_number:04d}", status, "file:///x", 0, {T.STEP: "1"})


def plan(versions, aliases=None, models=(), broken=(), missing=(), forget_missing=False, own=(), alias="rolling", **policy):
    """``aliases``: alias -> version number; ``broken``/``missing``: version numbers failing the check;
    ``own``: the aliases the queue recorded as set by itself."""
    snapshot = RegistrySnapshot(versions, dict(aliases or {}), models, frozenset(own))

    def check(v):
        if v.version in missing:
            return Integrity.MISSING
        return Integrity.DAMAGED if v.version in broken else Integrity.INTACT

    return plan_retention(snapshot, RetentionPolicy(10, None, **policy), alias, check, forget_missing=forget_missing)


def deleted(p) -> list[int]:
    return sorted(v.version for v in p.delete_versions)


def target(p, alias="rolling"):
    t = p.target(alias)
    return t.version if t is not None else None


# -- the default rule: the newest checkpoint plus force-saves -------------------------
def test_consistent_queue_needs_nothing():
    p = plan([version(1, 30, F), version(3, 50)], aliases={"rolling": 3}, models=[files(1), files(3)])
    assert p.is_empty and target(p) == 3
    assert p.kept == {1: ("force_saved",), 3: ("newest",)}


def test_after_a_save_the_previous_rolling_version_goes():
    p = plan([version(1, 30, F), version(2, 40), version(3, 50)], aliases={"rolling": 2})
    assert target(p) == 3 and p.alias_moves[0][0] == "rolling"
    assert deleted(p) == [2]
    assert p.delete_models == ()  # v2's files go with v2


def test_two_stale_rolling_versions_after_a_partial_failure_both_go():
    # register succeeded, the alias move failed: the next plan cleans up every stale one.
    p = plan([version(1, 10), version(2, 20), version(3, 30)], aliases={"rolling": 1})
    assert target(p) == 3 and deleted(p) == [1, 2]


def test_unfinished_and_orphaned_uploads_are_removed():
    p = plan([version(3, 50)], aliases={"rolling": 3}, models=[files(3), files(7, "PENDING"), files(8)])
    assert sorted(m.model_id for m in p.delete_models) == ["m-0007", "m-0008"]


def test_newest_is_the_latest_registration_not_the_highest_step():
    # Fine-tuning from an older pinned version re-saves lower steps.
    p = plan([version(7, 50, F), version(9, 40)], aliases={"rolling": 9})
    assert p.is_empty and target(p) == 9


def test_versions_not_written_by_the_queue_are_never_touched():
    p = plan([version(5, 0, ours=False), version(6, 10)], aliases={"rolling": 6})
    assert p.is_empty


# -- damage and missing files ---------------------------------------------------------
def test_damaged_newest_rolling_falls_back_and_is_deleted():
    p = plan([version(1, 30, F), version(3, 50)], aliases={"rolling": 3}, broken={3})
    assert target(p) == 1 and deleted(p) == [3]


def test_damaged_force_saved_is_kept_and_reported():
    p = plan([version(1, 30, F), version(4, 60, F)], aliases={"rolling": 4}, broken={4})
    assert target(p) == 1 and deleted(p) == []
    assert [v.version for v in p.damaged_kept] == [4]


def test_a_partly_missing_store_is_damage_where_other_versions_are_present():
    p = plan([version(1, 30, F), version(3, 50)], aliases={"rolling": 3}, missing={3})
    assert not p.store_unavailable and target(p) == 1 and deleted(p) == [3]


@pytest.mark.parametrize("versions", [[version(1, 10)], [version(1, 30, F), version(3, 50)]])
def test_an_empty_store_deletes_nothing(versions):
    numbers = {v.version for v in versions}
    p = plan(versions, aliases={"rolling": max(numbers)}, missing=numbers, models=[files(9)])
    assert p.store_unavailable and p.is_empty and deleted(p) == []


def test_forget_missing_drops_versions_whose_files_are_really_gone():
    p = plan([version(1, 10)], aliases={"rolling": 1}, missing={1}, forget_missing=True)
    assert not p.store_unavailable and deleted(p) == [1] and target(p) is None
    assert p.alias_moves == (("rolling", None),)


def test_nothing_intact_drops_the_alias():
    p = plan([version(3, 50)], aliases={"rolling": 3}, broken={3})
    assert p.alias_moves == (("rolling", None),) and deleted(p) == [3]
    assert plan([], aliases={}).is_empty


# -- protection: a person's alias or the keep tag ---------------------------------------
@pytest.mark.parametrize(
    "extra, tagged, reason",
    [({"champion": 1}, False, "alias:champion"), ({}, True, "keep")],
)
def test_protected_rolling_versions_are_never_deleted(extra, tagged, reason):
    p = plan([version(1, 10, keep=tagged), version(2, 20), version(3, 30)], aliases={"rolling": 2, **extra})
    assert target(p) == 3 and deleted(p) == [2]
    assert reason in p.kept[1] and 1 in p.protected


def test_a_protected_version_whose_protection_is_removed_is_retired():
    p = plan([version(1, 10), version(3, 30)], aliases={"rolling": 3})  # the alias 'champion' was removed
    assert deleted(p) == [1]


def test_damaged_protected_versions_are_kept_and_reported():
    p = plan([version(1, 10, keep=True), version(3, 30)], aliases={"rolling": 3}, broken={1, 3})
    assert deleted(p) == [3] and [v.version for v in p.damaged_kept] == [1]


def test_best_alias_is_a_persons_alias_when_the_policy_has_no_best():
    p = plan([version(1, 10), version(2, 20)], aliases={"rolling": 2, "best": 1})
    assert deleted(p) == [] and "best" not in p.alias_targets and 1 in p.protected


# -- keep_last and best -----------------------------------------------------------------
@pytest.mark.parametrize(
    "keep_last, expected_kept",
    [
        (1, [1, 5]),
        (2, [1, 4, 5]),
        (3, [1, 3, 4, 5]),
        (9, [1, 2, 3, 4, 5]),  # more than there are: nothing is deleted
    ],
)
def test_keep_last_keeps_the_newest_n(keep_last, expected_kept):
    vs = [version(1, 10, F), version(2, 20), version(3, 30), version(4, 40), version(5, 50)]
    p = plan(vs, aliases={"rolling": 5}, keep_last=keep_last)
    assert sorted(p.kept) == expected_kept
    assert deleted(p) == sorted({2, 3, 4, 5} - set(expected_kept))


def test_keep_last_window_skips_damaged_versions():
    vs = [version(2, 20), version(3, 30), version(4, 40)]
    p = plan(vs, aliases={"rolling": 4}, broken={4}, keep_last=2)
    assert target(p) == 3 and sorted(p.kept) == [2, 3] and deleted(p) == [4]


@pytest.mark.parametrize(
    "losses, mode, expected_best",
    [
        ({1: 0.5, 2: 0.3, 3: 0.4}, "min", 2),
        ({1: 0.5, 2: 0.3, 3: 0.4}, "max", 1),
        ({1: 0.3, 2: 0.3, 3: 0.4}, "min", 1),  # ties keep the earlier step
        ({1: 0.5, 2: float("nan"), 3: 0.4}, "min", 3),  # non-finite values never win
        ({}, "min", None),
    ],
)
def test_best_alias_points_at_the_best_value_and_protects_it(losses, mode, expected_best):
    vs = [version(n, n * 10, loss=losses.get(n)) for n in (1, 2, 3)]
    p = plan(vs, aliases={"rolling": 3}, best_metric="validation/loss", best_mode=mode)
    assert target(p, "best") == expected_best
    assert deleted(p) == sorted({1, 2} - {expected_best})


def test_best_skips_a_damaged_version_and_moves_off_a_superseded_one():
    vs = [version(1, 10, loss=0.5), version(2, 20, loss=0.1), version(3, 30, loss=0.3)]
    p = plan(vs, aliases={"rolling": 3, "best": 1}, own={"rolling", "best"}, broken={2}, best_metric="validation/loss")
    assert target(p, "best") == 3 and ("best", vs[2]) in p.alias_moves
    assert deleted(p) == [1, 2]


def test_a_persons_alias_named_best_is_never_taken_over():
    vs = [version(1, 10, loss=0.5), version(2, 20, loss=0.1), version(3, 30, loss=0.3)]
    p = plan(vs, aliases={"rolling": 3, "best": 1}, own={"rolling"}, best_metric="validation/loss")
    assert "best" not in p.alias_targets and 1 in p.protected  # theirs: it protects v1
    assert p.kept[2] == ("best",) and deleted(p) == []  # the best checkpoint still stays, unaliased


@pytest.mark.parametrize(
    "own, aliases, options, removed",
    [
        ({"rolling", "best"}, {"rolling": 3, "best": 1}, {}, "best"),  # best_metric turned off
        ({"rolling"}, {"rolling": 1}, {"alias": "newest"}, "rolling"),  # the queue's alias renamed
    ],
)
def test_an_alias_the_queue_set_and_no_longer_uses_is_removed(own, aliases, options, removed):
    vs = [version(1, 10, loss=0.1), version(3, 30, loss=0.3)]
    p = plan(vs, aliases=aliases, own=own, **options)
    assert (removed, None) in p.alias_moves and deleted(p) == [1]


def test_a_rolling_alias_someone_else_set_is_never_taken_over():
    vs = [version(1, 10), version(3, 30)]
    p = plan(vs, aliases={"rolling": 3, "champion": 1}, own={"rolling"}, alias="champion")
    assert p.alias_taken and p.is_empty and deleted(p) == []


# -- the local spool during an outage: the same rules, before the commit -----------------------------

@pytest.mark.parametrize(
    "saves, policy, in_flight, dropped",
    [
        # newest rolling + every force-save stay; superseded rolling saves go
        ([(20, R), (30, F), (40, R), (50, R)], {}, None, {20, 40}),
        # the one being committed is never dropped from under the committer
        ([(20, R), (30, F), (40, R), (50, R)], {}, 20, {40}),
        # keep_last N keeps the newest N (force-saves count among them)
        ([(10, R), (20, R), (30, F), (40, R)], {"keep_last": 3}, None, {10}),
        # the best by the metric among the spooled stays too
        ([(10, R, 0.5), (20, R, 0.1), (40, R, 0.9), (50, R, 0.7)], {"best_metric": "loss"}, None, {10, 40}),
        ([(10, R, 0.5), (20, R, 0.1), (50, R, 0.7)], {"best_metric": "loss", "best_mode": "max"}, None, {10, 20}),
        ([], {}, None, set()),
    ],
    ids=["newest-and-force", "in-flight", "keep-last", "best-min", "best-max", "empty"],
)
def test_the_spool_keeps_what_retention_would_keep(saves, policy, in_flight, dropped):
    items = [SpoolItem(s[0], s[1], {"loss": s[2]} if len(s) > 2 else {}) for s in saves]
    assert spool_drops(items, RetentionPolicy(10, 30, **policy), in_flight=in_flight) == dropped


# -- what people type into the keep tag ------------------------------------------------
@pytest.mark.parametrize(("value", "kept"), [
    ("true", True), ("TRUE", True), ("yes", True), ("Yes", True), ("1", True), ("on", True), (" y ", True),
    ("false", False), ("no", False), ("0", False), ("OFF", False), ("", False),
    ("maybe", True), ("ja", True), ("keep", True),  # not a no: a person set it to keep, so it keeps
])  # fmt: skip
def test_the_keep_tag_accepts_what_people_type(value, kept, caplog):
    from mlflow_ddsp.checkpoint import retention

    retention._SAID_UNCLEAR.clear()
    with caplog.at_level("WARNING"):
        p = plan([version(1, 30, keep=value), version(2, 40), version(3, 50)], aliases={"rolling": 2})
    assert (1 in deleted(p)) is not kept
    unclear = value.strip().lower() not in {"true", "yes", "y", "1", "on", "false", "no", "n", "0", "off", ""}
    said = [r.getMessage() for r in caplog.records if "not a yes or no" in r.getMessage()]
    assert len(said) == (1 if unclear else 0)
    if unclear:
        assert f"{value!r} on v1" in said[0]
        with caplog.at_level("WARNING"):
            caplog.clear()
            plan([version(1, 30, keep=value), version(2, 40), version(3, 50)], aliases={"rolling": 2})
        assert not [r for r in caplog.records if "not a yes or no" in r.getMessage()]  # said once
