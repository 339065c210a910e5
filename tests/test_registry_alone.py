"""A version serves from the registry alone (issue 21's acceptance): the weights it depends on
travel with it, stored once per tracking store.

End to end through the CLI and real servers: ``mlflow-ddsp preprocess`` + ``train`` with a content
encoder (a tiny random-weight HuBERT-Soft file written here; parselmouth f0, so no f0 file) into a
real ``mlflow server``; then, on a "second machine" (a fresh working folder and HOME, no cache
setting, the encoder file moved away: only the tracking URI is known), ``mlflow-ddsp infer`` and
``mlflow-ddsp serve`` convert with the stored encoder, fetched into the per-user cache and verified.
Copies are counted by listing the artifact store itself (the server's folder on disk, or the
SeaweedFS bucket): ten versions, one encoder.

Suite time: one training per server kind (10 steps of a pure-DDSP CombSubSuperFast, a version at
each) shared by every check of the main path, which is therefore one test per kind (pytest-xdist
hands tests to workers one by one: a fixture shared by several tests would train on each worker);
``gc`` trains its own two versions with another encoder, as it deletes them. The stack parameters
(PostgreSQL with artifacts on disk; SQLite with artifacts in SeaweedFS through the server) run the
whole main path too: stored once (the bucket listed), ``infer`` and ``serve`` on a second machine.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import soundfile as sf
import yaml
from click.testing import CliRunner

from conftest import Backend, scaled_timeout, second_machine, server_of
from test_band_limited_input import voice
from test_encoders import TINY_SOFT, _write_hubert_soft
from test_serving import post

from mlflow_ddsp import tags as T
from mlflow_ddsp.audio import save_wav
from mlflow_ddsp.checkpoint.dependencies import DependencyRecord
from mlflow_ddsp.checkpoint.dependency_cache import cache_root
from mlflow_ddsp.checkpoint.verify import fetch_verified
from mlflow_ddsp.cli import main
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.testing.server import LocalModelServer

pytestmark = [pytest.mark.slow, pytest.mark.server]

SR = 44100
STEPS = 10  # a version at every step (interval_val 1, keep_last 10): the "store with 10 versions"
# SQLite with artifacts on disk, and PostgreSQL with artifacts in SeaweedFS: both databases and both
# artifact stores of the issue, in two trainings (suite time).
KINDS = [
    pytest.param("server", id="server"),
    pytest.param("s3-proxied", id="s3-proxied", marks=pytest.mark.stack),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Trained:
    backend: Backend
    name: str  # the registered model
    encoder: Path  # a copy of the encoder's bytes, off the path the config names
    record: DependencyRecord
    config_path: Path  # where training found the encoder (gone now)
    clip: Path  # an input WAV for infer


def _run(*args: str, uri: str | None = None):
    """``mlflow-ddsp [--tracking-uri URI] ARGS`` in this process; asserts it succeeded."""
    argv = (["--tracking-uri", uri] if uri else []) + list(args)
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, f"mlflow-ddsp {' '.join(args)}:\n{result.output}"
    return result


def _train(backend: Backend, root: Path, name: str, *, seed: int, steps: int) -> Trained:
    """Preprocess and train through the CLI with a random-weight HuBERT-Soft encoder (seed:
    its bytes); then move the encoder away, as a second machine has no copy of it."""
    data = root / "data"
    for i, f0 in enumerate((200.0, 240.0)):
        save_wav(data / "train" / "audio" / f"a{i}.wav", voice(SR, 1.0, f0, seed=i), SR)
    save_wav(data / "val" / "audio" / "v.wav", voice(SR, 0.6, 220.0, seed=9), SR)
    encoder = root / "training-machine" / "pretrain" / "hubert" / "hubert-soft.pt"
    encoder.parent.mkdir(parents=True)
    _write_hubert_soft(encoder, seed=seed)
    doc = {
        "data": {"f0_extractor": "parselmouth", "sampling_rate": SR, "block_size": 512, "duration": 0.5,
                 "encoder": "hubertsoft", "encoder_out_channels": TINY_SOFT.n_units, "encoder_ckpt": str(encoder),
                 "train_path": str(data / "train"), "valid_path": str(data / "val")},
        "model": {"type": "CombSubSuperFast", "n_spk": 1},
        "device": "cpu",
        "env": {"expdir": str(root / "exp" / name)},
        "train": {"batch_size": 2, "num_workers": 0, "interval_log": steps, "interval_val": 1, "keep_last": steps,
                  "max_steps": steps, "cache_fp16": False},
        "mlflow": {"experiment": backend.experiment, "registered_model": name, "audio_clips": 0},
    }  # fmt: skip
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(doc))
    _run("preprocess", "-c", str(config), "--workers", "1")
    result = _run("train", "-c", str(config), uri=backend.uri)
    assert f"trained {name} from step 0 to {steps}" in result.stdout, result.output
    kept = root / "kept-copy.pt"
    encoder.rename(kept)  # off the training machine's path
    record = DependencyRecord("encoder", sha256(kept), kept.stat().st_size, encoder.name)
    clip = root / "in.wav"
    save_wav(clip, voice(22050, 1.0, 230.0, seed=3), 22050)
    return Trained(backend, name, kept, record, encoder, clip)


def stored_copies(backend: Backend, data: bytes) -> list[str]:
    """Every object of the whole artifact store holding exactly ``data`` (listed on disk or in the bucket)."""
    digest = hashlib.sha256(data).hexdigest()
    if backend.bucket is None:
        root = backend.artifacts_dir
        return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                      if p.is_file() and p.stat().st_size == len(data) and sha256(p) == digest)  # fmt: skip
    bucket = backend.bucket
    client = bucket.store.client()
    out = []
    for key, size in bucket.keys("").items():
        if size == len(data):
            body = client.get_object(Bucket=bucket.name, Key=f"{bucket.prefix}/{key}")["Body"].read()
            if hashlib.sha256(body).hexdigest() == digest:
                out.append(key)
    return sorted(out)


def _wav_finite(path: Path) -> np.ndarray:
    audio, rate = sf.read(path)
    assert rate == SR and audio.size > SR // 2 and np.isfinite(audio).all()
    return audio


# -- 1 + 3: every version records the encoder; ten versions, one stored copy ---------------
def check_recorded_once(trained: Trained) -> None:
    store = RegistryStore(trained.backend.uri)
    versions = store.list_versions(trained.name)
    assert sorted(v.step for v in versions) == list(range(1, STEPS + 1))  # ten versions kept
    expected = trained.record
    for v in versions:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = fetch_verified(store, v, tmp)  # sha256 of every file against the registration
        assert [DependencyRecord.from_dict(d) for d in manifest.dependencies] == [expected], v.label
        assert store.files_of(v).tags[T.DEPENDENCIES] == f"encoder:{expected.sha256}", v.label
        assert expected.file not in store.list_sizes(store.files_of(v))  # the version holds no copy
    # The dependencies experiment holds one LoggedModel for the digest ...
    dependency_experiment = store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)
    stored = store.find_logged_models([dependency_experiment], {T.DEPENDENCY_SHA256: expected.sha256})
    assert [m.status for m in stored] == ["READY"]
    # ... and the artifact store, listed itself, exactly one object with the encoder's bytes.
    (copy,) = stored_copies(trained.backend, trained.encoder.read_bytes())
    assert copy.startswith(f"{dependency_experiment}/models/{stored[0].model_id}/") and copy.endswith(expected.file)


# -- 2: a second machine converts with only the tracking URI --------------------------------
def check_infer(trained: Trained, tmp_path: Path, home: Path) -> None:
    uri, model = trained.backend.uri, f"models:/{trained.name}@rolling"
    _run("infer", "-m", model, "-i", str(trained.clip), "-o", "out.wav", "--seed", "0", uri=uri)
    converted = _wav_finite(Path("out.wav"))
    cached = cache_root() / "weights" / trained.record.sha256 / trained.record.file
    assert cached.is_relative_to(home / ".cache" / "mlflow-ddsp")
    assert sha256(cached) == trained.record.sha256 and cached.read_bytes() == trained.encoder.read_bytes()
    # The same conversion as with the training machine's own file: the fetched encoder is the one in use.
    _run("infer", "-m", model, "-i", str(trained.clip), "-o", "own.wav", "--seed", "0", "--encoder-ckpt",
         str(trained.encoder), uri=uri)  # fmt: skip
    np.testing.assert_array_equal(converted, _wav_finite(Path("own.wav")))

    # A local file of the same architecture with other bytes: refused in one line naming both digests,
    # named on the command line or found at the path the version's config names.
    other = tmp_path / "my-hubert-soft.pt"
    _write_hubert_soft(other, seed=99)
    for how, extra in (("--encoder-ckpt", ["--encoder-ckpt", str(other)]), ("data.encoder_ckpt", [])):
        if not extra:
            trained.config_path.write_bytes(other.read_bytes())  # a changed file where training had its own
        try:
            result = CliRunner().invoke(main, ["--tracking-uri", uri, "infer", "-m", model, "-i", str(trained.clip),
                                               "-o", "refused.wav", *extra])  # fmt: skip
        finally:
            trained.config_path.unlink(missing_ok=True)
        assert result.exit_code != 0 and "Traceback" not in result.output, result.output
        (line,) = [x for x in result.output.splitlines() if x.strip()]
        assert trained.record.sha256[:12] in line and sha256(other)[:12] in line and how in line, line
        assert not Path("refused.wav").exists()


def check_serve(trained: Trained, tmp_path: Path, home: Path) -> None:
    buffer = io.BytesIO()
    sf.write(buffer, voice(22050, 1.0, 230.0, seed=4), 22050, format="WAV", subtype="PCM_16")
    request = {"dataframe_records": [{"audio_base64": base64.b64encode(buffer.getvalue()).decode()}]}
    with LocalModelServer(f"models:/{trained.name}@rolling", trained.backend.uri, tmp_path / "serve.log",
                          startup_timeout=scaled_timeout(240)) as served:  # fmt: skip
        status, body = post(served.url, request)
    assert status == 200, body
    (result,) = body["predictions"]
    audio, rate = sf.read(io.BytesIO(base64.b64decode(result["audio_base64"])))
    assert rate == result["sample_rate"] == SR and abs(len(audio) - SR) <= 512 and np.isfinite(audio).all()
    cached = home / ".cache" / "mlflow-ddsp" / "weights" / trained.record.sha256 / trained.record.file
    assert sha256(cached) == trained.record.sha256  # the server process fetched it into this HOME's cache


@pytest.mark.parametrize("kind", KINDS)
def test_a_version_serves_from_the_registry_alone(request, kind, tmp_path, monkeypatch, model_name):
    """Train (10 versions), then on a second machine with only the tracking URI: infer, serve."""
    backend = server_of(request, kind, f"exp-{model_name}")
    trained = _train(backend, tmp_path / "training", model_name, seed=1, steps=STEPS)
    check_recorded_once(trained)
    assert not trained.config_path.exists()  # the path the version's config names is empty here
    check_infer(trained, tmp_path, second_machine(tmp_path, monkeypatch, "second"))
    check_serve(trained, tmp_path, second_machine(tmp_path, monkeypatch, "third"))  # its own empty cache


# -- 4: gc keeps the encoder while a version references it, frees it after the last --------
@pytest.mark.parametrize("retire", ["delete-versions", "delete-registered-model"])
def test_gc_keeps_a_referenced_encoder_and_frees_it_once_the_versions_are_gone(request, retire, tmp_path, model_name):
    """Deleting the registered model (the UI's "Delete model") leaves its checkpoint LoggedModels,
    which keep the encoder referenced: `gc NAME` reaches them, deletes them and then frees the encoder."""
    backend = server_of(request, "server", f"exp-{model_name}")
    own = _train(backend, tmp_path / "gc", model_name, seed=2 if retire == "delete-versions" else 3, steps=2)
    store = RegistryStore(backend.uri)
    try:
        label = f"encoder weights {own.record.sha256[:12]}"
        assert len(store.list_versions(model_name)) == 2
        result = _run("gc", model_name, uri=backend.uri)
        assert label not in result.output, result.output  # referenced by both versions: kept
        assert len(stored_copies(backend, own.encoder.read_bytes())) == 1

        client = mlflow.MlflowClient(backend.uri)
        if retire == "delete-versions":  # as the UI does it, one by one; the registered model stays
            for v in store.list_versions(model_name):
                client.delete_model_version(model_name, str(v.version))
        else:
            client.delete_registered_model(model_name)
            experiment_ids = store.all_experiment_ids()
            assert len(backend.checkpoint_dirs(experiment_ids)) >= 2
            left = {m.model_id for m in store.queue_models(model_name, experiment_ids)}
            assert len(left) == 2, left  # the versions went, their LoggedModels stayed
            kept = _run("gc", model_name, "--dry-run", uri=backend.uri)  # names all, changes nothing
            assert f"{model_name}: would free 2 LoggedModels of a deleted registered model" in kept.output, kept.output
            assert f"would free {label} ({own.record.file}, {own.record.size} bytes" in kept.output, kept.output
            assert {m.model_id for m in store.queue_models(model_name, experiment_ids)} == left
            assert len(stored_copies(backend, own.encoder.read_bytes())) == 1
        result = _run("gc", model_name, uri=backend.uri)
        size = own.record.size
        assert f"free {label} ({own.record.file}, {size} bytes" in result.output, result.output
        assert f"dependencies: freed 1 file, {size} bytes" in result.output, result.output
        assert stored_copies(backend, own.encoder.read_bytes()) == []
        if retire == "delete-registered-model":
            assert f"{model_name}: freed 2 LoggedModels of a deleted registered model" in result.output, result.output
            assert store.queue_models(model_name, experiment_ids) == []
            assert not left & backend.checkpoint_dirs(experiment_ids)  # their bytes too
            again = CliRunner().invoke(main, ["--tracking-uri", backend.uri, "gc", model_name])
            assert again.exit_code == 1 and f"registered model {model_name!r} does not exist" in again.output
    finally:  # the session server is the worker's: leave no copy for a later test's gc to free and print
        experiment_id = store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)
        for model in store.find_logged_models([experiment_id], {T.DEPENDENCY_SHA256: own.record.sha256}):
            store.delete_bytes(store.get_files(model.model_id))
            store.delete_record(model.model_id)
