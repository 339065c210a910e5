"""Start throwaway MLflow processes on this machine, on 127.0.0.1 and a free port.

* :class:`LocalServer`: a tracking server with a SQLite backend and proxied
  artifacts, the same shape as a team's shared server (``mlflow-artifacts:`` URIs);
* :class:`LocalModelServer`: ``mlflow models serve`` of one model version;
* :mod:`mlflow_ddsp.testing.postgres` and :mod:`mlflow_ddsp.testing.s3`: a throwaway
  PostgreSQL cluster and S3-compatible object store for a team-shaped server.

Used by the test suite and the benchmarks; handy for trying the team setup.
Both die with the process that started them.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import TrackingServerUnreachable

__all__ = ["LocalServer", "LocalModelServer", "free_port", "wait_until_answers", "stop_process_group", "die_with_parent"]


def _die_with_parent(nice: int = 0) -> None:
    """In the child: get SIGTERM when the parent dies (Linux), so no server outlives its owner."""
    if nice:
        os.nice(nice)
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: stop() and the context manager still clean up


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ManagedProcess:
    """A child process started by ``start()`` and stopped, with its group, by ``stop()``."""

    _process: subprocess.Popen | None = None

    def start(self):  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def stop(self) -> None:
        _stop(self._process)
        self._process = None

    @property
    def pid(self) -> int | None:
        """The child's process id, also its process group's (it leads a new session); None when stopped."""
        return self._process.pid if self._process is not None else None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class LocalServer(_ManagedProcess):
    """``with LocalServer(tmp_dir) as server: ...`` -> ``server.uri``, ``server.artifacts_dir``.

    By default a SQLite backend with proxied artifacts in ``root/artifacts``; a
    team's stack is had with ``backend_store_uri="postgresql://..."`` and
    ``artifacts_destination="s3://bucket/prefix"`` (proxied: the server talks to
    the bucket), or ``default_artifact_root="s3://..."`` (direct: ``--no-serve-artifacts``,
    clients upload to the bucket themselves), and ``app_name="basic-auth"``.

    Args:
        root: folder for the database, the artifacts and the server log.
        startup_timeout: seconds to wait for ``/health`` (start-up takes 10-35 s).
        backend_store_uri: default ``sqlite:///<root>/server.db``.
        artifacts_destination: where proxied artifacts go (default ``root/artifacts``).
        default_artifact_root: with it, the server does not serve artifacts.
        app_name: ``mlflow server --app-name`` (e.g. ``basic-auth``).
        env: extra environment for the server (S3 endpoint and keys, ``MLFLOW_AUTH_CONFIG_PATH``).
    """

    def __init__(
        self, root: str | os.PathLike, *, port: int | None = None, startup_timeout: float = 120.0, nice: int = 0,
        backend_store_uri: str | None = None, artifacts_destination: str | None = None,
        default_artifact_root: str | None = None, app_name: str | None = None, env: dict[str, str] | None = None,
    ):  # fmt: skip
        self.root = Path(root)
        self.nice = nice  # >0: run below the trainer's CPU priority (a server on the training machine)
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.uri = f"http://127.0.0.1:{self.port}"
        self.artifacts_dir = self.root / "artifacts"
        self.db_path = self.root / "server.db"
        self.log_path = self.root / "server.log"
        self.backend_store_uri = backend_store_uri or f"sqlite:///{self.db_path}"
        self.default_artifact_root = default_artifact_root
        self.artifacts_destination = artifacts_destination or (None if default_artifact_root else str(self.artifacts_dir))
        self.app_name = app_name
        self.extra_env = dict(env or {})

    def start(self) -> "LocalServer":
        self.root.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir.mkdir(exist_ok=True)
        env = {**os.environ, **self.extra_env}
        env.pop("MLFLOW_TRACKING_URI", None)
        # The job runner adds ~8 processes and ~20 s of start-up that we never use.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_store_uri,
            "--host", "127.0.0.1",
            "--port", str(self.port),
        ]  # fmt: skip
        if self.default_artifact_root:
            command += ["--no-serve-artifacts", "--default-artifact-root", self.default_artifact_root]
        else:
            command += ["--artifacts-destination", self.artifacts_destination, "--serve-artifacts"]
        if self.app_name:
            command += ["--app-name", self.app_name]
        with open(self.log_path, "ab") as log:
            # A new session, so stop() can signal the server and the workers it spawns.
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=functools.partial(_die_with_parent, self.nice),
            )  # fmt: skip
        self._wait_healthy()
        return self

    def pause(self) -> None:
        """SIGSTOP the server and its workers: a server that hangs (requests time out, nothing refuses)."""
        os.killpg(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        os.killpg(self._process.pid, signal.SIGCONT)

    def _wait_healthy(self) -> None:
        _wait_until_answers(self._process, self.uri + "/health", self.startup_timeout, self.log_path, self.stop)


class LocalModelServer(_ManagedProcess):
    """``with LocalModelServer("models:/NAME/7", tracking_uri, log_path) as served: served.url``.

    Runs ``mlflow-ddsp serve`` (which checks the version against the registry and
    then execs ``mlflow models serve --env-manager local``) in this Python
    environment, or plain ``mlflow models serve`` with ``plain=True``.

    Args:
        env: extra environment for the server (e.g. ``MLFLOW_DDSP_MAX_SECONDS``).
    """

    def __init__(self, model_uri: str, tracking_uri: str, log_path: str | os.PathLike, *,
                 env: dict[str, str] | None = None, startup_timeout: float = 180.0, plain: bool = False):  # fmt: skip
        self.plain = plain
        self.model_uri = model_uri
        self.tracking_uri = tracking_uri
        self.log_path = Path(log_path)
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "LocalModelServer":
        env = {**os.environ, **self.extra_env, "MLFLOW_TRACKING_URI": self.tracking_uri}
        # `mlflow models serve` execs uvicorn from the environment's bin/.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        if self.plain:
            command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", self.model_uri,
                       "--env-manager", "local", "-h", "127.0.0.1", "-p", str(self.port)]  # fmt: skip
        else:
            command = [sys.executable, "-m", "mlflow_ddsp", "serve", "-m", self.model_uri, "--host", "127.0.0.1",
                       "-p", str(self.port)]  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                             start_new_session=True, preexec_fn=_die_with_parent)  # fmt: skip
        _wait_until_answers(self._process, self.url + "/ping", self.startup_timeout, self.log_path, self.stop)
        return self


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_until_answers(
    process: subprocess.Popen, url: str, timeout: float, log_path: Path, stop, what: str | None = None, ready=None
) -> None:
    """Poll ``url`` until it answers 200 (or ``ready()`` is true); fail early, with the log, if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TrackingServerUnreachable(
                f"{what or process.args[3] + ' server'} exited with status {process.returncode} during start-up; "
                f"log: {log_path}\n{_log_tail(log_path)}"
            )
        if ready is not None:
            if ready():
                return
        else:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
        time.sleep(0.2)  # polling interval for a condition we check, not a guess
    stop()
    raise TrackingServerUnreachable(f"{url} did not answer within {timeout:.0f} s; log: {log_path}\n{_log_tail(log_path)}")


def _stop(process: subprocess.Popen | None, grace: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL if it lingers past ``grace`` seconds."""
    if process is None or process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# Public names for the sibling helpers (testing.postgres, testing.s3).
die_with_parent = _die_with_parent
wait_until_answers = _wait_until_answers
stop_process_group = _stop
