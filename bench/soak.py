"""Soak: many save cycles through the CheckpointQueue against a local `mlflow server`.

Starts its own services (temporary folders, all torn down at the end, also on
Ctrl-C): a throwaway PostgreSQL cluster (``--backends postgres``), a SeaweedFS S3
gateway (``--artifacts s3``, proxied by the server) and one `mlflow server` per
backend. Each backend runs the same number of cycles; one cycle trains a small
MLP one step, then ``queue.save(step, model, optimizer, metrics=...)`` and
``queue.flush()``, so every request the server receives in that window belongs
to that save. Printed per backend:

* versions in the registry vs the retention policy's expectation (every
  force-saved step plus the newest ``keep_last``, computed from
  :class:`~mlflow_ddsp.checkpoint.RetentionPolicy`), the rolling alias, and a
  byte-for-byte check of every kept version;
* bytes in the artifact store (the bucket listed, or the folder walked) after
  the first 100 cycles and at the end, and per kept version (force-saves grow
  the store linearly, rolling saves must not);
* orphans: LoggedModels of the queue that no version uses, and artifact
  folders (``models/<id>``) or other objects that no live version owns;
* the RSS slope of this process and of the server's processes (MB per 100
  cycles, least squares over samples every 10 cycles), the database size, and
  the seconds per save of the first vs the last 100 cycles;
* MLflow requests per save, counted in the server's own uvicorn access log
  (one line per request; `mlflow server` logs them by default), by endpoint.

    python bench/soak.py [--cycles 1000] [--backends sqlite postgres] [--artifacts s3|disk]

Exits 1 when a check fails (versions, alias, integrity, orphans, unbounded bytes).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/calibration.py, also when loaded by path
import calibration  # noqa: E402  first, before torch: OMP_WAIT_POLICY is read when torch loads libgomp

import argparse
import collections
import contextlib
import logging
import re
import signal
import statistics
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from mlflow_ddsp.checkpoint import DEFAULT_ALIAS, CheckpointQueue, RegistryStore, RetentionPolicy
from mlflow_ddsp.checkpoint.audit import audit_queue
from mlflow_ddsp.testing.server import LocalServer

BUCKET = "mlflow-ddsp-soak"
RSS_EVERY = 10  # cycles between RSS samples
WINDOW = 100  # cycles: bytes measured after the first WINDOW, times compared over the first and last WINDOW
# (shorter soaks: half their cycles)
BOUNDED_TOLERANCE = 0.10  # bytes per kept version may differ this much between the two measurements


# -- what the soak runs against --------------------------------------------------------------
@dataclass
class Target:
    """A running `mlflow server` and how to look at what it stored.

    ``list_objects(experiment_id)`` returns every stored object below the
    experiment's artifact root (``<key below the root>: size in bytes``), from the
    folder on disk or a listing of the bucket.
    """

    label: str
    uri: str
    access_log: Path  # the server's log file: uvicorn writes one access line per request into it
    list_objects: Callable[[str], dict[str, int]]
    server_pid: int | None = None  # leader of the server's process group (its RSS is summed)
    database_bytes: Callable[[], int] | None = None


def disk_objects(artifacts_dir: Path) -> Callable[[str], dict[str, int]]:
    """Objects of a server with proxied artifacts in ``artifacts_dir`` (``<dir>/<experiment id>/...``)."""

    def objects(experiment_id: str) -> dict[str, int]:
        root = Path(artifacts_dir) / experiment_id
        if not root.is_dir():
            return {}
        return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}

    return objects


def bucket_objects(object_store, bucket: str, prefix: str) -> Callable[[str], dict[str, int]]:
    """Objects of a server whose ``--artifacts-destination`` is ``s3://<bucket>/<prefix>``."""

    def objects(experiment_id: str) -> dict[str, int]:
        root = f"{prefix}/{experiment_id}/"
        return {k[len(root):]: n for k, n in object_store.keys(bucket, root).items()}

    return objects


def server_target(label: str, server: LocalServer, list_objects=None, database_bytes=None) -> Target:
    """A :class:`Target` for a :class:`LocalServer` (default: its artifacts folder and SQLite file)."""
    if database_bytes is None and server.backend_store_uri == f"sqlite:///{server.db_path}":
        database_bytes = sqlite_size(server.db_path)
    return Target(label, server.uri, server.log_path, list_objects or disk_objects(server.artifacts_dir),
                  server.pid, database_bytes)  # fmt: skip


def sqlite_size(db_path: Path) -> Callable[[], int]:
    def size() -> int:
        return sum(p.stat().st_size for p in (db_path, db_path.with_name(db_path.name + "-wal")) if p.exists())

    return size


def postgres_size(uri: str) -> Callable[[], int]:
    def size() -> int:
        import psycopg

        with psycopg.connect(uri) as conn:
            return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])

    return size


# -- counting what the server received ----------------------------------------------------------
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3})')
_MODEL_ID = re.compile(r"m-[0-9a-f]{32}")


def endpoint(method: str, target: str) -> str:
    """``GET registered-models/get``, ``PUT artifact`` ...: one name per MLflow endpoint."""
    path = target.split("?", 1)[0]
    if path.startswith("/api/2.0/mlflow-artifacts/artifacts"):
        return f"{method} artifact" + (" list" if path == "/api/2.0/mlflow-artifacts/artifacts" else "")
    for prefix in ("/api/2.0/mlflow/", "/api/3.0/mlflow/", "/ajax-api/2.0/mlflow/"):
        if path.startswith(prefix):
            path = path[len(prefix):]
            break
    return f"{method} {_MODEL_ID.sub('{id}', path)}"


class AccessLog:
    """Reads the requests a server answered, as uvicorn logs them (``"GET /path HTTP/1.1" 200``).

    Uvicorn writes the line when the response starts, before the client reads
    it: when a call has returned, its requests are in the log.
    """

    def __init__(self, path: Path):
        self._file = open(path, "rb")
        self._file.seek(0, os.SEEK_END)
        self._partial = b""

    def take(self) -> collections.Counter:
        """Requests logged since the last call: ``(endpoint, status) -> count``."""
        data = self._partial + self._file.read()
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out: collections.Counter = collections.Counter()
        for raw in lines:
            match = _ACCESS.search(raw.decode("utf-8", "replace"))
            if match:
                out[(endpoint(match["method"], match["target"]), int(match["status"]))] += 1
        return out

    def close(self) -> None:
        self._file.close()


# -- memory ------------------------------------------------------------------------------------
def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process in MB (``VmRSS`` of ``/proc/<pid>/status``; 0 if gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def group_rss_mb(pgid: int) -> float:
    """Summed RSS of every process in process group ``pgid`` (a server and its workers)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # state, ppid, pgrp
            total += rss_mb(entry)
    return total


def slope_per_100(samples: Sequence[tuple[int, float]]) -> float | None:
    """Least-squares slope of ``(cycle, MB)`` samples, in MB per 100 cycles (None with < 2 samples)."""
    if len(samples) < 2:
        return None
    xs, ys = [x for x, _ in samples], [y for _, y in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 100 * sum((x - mx) * (y - my) for x, y in samples) / var if var else None


# -- the policy's expectation ------------------------------------------------------------------
def expected_steps(policy: RetentionPolicy, steps: Iterable[int]) -> set[int]:
    """The steps the policy keeps after saving ``steps`` in order: every force-saved one
    (:meth:`RetentionPolicy.is_force_save`) and the newest ``keep_last`` (policy.py's rule;
    no ``best_metric`` here)."""
    steps = list(steps)
    return {s for s in steps if policy.is_force_save(s)} | set(steps[-policy.keep_last:])


# -- the soak ----------------------------------------------------------------------------------
@dataclass
class StoreState:
    cycle: int
    versions: int
    bytes: int


@dataclass
class SoakReport:
    label: str
    cycles: int
    policy: RetentionPolicy
    parameters: int
    steps: list[int]  # steps of the live versions
    expected: set[int]
    alias_step: int | None
    intact: int
    kept: int
    early: StoreState
    end: StoreState
    orphaned_models: list[str]
    orphaned_prefixes: list[str]
    stray_objects: list[str]
    missing_bytes: list[int]  # steps of live versions with no object in the store
    cycle_seconds: list[float]
    requests: list[int]  # per cycle
    endpoints: collections.Counter  # (endpoint, status) -> count over all cycles
    start_requests: int
    close_requests: int
    client_rss: list[tuple[int, float]]
    server_rss: list[tuple[int, float]] = field(default_factory=list)
    database: tuple[int, int] | None = None  # bytes at the early measurement and at the end
    wall_seconds: float = 0.0
    # s/save of saves alternating between this model (with its history) and a fresh one, after the soak
    control: tuple[list[float], list[float]] | None = None

    @property
    def versions_ok(self) -> bool:
        return set(self.steps) == self.expected and len(self.steps) == len(self.expected)

    @property
    def alias_ok(self) -> bool:
        return self.alias_step == max(self.expected, default=None)

    @property
    def orphans(self) -> int:
        return len(self.orphaned_models) + len(self.orphaned_prefixes) + len(self.stray_objects)

    @property
    def per_version_growth(self) -> float | None:
        """Bytes per kept version at the end / after the first cycles (1.0: bounded)."""
        if not (self.early.versions and self.end.versions and self.early.bytes):
            return None
        return (self.end.bytes / self.end.versions) / (self.early.bytes / self.early.versions)

    @property
    def bounded(self) -> bool:
        growth = self.per_version_growth
        return growth is not None and abs(growth - 1) <= BOUNDED_TOLERANCE

    @property
    def ok(self) -> bool:
        return (self.versions_ok and self.alias_ok and self.intact == self.kept and self.orphans == 0
                and not self.missing_bytes and self.bounded)  # fmt: skip

    def lines(self) -> list[str]:
        p = self.policy
        verdict = lambda good: "OK" if good else "MISMATCH"  # noqa: E731 (one line, used inline)
        force = sorted(s for s in self.expected if p.is_force_save(s))
        window = len(self._first())
        lines = [
            f"== {self.label}: {self.cycles} save cycles, MLP of {self.parameters:,} parameters + AdamW state, "
            f"interval_val={p.interval_val}, interval_force_save={p.interval_force_save}, keep_last={p.keep_last}",
            f"versions        {len(self.steps)} in the registry, {len(self.expected)} expected by the policy "
            f"(the {len(force)} force-saved steps and the newest {p.keep_last}, {len(self.expected)} distinct): "
            f"{verdict(self.versions_ok)}"
            + ("" if self.versions_ok else f" (registry steps {_steps(self.steps)}, expected {_steps(self.expected)})"),
            f"alias           {DEFAULT_ALIAS} -> step {self.alias_step} "
            f"(newest expected: {max(self.expected, default=None)}): {verdict(self.alias_ok)}",
            f"integrity       {self.intact}/{self.kept} kept versions intact (every file against its sha256): "
            f"{verdict(self.intact == self.kept)}",
            f"artifact bytes  after {self.early.cycle} cycles: {self.early.bytes:,} B in {self.early.versions} "
            f"versions ({_per(self.early)}/version); after {self.end.cycle}: {self.end.bytes:,} B in "
            f"{self.end.versions} versions ({_per(self.end)}/version): "
            + (f"{'OK' if self.bounded else 'GROWING'} (x{self.per_version_growth:.3f} per kept version)"
               if self.per_version_growth is not None else "n/a"),
            f"orphans         LoggedModels without a version: {len(self.orphaned_models)}; artifact folders "
            f"without a version: {len(self.orphaned_prefixes)}; other objects: {len(self.stray_objects)}; "
            f"kept versions without bytes: {len(self.missing_bytes)}: "
            f"{verdict(self.orphans == 0 and not self.missing_bytes)}",
        ]
        listed = (("  orphaned LoggedModel", self.orphaned_models), ("  orphaned folder", self.orphaned_prefixes),
                  ("  stray object", self.stray_objects))  # fmt: skip
        for title, items in listed:
            lines += [f"{title} {item}" for item in items[:10]]
        lines.append(f"client RSS      {_rss(self.client_rss)}")
        if self.server_rss:
            lines.append(f"server RSS      {_rss(self.server_rss)} (mlflow server and its workers)")
        if self.database is not None:
            a, b = self.database
            per = (b - a) / max(1, self.end.cycle - self.early.cycle)
            lines.append(f"database        {a:,} B after {self.early.cycle} cycles, {b:,} B after {self.end.cycle} "
                         f"({per:,.0f} B per save in between)")  # fmt: skip
        first, last = statistics.fmean(self._first()), statistics.fmean(self.cycle_seconds[-window:])
        lines.append(f"time            first {window} cycles {first:.3f} s/save, last {window} {last:.3f} s/save "
                     f"(x{last / first:.2f}); median {statistics.median(self.cycle_seconds):.3f} s/save; "
                     f"{self.wall_seconds:.0f} s wall for this backend")  # fmt: skip
        if self.control:
            soaked, fresh = (statistics.median(c) for c in self.control)
            lines.append(f"history         {len(self.control[0])} more saves each, alternating between this model "
                         f"({self.cycles} saves of history) and a fresh one on the same server: medians {soaked:.3f} "
                         f"vs {fresh:.3f} s/save (x{soaked / fresh:.2f})")  # fmt: skip
        errors = sum(n for (_, status), n in self.endpoints.items() if status >= 400)
        lines.append(
            f"requests        {statistics.fmean(self.requests):.2f} per save (min {min(self.requests)}, max "
            f"{max(self.requests)}; first {window} {statistics.fmean(self.requests[:window]):.2f}, last {window} "
            f"{statistics.fmean(self.requests[-window:]):.2f}), counted in the server's uvicorn access log; "
            f"queue start {self.start_requests}, close {self.close_requests}; non-2xx during saves: {errors}"
        )
        by_name: collections.Counter = collections.Counter()
        for (name, status), n in self.endpoints.items():
            by_name[name if status < 400 else f"{name} -> {status}"] += n
        parts = [f"{name} {n / self.cycles:.2f}" for name, n in by_name.most_common()]
        for i in range(0, len(parts), 4):
            lines.append(("  per save:     " if i == 0 else "                ") + ", ".join(parts[i:i + 4]))
        lines.append(f"verdict         {'OK' if self.ok else 'PROBLEM'}")
        return lines

    def _first(self) -> list[float]:
        return self.cycle_seconds[: min(WINDOW, max(1, self.cycles // 2))]


def _steps(steps: Iterable[int]) -> str:
    steps = sorted(steps)
    return ", ".join(map(str, steps)) if len(steps) <= 12 else f"{', '.join(map(str, steps[:10]))}, ... {steps[-1]}"


def _per(state: StoreState) -> str:
    return f"{state.bytes / state.versions:,.0f} B" if state.versions else "-"


def _rss(samples: Sequence[tuple[int, float]]) -> str:
    """The slope over all samples and over the second half (after any warm-up), and the end points."""
    slope, late = slope_per_100(samples), slope_per_100(samples[len(samples) // 2:])
    shown = f"{slope:+.2f} MB per 100 cycles" if slope is not None else "slope n/a"
    if late is not None and len(samples) >= 8:
        shown += f" ({late:+.2f} over the second half)"
    return (f"{shown}, least squares over {len(samples)} samples every {RSS_EVERY} cycles; "
            f"{samples[0][1]:.0f} MB at the start, {samples[len(samples) // 2][1]:.0f} halfway, "
            f"{samples[-1][1]:.0f} at the end")  # fmt: skip


def _model(width: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, width))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, width: int) -> float:
    loss = model(torch.randn(8, width)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def soak(
    target: Target,
    cycles: int,
    *,
    interval_val: int = 1,
    interval_force_save: int | None = 100,
    keep_last: int = 1,
    width: int = 256,
    progress_every: int = 50,
    control: int = 0,
    out: Callable[[str], None] = print,
) -> SoakReport:
    """Run ``cycles`` save cycles into a new registered model and experiment on ``target``.

    Returns the report (its :meth:`SoakReport.lines` print it). Progress lines go to ``out``.
    ``control``: after the soak is measured, that many more saves into this model and into a
    fresh one, alternating (A, B, A, B...): whether a save is slower because of the history,
    with the machine's load the same for both.
    """
    if cycles < 1:
        raise ValueError(f"cycles={cycles} must be >= 1")
    policy = RetentionPolicy(interval_val, interval_force_save, keep_last)
    started = time.perf_counter()
    early_cycle = min(WINDOW, max(1, cycles // 2))
    store = RegistryStore(target.uri)
    tag = uuid.uuid4().hex[:8]
    name = f"soak-{tag}"
    experiment_id = store.experiment_id(f"soak-{tag}")
    run_id = store.create_run(experiment_id, f"soak-{cycles}")
    model, optimizer = _model(width)
    access = AccessLog(target.access_log)
    times: list[float] = []
    requests: list[int] = []
    endpoints: collections.Counter = collections.Counter()
    client_rss: list[tuple[int, float]] = []
    server_rss: list[tuple[int, float]] = []
    early = None
    db_early = None
    config = {"soak": {"cycles": cycles, "width": width}}

    def sample_rss(cycle: int) -> None:
        client_rss.append((cycle, rss_mb()))
        if target.server_pid:
            server_rss.append((cycle, group_rss_mb(target.server_pid)))

    def store_state(cycle: int) -> StoreState:
        versions = len(store.list_versions(name))
        return StoreState(cycle, versions, sum(target.list_objects(experiment_id).values()))

    try:
        with CheckpointQueue(name, interval_val, interval_force_save, keep_last=keep_last, save_optimizer=True,
                             store=store, run_id=run_id, config=config) as queue:  # fmt: skip
            start_requests = sum(access.take().values())
            sample_rss(0)
            for cycle in range(1, cycles + 1):
                step = cycle * interval_val
                loss = _train_step(model, optimizer, width)
                t = time.perf_counter()
                queue.save(step, model, optimizer, metrics={"validation/loss": loss})
                queue.flush()
                times.append(time.perf_counter() - t)
                counted = access.take()
                requests.append(sum(counted.values()))
                endpoints.update(counted)
                if cycle % RSS_EVERY == 0 or cycle == cycles:
                    sample_rss(cycle)
                if cycle == early_cycle:  # the bench's own requests are not counted as the saves'
                    early = store_state(cycle)
                    db_early = target.database_bytes() if target.database_bytes else None
                    access.take()
                if cycle % progress_every == 0 or cycle == cycles:
                    window = times[-progress_every:]
                    out(f"  {target.label}: cycle {cycle}/{cycles}, {statistics.fmean(window):.3f} s/save and "
                        f"{statistics.fmean(requests[-progress_every:]):.1f} requests/save over the last "
                        f"{len(window)}, RSS {client_rss[-1][1]:.0f} MB, "
                        f"{time.perf_counter() - started:.0f} s")  # fmt: skip
        close_requests = sum(access.take().values())
    finally:
        access.close()
    store.end_run(run_id)

    versions = store.list_versions(name)
    _, aliases = store.registered_model(name)
    by_number = {v.version: v for v in versions}
    rolling = by_number.get(aliases.get(DEFAULT_ALIAS, -1))
    audit = audit_queue(store, name, deep=True)
    objects = target.list_objects(experiment_id)
    referenced = {v.model_id for v in versions if v.model_id}
    models = store.queue_models(name, [experiment_id])
    folders: dict[str, int] = collections.Counter()
    stray = []
    for key in objects:
        parts = key.split("/")
        if len(parts) >= 3 and parts[0] == "models" and _MODEL_ID.fullmatch(parts[1]):
            folders[parts[1]] += 1
        else:
            stray.append(key)
    end = StoreState(cycles, len(versions), sum(objects.values()))
    history = None
    if control:
        history = _control(store, name, policy, experiment_id, cycles, control, model, optimizer, width)
    return SoakReport(
        label=target.label, cycles=cycles, policy=policy,
        parameters=sum(p.numel() for p in model.parameters()),
        steps=[v.step for v in versions],
        expected=expected_steps(policy, [c * interval_val for c in range(1, cycles + 1)]),
        alias_step=rolling.step if rolling else None,
        intact=sum(1 for a in audit.versions if a.intact), kept=len(audit.versions),
        early=early, end=end,
        orphaned_models=sorted(m.model_id for m in models if m.model_id not in referenced),
        orphaned_prefixes=sorted(f"models/{f}" for f in folders if f not in referenced),
        stray_objects=sorted(stray),
        missing_bytes=sorted(v.step for v in versions if v.model_id not in folders),
        cycle_seconds=times, requests=requests, endpoints=endpoints,
        start_requests=start_requests, close_requests=close_requests,
        client_rss=client_rss, server_rss=server_rss,
        database=(db_early, target.database_bytes()) if target.database_bytes and db_early is not None else None,
        wall_seconds=time.perf_counter() - started, control=history,
    )  # fmt: skip


def _control(store, name, policy, experiment_id, cycles, saves, model, optimizer, width):
    """``saves`` saves alternating between queue ``name`` (continuing after ``cycles``) and a fresh queue."""
    iv = policy.interval_val
    fresh_run = store.create_run(experiment_id, f"{name}-control")
    options = dict(interval_val=iv, interval_force_save=policy.interval_force_save, keep_last=policy.keep_last,
                   save_optimizer=True, store=store)  # fmt: skip
    times: tuple[list[float], list[float]] = ([], [])
    with CheckpointQueue(name, run_id=store.create_run(experiment_id, f"{name}-continued"), **options) as soaked, \
            CheckpointQueue(f"{name}-control", run_id=fresh_run, **options) as fresh:  # fmt: skip
        for k in range(1, saves + 1):
            for queue, step, out in ((soaked, (cycles + k) * iv, times[0]), (fresh, k * iv, times[1])):
                loss = _train_step(model, optimizer, width)
                t = time.perf_counter()
                queue.save(step, model, optimizer, metrics={"validation/loss": loss})
                queue.flush()
                out.append(time.perf_counter() - t)
    return times


# -- the command line --------------------------------------------------------------------------
def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=1000, help="save cycles per backend (default 1000)")
    parser.add_argument("--backends", nargs="+", choices=["sqlite", "postgres"], default=["sqlite", "postgres"],
                        help="the server's backend store(s), each run on the same cycle count (default both)")
    parser.add_argument("--artifacts", choices=["s3", "disk"], default="s3",
                        help="proxied artifacts in a SeaweedFS bucket (default) or in a folder")
    parser.add_argument("--interval-force-save", type=int, default=100, help="steps between force-saves (default 100)")
    parser.add_argument("--keep-last", type=int, default=1, help="newest checkpoints kept (default 1)")
    parser.add_argument("--width", type=int, default=256, help="the MLP's width (default 256: 131,584 parameters)")
    parser.add_argument("--control", type=int, default=30,
                        help="after the soak, this many saves each into the soaked model and a fresh one, "
                        "alternating: is a save slower because of the history? (default 30; 0: skip)")
    parser.add_argument("--progress-every", type=int, default=0,
                        help="cycles between progress lines (default cycles/10, at most 50)")
    args = parser.parse_args(argv)
    if args.cycles < 1:
        parser.error(f"--cycles={args.cycles} must be >= 1")
    progress_every = args.progress_every or max(1, min(50, args.cycles // 10))

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # no run link among the report's lines
    signal.signal(signal.SIGTERM, _interrupt)  # torn down like Ctrl-C

    backends = list(dict.fromkeys(args.backends))
    if "postgres" in backends:
        from mlflow_ddsp.testing.postgres import find_postgres_bin

        if find_postgres_bin() is None:
            print("postgres backend skipped: PostgreSQL is not installed (Debian: apt-get install postgresql)")
            backends.remove("postgres")
    if not backends:
        return 1
    print(f"soak: {args.cycles} save cycles per backend on {', '.join(backends)}, artifacts proxied to "
          f"{'a SeaweedFS S3 bucket' if args.artifacts == 's3' else 'a folder'}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; machine: {calibration.machine()}", flush=True)  # fmt: skip

    reports: list[SoakReport] = []
    wall = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mlflow-ddsp-soak-")))
            objects = None
            if args.artifacts == "s3":
                from mlflow_ddsp.testing.s3 import LocalObjectStore

                objects = stack.enter_context(LocalObjectStore(root / "seaweedfs"))
                objects.create_bucket(BUCKET)
            for backend in backends:
                with contextlib.ExitStack() as services:
                    kwargs: dict = {}
                    database_bytes = None
                    if backend == "postgres":
                        from mlflow_ddsp.testing.postgres import LocalPostgres

                        cluster = services.enter_context(LocalPostgres())
                        kwargs["backend_store_uri"] = cluster.create_database("mlflow")
                        database_bytes = postgres_size(kwargs["backend_store_uri"])
                    if objects is not None:
                        kwargs.update(artifacts_destination=f"s3://{BUCKET}/{backend}", env=objects.env)
                    t = time.perf_counter()
                    server = services.enter_context(LocalServer(root / f"server-{backend}", **kwargs))
                    label = f"{backend} + {'s3 (proxied)' if objects is not None else 'disk (proxied)'}"
                    print(f"{label}: services started in {time.perf_counter() - t:.0f} s", flush=True)
                    listing = bucket_objects(objects, BUCKET, backend) if objects is not None else None
                    target = server_target(label, server, listing, database_bytes)
                    report = soak(target, args.cycles, interval_force_save=args.interval_force_save,
                                  keep_last=args.keep_last, width=args.width, progress_every=progress_every,
                                  control=args.control,
                                  out=lambda line: print(line, flush=True))  # fmt: skip
                    reports.append(report)
                    print("\n".join(report.lines()), flush=True)
    except KeyboardInterrupt:
        print("interrupted: every service stopped and temporary folder removed", file=sys.stderr)
        return 130
    print(f"\nall backends: {time.perf_counter() - wall:.0f} s wall; "
          + ("every check OK" if all(r.ok for r in reports) else "PROBLEM: see the verdicts above"))  # fmt: skip
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
