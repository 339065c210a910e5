"""The reconcile planner on hand-made registry snapshots: pure logic, no MLflow."""

from mlflow_ddsp.checkpoint.reconcile import RegistrySnapshot, plan_reconcile
from mlflow_ddsp.checkpoint.records import CheckpointVersion, QueueModel
from mlflow_ddsp import tags as T


def version(number: int, step: int, kind: str = T.KIND_ROLLING, ours: bool = True) -> CheckpointVersion:
    tags = {T.STEP: str(step), T.KIND: kind} if ours else {}
    return CheckpointVersion("voice", number, f"models:/m-{number:04d}", "run", 0, tags)


def files(model_number: int, status: str = "READY") -> QueueModel:
    return QueueModel(f"m-{model_number:04d}", status, "file:///x", 0, {T.STEP: "1"})


def plan(versions, alias, models=(), broken=()):
    snapshot = RegistrySnapshot(versions, alias, models)
    return plan_reconcile(snapshot, lambda v: v.version not in broken)


def test_consistent_queue_needs_nothing():
    vs = [version(1, 30, T.KIND_FORCE_SAVED), version(3, 50)]
    p = plan(vs, alias=3, models=[files(1), files(3)])
    assert p.is_empty and p.alias_target.version == 3


def test_crash_after_register_moves_alias_and_retires_previous():
    vs = [version(1, 30, T.KIND_FORCE_SAVED), version(2, 40), version(3, 50)]
    p = plan(vs, alias=2, models=[files(1), files(2), files(3)])
    assert p.move_alias and p.alias_target.version == 3
    assert [v.version for v in p.delete_versions] == [2]
    assert p.delete_models == ()  # v2's files go with v2


def test_crash_after_alias_retires_stale_rolling():
    vs = [version(2, 40), version(3, 50)]
    p = plan(vs, alias=3)
    assert not p.move_alias
    assert [v.version for v in p.delete_versions] == [2]


def test_unfinished_and_orphaned_uploads_are_removed():
    vs = [version(3, 50)]
    p = plan(vs, alias=3, models=[files(3), files(7, "PENDING"), files(8, "READY")])
    assert sorted(m.model_id for m in p.delete_models) == ["m-0007", "m-0008"]


def test_broken_newest_rolling_falls_back_to_force_saved():
    vs = [version(1, 30, T.KIND_FORCE_SAVED), version(3, 50)]
    p = plan(vs, alias=3, broken={3})
    assert p.alias_target.version == 1 and p.move_alias
    assert [v.version for v in p.delete_versions] == [3]


def test_broken_force_saved_is_kept_and_reported():
    vs = [version(1, 30, T.KIND_FORCE_SAVED), version(4, 60, T.KIND_FORCE_SAVED)]
    p = plan(vs, alias=4, broken={4})
    assert p.alias_target.version == 1
    assert p.delete_versions == ()
    assert [v.version for v in p.damaged_force_saved] == [4]


def test_dangling_alias_is_repointed_and_missing_alias_is_set():
    vs = [version(1, 30, T.KIND_FORCE_SAVED)]
    assert plan(vs, alias=9).alias_target.version == 1
    assert plan(vs, alias=None).move_alias


def test_nothing_intact_drops_the_alias():
    p = plan([version(3, 50)], alias=3, broken={3})
    assert p.move_alias and p.alias_target is None
    assert plan([], alias=None).is_empty


def test_versions_not_written_by_the_queue_are_never_touched():
    foreign = version(5, 0, ours=False)
    p = plan([foreign, version(6, 10)], alias=6)
    assert p.is_empty


def test_newest_is_the_latest_registration_not_the_highest_step():
    # Fine-tuning from an older pinned version re-saves lower steps: what training
    # produced last is the newest checkpoint, and must not be deleted as stale.
    vs = [version(7, 50, T.KIND_FORCE_SAVED), version(9, 40)]
    p = plan(vs, alias=9)
    assert p.is_empty and p.alias_target.version == 9
