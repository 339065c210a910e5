"""Start a throwaway ``mlflow server`` on this machine: SQLite backend, proxied artifacts.

The same shape as a team's shared server (artifacts served through the
tracking server, ``mlflow-artifacts:`` URIs), on 127.0.0.1 and a free port.
Used by the test suite and the benchmarks; handy for trying the team setup.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import TrackingServerUnreachable

__all__ = ["LocalServer", "free_port"]


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies (Linux), so no server outlives its owner."""
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


class LocalServer:
    """``with LocalServer(tmp_dir) as server: ...`` -> ``server.uri``, ``server.artifacts_dir``.

    Args:
        root: folder for the database, the artifacts and the server log.
        startup_timeout: seconds to wait for ``/health`` (start-up takes 10-35 s).
    """

    def __init__(self, root: str | os.PathLike, *, port: int | None = None, startup_timeout: float = 120.0):
        self.root = Path(root)
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.uri = f"http://127.0.0.1:{self.port}"
        self.artifacts_dir = self.root / "artifacts"
        self.db_path = self.root / "server.db"
        self.log_path = self.root / "server.log"
        self._process: subprocess.Popen | None = None

    def start(self) -> "LocalServer":
        self.root.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir.mkdir(exist_ok=True)
        env = dict(os.environ)
        env.pop("MLFLOW_TRACKING_URI", None)
        # The job runner adds ~8 processes and ~20 s of start-up that we never use.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.db_path}",
            "--artifacts-destination", str(self.artifacts_dir),
            "--serve-artifacts",
            "--host", "127.0.0.1",
            "--port", str(self.port),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            # A new session, so stop() can signal the server and the workers it spawns.
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise TrackingServerUnreachable(
                    f"mlflow server exited with status {self._process.returncode} during start-up; "
                    f"log: {self.log_path}\n{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)  # polling interval for a condition we check, not a guess
        self.stop()
        raise TrackingServerUnreachable(
            f"mlflow server at {self.uri} not healthy after {self.startup_timeout:.0f} s; log: {self.log_path}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
