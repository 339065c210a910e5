"""Training never waits on the server: outages of a real tracking server and of its database.

One ``mlflow server`` on its own PostgreSQL cluster, both stopped and started
again by the tests, in one scenario (each phase builds on the registry the
previous one left):

A. The server stops while a process saves: every save returns without its
   commit (the futures are pending), the spool holds only what retention keeps,
   the process is SIGKILLed during the outage, and the next start commits the
   spool in step order before anything else, nothing lost or committed twice.
B. The database stops under a running queue (the server answers HTTP 5xx):
   saves and run metrics keep going; when it is back the spool is committed in
   step order and the metrics logged meanwhile arrive.
C. ``close()`` during an outage waits its bounded time, leaves the spool for
   the next start and says so in one line; the next start commits it.

Then DDP: ``torchrun`` (gloo, 2 processes) trains while the server hangs
(SIGSTOP: requests time out instead of being refused); rank 0 never stalls, so
neither does rank 1, and the next start commits what rank 0 spooled.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.testing.server import LocalServer, free_port
from mlflow_ddsp.training.outbox import RunOutbox

from conftest import tiny_config
from registry_checks import LogSeen, versions_by_step

pytestmark = pytest.mark.slow

WRITER = textwrap.dedent('''
    import json, sys, torch
    from mlflow_ddsp import CheckpointQueue
    uri, name, experiment = sys.argv[1:4]
    model = torch.nn.Linear(4, 2)
    queue = CheckpointQueue(name, 10, 30, tracking_uri=uri, experiment=experiment)
    queue.save(10, model).result()
    print(json.dumps({"event": "committed", "step": 10}), flush=True)
    assert sys.stdin.readline().strip() == "server stopped"
    futures = {step: queue.save(step, model) for step in (20, 30, 40, 50)}
    queue._wait_written()  # the last save is on disk (what the spool listing below shows)
    spooled = sorted(int(p.name.split("-")[1]) for p in queue.spool.folder.iterdir() if p.name.startswith("step-"))
    print(json.dumps({"event": "spooled", "committed": [s for s, f in futures.items() if f.done() and f.result()],
                      "spool": spooled, "folder": str(queue.spool.folder)}), flush=True)
    sys.stdin.readline()  # killed here, during the outage
''')


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A PostgreSQL cluster and an MLflow server on it, both to be stopped by the tests."""
    from mlflow_ddsp.testing.postgres import LocalPostgres, find_postgres_bin

    if find_postgres_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/run installs it")
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    with LocalPostgres() as cluster:
        uri = cluster.create_database("mlflow")
        with LocalServer(tmp_path_factory.mktemp("outage-server"), backend_store_uri=uri) as server:
            yield cluster, server


def _spool_steps(queue: CheckpointQueue) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in queue.spool.folder.iterdir() if p.name.startswith("step-"))


def test_outages_of_the_server_and_its_database(stack, tmp_path, monkeypatch, caplog):
    cluster, server = stack
    name, experiment = "outage-voice", "outages"
    # MLflow's client retries a failing request for ~2 min by default; the queue's own
    # backoff takes over sooner here (the behaviour is the same, only faster).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)

    # -- A. the server stops; the writer is SIGKILLed during the outage ---------------
    writer = subprocess.Popen(
        [sys.executable, str(script), server.uri, name, experiment],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert json.loads(writer.stdout.readline()) == {"event": "committed", "step": 10}, writer.stderr.read()
        server.stop()
        writer.stdin.write("server stopped\n")
        writer.stdin.flush()
        spooled = json.loads(writer.stdout.readline())
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
    assert spooled["committed"] == []  # every save returned before its commit
    # Bounded: the force-save 30 and the newest rolling 50; 40 was superseded; 20 only
    # if the committer held it (in flight) when 30-50 were written.
    assert {30, 50} <= set(spooled["spool"]) <= {20, 30, 50}, spooled

    server.start()
    store = RegistryStore(server.uri)
    model = torch.nn.Linear(4, 2)
    with caplog.at_level(logging.WARNING, logger="mlflow_ddsp"):
        queue = CheckpointQueue(name, 10, 30, tracking_uri=server.uri, experiment=experiment, close_timeout=1)
    assert any("left by an earlier process" in r.getMessage() for r in caplog.records)
    assert queue.restore(model) == 50
    assert versions_by_step(store, name) == {30: "force_saved", 50: "rolling"}
    assert _spool_steps(queue) == [] and Path(spooled["folder"]) == queue.spool.folder

    # -- B. the database stops under the running queue (HTTP 5xx); metrics too ------------
    run_id = store.create_run(store.experiment_id(experiment), run_name="outage")
    outbox = RunOutbox(lambda points: store.log_metric_points(run_id, points))
    down = LogSeen.watch("failed the request (HTTP 5")
    cluster.interrupt()
    futures = [queue.save(60, model), queue.save(70, model)]
    for step in (60, 65, 70):
        outbox.log_metrics({"train/loss": 1.0 / step}, step)
    assert down.event.wait(timeout=120), "the committer never met the outage"
    assert not any(f.done() for f in futures)
    cluster.resume()
    assert queue.flush().step == 70
    assert versions_by_step(store, name) == {30: "force_saved", 60: "force_saved", 70: "rolling"}
    report = outbox.close(timeout=60)
    assert report.complete, report.describe()
    history = store.client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [60, 65, 70]

    # -- C. close() during an outage: bounded, the spool is left for the next start --------
    down = LogSeen.watch("failed the request (HTTP 5")
    cluster.interrupt()
    queue.save(80, model)
    assert down.event.wait(timeout=120)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mlflow_ddsp"):
        queue.close()  # close_timeout=1: returns although the database is down
    assert [e.step for e in queue.left_in_spool] == [80]
    line = next(r.getMessage() for r in caplog.records if "stay in the spool" in r.getMessage())
    assert "\n" not in line and "step 80" in line
    cluster.resume()
    # The abandoned lease is stale at once for a new process (its holder is gone); this
    # process still lives, so it takes over explicitly.
    with CheckpointQueue(name, 10, 30, tracking_uri=server.uri, experiment=experiment, takeover=True) as again:
        assert again.restore(model) == 80
        assert _spool_steps(again) == []
    assert versions_by_step(store, name) == {30: "force_saved", 60: "force_saved", 80: "rolling"}


def test_data_parallel_training_then_a_resume_that_goes_on_while_the_server_hangs(stack, demo_data, tmp_path, monkeypatch):
    """Two processes (gloo on the CPU). First run: rank 0 logs and saves once. The rerun resumes both
    ranks from rank 0's checkpoint; the server hangs after its first save there, and training ends
    without waiting on it."""
    cluster, server = stack
    name = "ddp-voice"
    config = tiny_config(demo_data, tmp_path / "tiny.yaml", name, interval_log=2, interval_val=4,
                         interval_force_save=8, max_steps=8)  # fmt: skip
    monkeypatch.setenv("MLFLOW_DDSP_CLOSE_TIMEOUT", "2")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), "-m", "mlflow_ddsp", "--tracking-uri", server.uri, "train", "-c", str(config)]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count(f"trained {name} from step 0 to 8") == 1  # one summary, from rank 0
    store = RegistryStore(server.uri)
    assert versions_by_step(store, name) == {8: "force_saved"}
    client = store.client
    runs = client.search_runs([store.experiment_id(f"exp-{name}")])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] == [2, 4, 6, 8]

    job = subprocess.Popen(command + ["--set", "train.max_steps=20"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=tmp_path)  # fmt: skip
    errors: list[str] = []
    try:
        for line in job.stderr:  # rank 0's log: its first checkpoint is queued, the server hangs from here on
            errors.append(line)
            if "step 12: validation loss" in line:
                server.pause()
                break
        else:
            pytest.fail("training ended before its first checkpoint: " + "".join(errors[-30:]))
        # A stall would cost MLflow's request timeout (120 s) per save: 2 saves follow.
        out, rest = job.communicate(timeout=240)
    finally:
        job.kill()
        server.resume()
    assert job.returncode == 0, (errors + [rest])[-1][-3000:]
    assert out.count(f"trained {name} from step 8 to 20") == 1
    last = out.splitlines()[-1]
    assert "; not committed yet: " in last and "20" in last, last

    # The next start (its lease holder is gone) commits what rank 0 spooled.
    with CheckpointQueue(name, 4, 8, tracking_uri=server.uri, experiment=f"exp-{name}") as queue:
        assert queue.restore(torch.nn.Module(), strict=False) == 20
    assert versions_by_step(store, name) == {8: "force_saved", 16: "force_saved", 20: "rolling"}
