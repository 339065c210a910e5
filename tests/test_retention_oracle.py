"""What the queue keeps, against upstream DDSP-SVC's file rule applied literally.

Each case trains ``steps`` steps saving at every validation step, closing and
re-opening the queue at each ``resumes`` step (resuming from the registry, as
a crashed or stopped job would). The registry must end up holding exactly the
steps upstream's checkpoint folder would hold, with the alias on the newest.
The same oracle, widened by our two options (``keep_last``: the newest N
saves stay; ``best``: the best-ever value by a metric stays, ties to the earlier
step), covers force-save x keep_last x best x resumes.
"""

from __future__ import annotations

import pytest
import torch

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.store import RegistryStore

from registry_checks import assert_invariants, versions_by_step


def loss_at(step: int) -> float:
    """A validation loss that goes up and down and repeats values (ties)."""
    return ((step * 7919) % 13) / 10


def upstream_kept_steps(interval_val: int, interval_force_save: int | None, steps: int, resumes=()) -> set[int]:
    """Upstream's rule, literally: at each validation step ``s`` write ``model_<s>.pt``, then
    delete ``model_<s - interval_val>.pt`` unless ``(s - interval_val) % interval_force_save == 0``.
    A resume restarts from the highest file. (``None`` is our "never force-save".)"""
    files: set[int] = set()
    pending_resumes = sorted(resumes)
    step = 0
    while step < steps:
        step += 1
        if step % interval_val == 0:
            files.add(step)
            last = step - interval_val
            if interval_force_save is None or last % interval_force_save != 0:
                files.discard(last)
        if pending_resumes and step == pending_resumes[0]:
            pending_resumes.pop(0)
            step = max(files, default=0)
    return files


def widened_kept_steps(
    interval_val: int, interval_force_save: int | None, steps: int, resumes=(), keep_last: int = 1,
    best: str | None = None,
) -> set[int]:
    """Our rule as sets, after every save: every force-save step, the newest ``keep_last``
    saves, and with ``best`` ("min"/"max") the save with the best ``loss_at`` so far (ties:
    the earlier step). A resume restarts from the newest save. Equal to upstream's literal
    rule with the defaults (tested below)."""
    saved: list[int] = []
    files: set[int] = set()
    pending_resumes = sorted(resumes)
    step = 0
    while step < steps:
        step += 1
        if step % interval_val == 0:
            saved.append(step)
            files = {s for s in saved if interval_force_save is not None and s % interval_force_save == 0}
            files |= set(saved[-keep_last:])
            if best is not None:
                sign = 1 if best == "min" else -1
                files.add(min(saved, key=lambda s: (sign * loss_at(s), s)))
        if pending_resumes and step == pending_resumes[0]:
            pending_resumes.pop(0)
            step = max(saved[-1:], default=0)
    return files


CASES = [
    dict(interval_val=1, interval_force_save=None, steps=5),
    dict(interval_val=1, interval_force_save=1, steps=4, resumes=[2]),
    dict(interval_val=2, interval_force_save=4, steps=21),
    dict(interval_val=2, interval_force_save=6, steps=25, resumes=[7, 13]),
    dict(interval_val=3, interval_force_save=9, steps=30, resumes=[9]),  # resume right at a force-save
    dict(interval_val=5, interval_force_save=5, steps=26, resumes=[11]),
    dict(interval_val=10, interval_force_save=None, steps=55, resumes=[25, 41]),
    dict(interval_val=10, interval_force_save=20, steps=9),  # shorter than interval_val: nothing
    dict(interval_val=100, interval_force_save=300, steps=1000, resumes=[450]),
    dict(interval_val=7, interval_force_save=21, steps=64, resumes=[20, 21, 22]),  # resumes in a row
    dict(interval_val=4, interval_force_save=8, steps=40, resumes=[3]),  # resume before any save
]


def run_case(backend, name: str, interval_val, interval_force_save, steps, resumes=(), keep_last=1, best=None) -> None:
    model = torch.nn.Linear(2, 2)

    def open_queue() -> CheckpointQueue:
        return CheckpointQueue(
            name, interval_val, interval_force_save, tracking_uri=backend.uri, experiment=backend.experiment,
            keep_last=keep_last, best_metric="validation/loss" if best else None, best_mode=best or "min",
        )  # fmt: skip

    pending_resumes = sorted(resumes)
    queue = open_queue()
    step = queue.restore(model)
    while step < steps:
        step += 1
        with torch.no_grad():
            model.weight.add_(0.01)  # "training"
        if step % interval_val == 0:
            queue.save(step, model, metrics={"validation/loss": loss_at(step)})
        if pending_resumes and step == pending_resumes[0]:
            pending_resumes.pop(0)
            queue.close()
            queue = open_queue()
            step = queue.restore(model)
    queue.close()


@pytest.mark.parametrize("case", CASES, ids=lambda c: "iv{interval_val}-fs{interval_force_save}-n{steps}".format(**c))
def test_registry_keeps_what_upstream_keeps(case, embedded, model_name):
    run_case(embedded, model_name, **case)
    expected = widened_kept_steps(**case)
    store = RegistryStore(embedded.uri)
    kept = versions_by_step(store, model_name) if store.registered_model_exists(model_name) else {}
    assert set(kept) == expected
    if expected:
        assert assert_invariants(store, embedded, model_name) == max(expected)
        # force-saved = kept forever; only the newest may be a plain rolling checkpoint
        assert {s for s, kind in kept.items() if kind == "rolling"} <= {max(expected)}


# force-save x keep_last x best x resumes
RETENTION_CASES = [
    dict(interval_val=2, interval_force_save=6, steps=25, resumes=[7, 13], keep_last=3),
    dict(interval_val=2, interval_force_save=6, steps=25, resumes=[7, 13], keep_last=2, best="min"),
    dict(interval_val=10, interval_force_save=None, steps=95, resumes=[25, 41], best="min"),
    dict(interval_val=10, interval_force_save=None, steps=95, resumes=[50], keep_last=3, best="max"),
    dict(interval_val=5, interval_force_save=5, steps=26, resumes=[11], keep_last=4, best="min"),
    dict(interval_val=3, interval_force_save=9, steps=30, resumes=[9], keep_last=2),
    dict(interval_val=1, interval_force_save=None, steps=14, keep_last=5, best="min"),
    dict(interval_val=7, interval_force_save=21, steps=64, resumes=[20, 21, 22], keep_last=2, best="min"),
    dict(interval_val=4, interval_force_save=8, steps=40, resumes=[3], keep_last=1, best="max"),
]


@pytest.mark.parametrize(
    "case", RETENTION_CASES,
    ids=lambda c: "iv{interval_val}-fs{interval_force_save}-n{steps}".format(**c)
    + f"-keep{c.get('keep_last', 1)}-best{c.get('best')}",
)  # fmt: skip
def test_keep_last_and_best_keep_what_the_widened_rule_keeps(case, embedded, model_name):
    run_case(embedded, model_name, **case)
    expected = widened_kept_steps(**case)
    store = RegistryStore(embedded.uri)
    kept = versions_by_step(store, model_name)
    assert set(kept) == expected
    assert store.get_version(model_name, store.alias_version(model_name, "rolling")).step == max(expected)
    if case.get("best"):
        sign = 1 if case["best"] == "min" else -1
        winner = min(expected, key=lambda s: (sign * loss_at(s), s))
        assert store.get_version(model_name, store.alias_version(model_name, "best")).step == winner
    assert_invariants(store, embedded, model_name, max_rolling=case.get("keep_last", 1) + bool(case.get("best")))


def test_widened_oracle_is_upstreams_rule_with_the_defaults():
    for case in CASES:
        assert widened_kept_steps(**case) == upstream_kept_steps(**case)
    # keep_last=3 at interval 10, no force-saves, 55 steps: saves 10..50, the newest three stay.
    assert widened_kept_steps(10, None, 55, keep_last=3) == {30, 40, 50}


# Through a server: the widened keep_last + best case, with resumes (every case runs on the
# embedded store above; the suite's time budget keeps this list short).
@pytest.mark.server
@pytest.mark.parametrize("case", [RETENTION_CASES[1]], ids=["keep2-best"])
def test_registry_keeps_what_upstream_keeps_through_server(case, mlflow_server, model_name):
    from conftest import Backend

    backend = Backend("server", mlflow_server.uri, mlflow_server.artifacts_dir, f"exp-{model_name}")
    run_case(backend, model_name, **case)
    store = RegistryStore(backend.uri)
    assert set(versions_by_step(store, model_name)) == widened_kept_steps(**case)
    assert_invariants(store, backend, model_name, max_rolling=case.get("keep_last", 1) + bool(case.get("best")))


def test_oracle_matches_the_documented_lcm_consequence():
    # The oracle itself: upstream with 2000/3000 keeps only multiples of 6000 (+ the newest).
    assert upstream_kept_steps(2000, 3000, 20000) == {6000, 12000, 18000, 20000}
