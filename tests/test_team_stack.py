"""A team's stack end to end: PostgreSQL-backed server, checkpoints in an S3 bucket.

* two writers (separate processes) into two registered models on one
  PostgreSQL-backed server at the same time each keep exactly their own versions;
* a large checkpoint (>= 100 MB) uploads to the bucket in parts and verifies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.checkpoint import RegistryStore, load_checkpoint

from conftest import server_of
from registry_checks import assert_invariants, versions_by_step

pytestmark = [pytest.mark.slow, pytest.mark.server]

TRAINER = Path(__file__).with_name("tiny_trainer.py")


def test_two_writers_on_postgres_each_keep_exactly_their_own_versions(request, model_name):
    backend = server_of(request, "postgres", f"exp-{model_name}")
    names = [f"{model_name}-a", f"{model_name}-b"]
    procs = [
        subprocess.Popen([sys.executable, str(TRAINER), "train", backend.uri, name, backend.experiment, "70"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))  # fmt: skip
        for name in names
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        assert json.loads(out.splitlines()[-1])["event"] == "done"
    store = RegistryStore(backend.uri)
    for name in names:
        assert versions_by_step(store, name) == {30: "force_saved", 60: "force_saved", 70: "rolling"}
        versions = store.list_versions(name)
        assert {store.files_of(v).queue for v in versions} == {name}  # no version of the other writer
        assert assert_invariants(store, backend, name) == 70
    ids = [{v.model_id for v in store.list_versions(name)} for name in names]
    assert not ids[0] & ids[1]


def test_a_large_checkpoint_uploads_in_parts_to_the_bucket_and_verifies(request, model_name):
    backend = server_of(request, "s3-direct", f"exp-{model_name}")
    torch.manual_seed(0)
    model = torch.nn.Linear(5000, 5000)  # 25 M float32 parameters: 100 MB
    with CheckpointQueue(model_name, 10, None, tracking_uri=backend.uri, experiment=backend.experiment) as queue:
        version = queue.save(10, model).result()
    store = RegistryStore(backend.uri)
    experiment = store.client.get_logged_model(version.model_id).experiment_id
    stored = backend.checkpoint_files(experiment, version.model_id)
    assert stored["artifacts/model_10.pt"] >= 100_000_000
    key = f"{backend.bucket.prefix}/{experiment}/models/{version.model_id}/artifacts/model_10.pt"
    etag = backend.bucket.store.client().head_object(Bucket=backend.bucket.name, Key=key)["ETag"]
    assert "-" in etag.strip('"'), f"expected a multipart upload, ETag {etag}"
    with tempfile.TemporaryDirectory() as tmp:
        manifest = store.fetch_verified(store.get_version(model_name, version.version), tmp)
        restored = load_checkpoint(Path(tmp) / manifest.checkpoint_file)
    assert torch.equal(restored["model"]["weight"], model.weight.detach())
    assert versions_by_step(store, model_name) == {10: "rolling"}
