"""A team's stack end to end: PostgreSQL-backed server, checkpoints in an S3 bucket.

* two writers (two processes) saving into two registered models on one
  PostgreSQL-backed server at the same time each keep exactly their own versions;
* a large checkpoint (>= 100 MB) uploads to the bucket in parts and verifies.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.checkpoint import load_checkpoint
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.checkpoint.verify import fetch_verified

from conftest import scaled_timeout, server_of
from test_lease import Holder
from registry_checks import versions_by_step

pytestmark = [pytest.mark.slow, pytest.mark.server]


def test_two_writers_on_postgres_each_keep_exactly_their_own_versions(request, model_name):
    """A writer in another process and one in this process save step by step at the same time."""
    backend = server_of(request, "postgres", f"exp-{model_name}")
    names = [f"{model_name}-a", f"{model_name}-b"]
    other = Holder(backend, names[0])  # tiny_trainer.py hold: saves when told to
    try:
        torch.manual_seed(1)
        model = torch.nn.Linear(16, 4)
        with CheckpointQueue(names[1], 10, 30, tracking_uri=backend.uri, experiment=backend.experiment) as queue:
            for step in (10, 20, 30, 40):
                other.send(f"save {step}")  # both save the same step at once
                queue.save(step, model).result()
                assert other.wait_for("saved") == {"event": "saved", "step": step}
        other.send("quit")
        assert other.proc.wait(timeout=scaled_timeout(60)) == 0
    finally:
        other.stop()
    store = RegistryStore(backend.uri)
    live: list[set[str]] = []
    for name in names:
        assert versions_by_step(store, name) == {30: "force_saved", 40: "rolling"}
        versions = store.list_versions(name)
        assert {store.files_of(v).queue for v in versions} == {name}  # no version of the other writer
        for v in versions:
            with tempfile.TemporaryDirectory() as tmp:
                fetch_verified(store, v, tmp)
        assert store.get_version(name, store.alias_version(name, "rolling")).step == 40
        live.append({v.model_id for v in versions})
        assert {m.model_id for m in store.queue_models(name, store.experiment_ids(name))} == live[-1]
    assert not live[0] & live[1]
    # One experiment holds both: its folder has exactly the two queues' live checkpoints, nothing orphaned.
    assert backend.checkpoint_dirs(store.experiment_ids(names[0])) == live[0] | live[1]

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
        manifest = fetch_verified(store, store.get_version(model_name, version.version), tmp)
        restored = load_checkpoint(Path(tmp) / manifest.checkpoint_file)
    assert torch.equal(restored["model"]["weight"], model.weight.detach())
    assert versions_by_step(store, model_name) == {10: "rolling"}
