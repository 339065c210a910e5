"""A throwaway PostgreSQL cluster on 127.0.0.1 and a free port, for a team-shaped ``mlflow server``.

``with LocalPostgres() as pg: pg.create_database("mlflow")`` -> ``postgresql://postgres@127.0.0.1:PORT/mlflow``.

Uses the server binaries of the machine's PostgreSQL (Debian: ``apt-get install
postgresql``, in ``/usr/lib/postgresql/<major>/bin``). ``initdb`` and ``postgres``
refuse to run as root: as root they run as the ``postgres`` user, in a data folder
that user owns. The cluster trusts local connections (a test fixture, never a
deployment), skips fsync, and is removed with its folder by ``stop()``; the server
also dies with the process that started it.
"""

from __future__ import annotations

import functools
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from ..errors import TrackingServerUnreachable
from .server import _ManagedProcess, die_with_parent, free_port, wait_until_answers

__all__ = ["LocalPostgres", "find_postgres_bin"]

_SERVICE_USER = "postgres"


def find_postgres_bin() -> Path | None:
    """The folder holding ``initdb`` and ``postgres`` (newest major version), or None."""
    override = os.environ.get("MLFLOW_DDSP_PG_BIN")
    candidates = [override] if override else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0
    )  # fmt: skip
    for folder in reversed(candidates):
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "postgres").is_file():
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).parent if found and (Path(found).parent / "postgres").is_file() else None


class LocalPostgres(_ManagedProcess):
    """A PostgreSQL cluster in a fresh temporary folder.

    Args:
        bin_dir: PostgreSQL's server binaries (default :func:`find_postgres_bin`).
        startup_timeout: seconds to wait until it accepts connections.

    Raises:
        FileNotFoundError: PostgreSQL is not installed.
        TrackingServerUnreachable: the cluster did not start (with its log).
    """

    def __init__(self, bin_dir: str | os.PathLike | None = None, *, startup_timeout: float = 60.0):
        found = Path(bin_dir) if bin_dir else find_postgres_bin()
        if found is None:
            raise FileNotFoundError("PostgreSQL is not installed (no initdb/postgres; Debian: apt-get install postgresql)")
        self.bin_dir = found
        self.port = free_port()
        self.startup_timeout = startup_timeout
        self.root: Path | None = None
        self.user = _SERVICE_USER

    def _as_service_user(self) -> dict:
        """Popen arguments that drop root to the ``postgres`` user (no-op for other users)."""
        if os.geteuid() != 0:
            return {}
        entry = pwd.getpwnam(_SERVICE_USER)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> "LocalPostgres":
        # Not under pytest's 0700 tmp folders: the service user must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="mlflow-ddsp-pg-"))
        data, sockets = self.root / "data", self.root / "sockets"
        sockets.mkdir()
        ids = self._as_service_user()
        if ids:
            os.chown(self.root, ids["user"], ids["group"])
            os.chown(sockets, ids["user"], ids["group"])
        else:
            self.user = pwd.getpwuid(os.geteuid()).pw_name
        log_path = self.root / "postgres.log"
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        init = subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", self.user, "-E", "UTF8", "--no-sync"],
            capture_output=True, text=True, env=env, cwd=self.root, **ids,
        )  # fmt: skip
        if init.returncode != 0:
            self.stop()
            raise TrackingServerUnreachable(f"initdb failed ({init.returncode}): {init.stderr.strip()[-500:]}")
        self._data, self._sockets, self._log_path, self._ids = data, sockets, log_path, ids
        return self._launch()

    def _launch(self) -> "LocalPostgres":
        data, sockets, log_path, ids = self._data, self._sockets, self._log_path, self._ids
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        command = [
            str(self.bin_dir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(sockets),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", "max_connections=200",
        ]  # fmt: skip
        with open(log_path, "ab") as log:
            # preexec_fn runs after the switch of user, so the death signal survives it.
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root, start_new_session=True,
                preexec_fn=die_with_parent, **ids,
            )  # fmt: skip
        wait_until_answers(self._process, "", self.startup_timeout, log_path, self.stop, what="postgres",
                           ready=functools.partial(self._accepts, sockets))  # fmt: skip
        return self

    def interrupt(self) -> None:
        """Stop the server process and keep its data: a database outage. :meth:`resume` ends it.

        PostgreSQL's fast shutdown (SIGINT): open client connections are cut, as in
        a crash of the database host, instead of being waited for.
        """
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGINT)
            self._process.wait(timeout=60)
        self._process = None

    def resume(self) -> "LocalPostgres":
        """Start the server again on the same port and data after :meth:`interrupt`."""
        return self._launch()

    def _accepts(self, sockets: Path) -> bool:
        probe = subprocess.run(
            [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-q"],
            capture_output=True,
        )
        return probe.returncode == 0

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its ``postgresql://`` URI (MLflow: psycopg 3)."""
        import psycopg

        with psycopg.connect(self.uri("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def stop(self) -> None:
        super().stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
