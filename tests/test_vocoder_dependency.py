"""A cascade version (5.0 diffusion, 6.x reflow) converts from the registry alone: the NSF-HiFiGAN
vocoder's ``config.json`` travels with its weights (issue 21; ``mlflow_ddsp/checkpoint/dependencies.py``,
``COMPANIONS``).

Upstream's loader reads the vocoder's ``config.json`` from the weights' folder
(``nsf_hifigan/models.py``, ``load_model``), so the vocoder's dependency record carries it as a
companion: stored in the same LoggedModel, cached in the same folder, checked with the weights.

End to end on the embedded store (one tiny reflow training, a random-weight vocoder); the record,
storing, cache and local-file rules on the embedded store with files the tests write.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from click.testing import CliRunner

from mlflow_ddsp import tags as T
from mlflow_ddsp.checkpoint.dependencies import (
    COMPANIONS,
    Companion,
    DependencyRecord,
    store_dependency,
)
from mlflow_ddsp.checkpoint.dependency_cache import cache_root, resolve_dependency
from mlflow_ddsp.cli import main
from mlflow_ddsp.errors import CheckpointIntegrityError, CheckpointSaveError, ConfigError
from mlflow_ddsp.serving.dependencies import registered_dependencies, resolve_files
from mlflow_ddsp.config import parse_config
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.transfer import export_version

from conftest import second_machine
from test_cascade_cli import ROOT, TEMPLATES, overrides, workspace  # noqa: F401  (the module's data and vocoder)
from test_dependencies import CountingStore, one_line


pytestmark = pytest.mark.usefixtures("forget_stored_dependencies")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vocoder_files(folder: Path, size: int = 200_000) -> tuple[Path, DependencyRecord]:
    """Random "weights" ``folder/model`` (a unique size) with a ``config.json`` beside; their record."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model").write_bytes(os.urandom(size))
    (folder / "config.json").write_text(json.dumps({"sampling_rate": 44100, "id": uuid.uuid4().hex}))
    return folder / "model", DependencyRecord.of_file("vocoder", folder / "model")


def models_of(store: RegistryStore, record: DependencyRecord):
    experiment_id = store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)
    return store.find_logged_models([experiment_id], {T.DEPENDENCY_SHA256: record.sha256})


def run(uri: str, *args: str, ok: bool = True):
    result = CliRunner().invoke(main, ["--tracking-uri", uri, *args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


# -- the record ----------------------------------------------------------------------------
def test_a_vocoder_record_carries_its_config_json_and_an_old_record_is_unchanged(tmp_path):
    assert COMPANIONS == {"vocoder": ("config.json",)}
    path, record = vocoder_files(tmp_path / "voc")
    config = tmp_path / "voc" / "config.json"
    assert (record.role, record.sha256, record.size, record.file) == ("vocoder", sha256(path), 200_000, "model")
    assert record.companions == (Companion("config.json", sha256(config), config.stat().st_size),)
    doc = record.to_dict()
    assert doc["companions"] == [{"file": "config.json", "sha256": sha256(config), "size": config.stat().st_size}]
    assert DependencyRecord.from_dict(doc) == record
    # written before companions: the same dict, read back the same
    old = DependencyRecord("vocoder", record.sha256, record.size, "model")
    assert old.to_dict() == {"role": "vocoder", "sha256": record.sha256, "size": record.size, "file": "model"}
    assert DependencyRecord.from_dict(old.to_dict()) == old and old.companions == ()
    # a role without companions: the file alone, even with a config.json beside it
    encoder = DependencyRecord.of_file("encoder", path)
    assert encoder.companions == () and "companions" not in encoder.to_dict()
    with pytest.raises(ConfigError):
        DependencyRecord.from_dict({**doc, "companions": [{"file": "../config.json", "sha256": "ab" * 32, "size": 1}]})
    config.unlink()
    with pytest.raises(ConfigError) as err:
        DependencyRecord.of_file("vocoder", path)
    assert "config.json" in one_line(err.value) and str(tmp_path / "voc") in str(err.value)


# -- storing -------------------------------------------------------------------------------
def test_the_stored_logged_model_holds_both_files_once_and_is_tagged_with_the_companions(embedded, tmp_path):
    path, record = vocoder_files(tmp_path / "voc")
    store = RegistryStore(embedded.uri)
    first = store_dependency(store, path, record)
    again = store_dependency(store, path, record)  # a second save reuses it
    assert again.model_id == first.model_id
    (model,) = models_of(store, record)
    assert model.status == "READY"
    (companion,) = record.companions
    assert model.tags[T.DEPENDENCY_COMPANIONS] == f"config.json:{companion.sha256}:{companion.size}"
    assert store.list_sizes(first) == {"model": record.size, "config.json": companion.size}
    experiment_id = store.find_experiment_id(T.DEPENDENCY_EXPERIMENT)
    listings = [embedded.checkpoint_files(experiment_id, d) for d in embedded.checkpoint_dirs([experiment_id])]
    assert sum("model" in {Path(n).name for n in files} for files in listings) == 1  # the store holds one copy

    # the same weights with another config.json: another record, never the first one's copy
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "voc", other)
    (other / "config.json").write_text('{"sampling_rate": 44100}')
    other_record = DependencyRecord.of_file("vocoder", other / "model")
    assert other_record.sha256 == record.sha256 and other_record != record
    assert store_dependency(store, other / "model", other_record).model_id != first.model_id
    # a companion changed since the record was made is refused before anything is stored
    third = tmp_path / "third"
    shutil.copytree(tmp_path / "voc", third)
    (third / "config.json").write_text('{"sampling_rate": 22050}')
    third_record = DependencyRecord.of_file("vocoder", third / "model")
    (third / "config.json").write_text('{"sampling_rate": 24000}')
    with pytest.raises(CheckpointIntegrityError) as err:
        store_dependency(store, third / "model", third_record)
    message = one_line(err.value)
    assert "config.json" in message and third_record.companions[0].sha256[:12] in message
    assert sha256(third / "config.json")[:12] in message
    assert len(models_of(store, record)) == 2


def test_a_record_that_is_not_stored_and_not_here_is_one_line(embedded, tmp_path):
    _, record = vocoder_files(tmp_path / "voc")
    with pytest.raises(CheckpointSaveError) as err:
        store_dependency(RegistryStore(embedded.uri), None, record)
    assert "vocoder weights" in one_line(err.value)


# -- fetching, the cache and local files ---------------------------------------------------
def test_fetched_into_a_folder_of_its_own_with_config_json_beside(embedded, tmp_path, monkeypatch):
    path, record = vocoder_files(tmp_path / "voc")
    store = CountingStore(embedded.uri)
    store_dependency(store, path, record)
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "voc", other)
    (other / "config.json").write_text('{"sampling_rate": 44100}')
    other_record = DependencyRecord.of_file("vocoder", other / "model")
    store_dependency(store, other / "model", other_record)

    home = second_machine(tmp_path, monkeypatch)
    got = resolve_dependency(store, record)
    assert got.parent.parent == home / ".cache" / "mlflow-ddsp" / "weights"
    assert got.parent.name.startswith(record.sha256 + "-") and len(got.parent.name) == 64 + 1 + 12
    assert got.read_bytes() == path.read_bytes() and store.downloads == 1
    assert (got.parent / "config.json").read_bytes() == (tmp_path / "voc" / "config.json").read_bytes()
    assert resolve_dependency(store, record) == got and store.downloads == 1  # cached
    # two configs of the same weights never share a folder
    theirs = resolve_dependency(store, other_record)
    assert theirs.parent != got.parent and (theirs.parent / "config.json").read_bytes() == b'{"sampling_rate": 44100}'
    # a cached config.json rewritten: the marker no longer matches, the folder is fetched again
    (got.parent / "config.json").write_text('{"sampling_rate": 1}')
    assert resolve_dependency(store, record) == got and store.downloads == 3
    assert (got.parent / "config.json").read_bytes() == (tmp_path / "voc" / "config.json").read_bytes()


def test_local_weights_with_a_changed_config_json_are_refused_naming_it_and_both_digests(embedded, tmp_path, monkeypatch):
    path, record = vocoder_files(tmp_path / "voc")
    store = CountingStore(embedded.uri)
    store_dependency(store, path, record)
    second_machine(tmp_path, monkeypatch)
    assert resolve_dependency(store, record, local=path) == path and store.downloads == 0  # both match: in place

    config = tmp_path / "voc" / "config.json"
    recorded = sha256(config)
    config.write_text(config.read_text() + " ")
    for resolve in (lambda: resolve_dependency(store, record, local=path),
                    lambda: resolve_files(store, [record], parse_config({}), overrides={"vocoder": ("--vocoder-ckpt", str(path))})):  # fmt: skip
        with pytest.raises(CheckpointIntegrityError) as err:
            resolve()
        message = one_line(err.value)
        assert "config.json" in message and recorded[:12] in message and sha256(config)[:12] in message, message
    assert store.downloads == 0

    # the right weights without their config.json: both files come from the store
    config.unlink()
    got = resolve_dependency(store, record, local=path)
    assert got != path and got.parent.parent == cache_root() / "weights" and store.downloads == 1
    assert sha256(got.parent / "config.json") == recorded


def test_a_record_without_companions_still_resolves_with_a_local_config_json(embedded, tmp_path, monkeypatch):
    path, _ = vocoder_files(tmp_path / "voc")
    old = DependencyRecord("vocoder", sha256(path), path.stat().st_size, "model")  # written before companions
    store = CountingStore(embedded.uri)
    store_dependency(store, path, old)
    (model,) = models_of(store, old)
    assert T.DEPENDENCY_COMPANIONS not in model.tags
    second_machine(tmp_path, monkeypatch)
    assert resolve_dependency(store, old, local=path) == path  # config.json beside it, as today
    cfg = parse_config({"vocoder": {"ckpt": str(path)}})
    assert resolve_files(store, [old], cfg) == {"vocoder": path} and store.downloads == 0
    got = resolve_dependency(store, old)
    assert got == cache_root() / "weights" / old.sha256 / "model"  # the folder of before: the weights alone
    assert sorted(p.name for p in got.parent.iterdir()) == ["model", "model.verified"]


# -- end to end: train on one machine, convert on another ---------------------------------
@pytest.mark.slow
def test_a_cascade_version_converts_on_a_second_machine_from_the_registry_alone(workspace, tmp_path, monkeypatch):  # noqa: F811
    training = tmp_path / "training-machine"
    shutil.copytree(workspace / "voc", training / "voc")
    monkeypatch.chdir(training)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    name = "cascade-alone"
    sets = overrides(workspace, name, "6.0", vocoder=training / "voc" / "model",
                     **{"train.max_steps": 2, "train.interval_val": 2, "mlflow.audio_clips": 0})  # fmt: skip
    run(uri, "train", "-c", str(ROOT / TEMPLATES["6.0"]), *sets)
    clip = next((workspace / "data" / "val" / "audio").rglob("*.wav"))
    model = f"models:/{name}@rolling"
    infer = ["infer", "-m", model, "-i", str(clip), "--method", "rk4", "--seed", "1"]
    run(uri, *infer, "-o", str(tmp_path / "own.wav"))  # with the training machine's own files

    store = RegistryStore(uri)
    version = store.get_version(name, store.alias_version(name, "rolling"))
    (record,) = registered_dependencies(store, version)
    assert record.role == "vocoder" and record.sha256 == sha256(training / "voc" / "model")
    assert record.companions == (Companion("config.json", sha256(training / "voc" / "config.json"),
                                           (training / "voc" / "config.json").stat().st_size),)  # fmt: skip
    (stored,) = models_of(store, record)
    assert store.list_sizes(store.get_files(stored.model_id)) == {"model": record.size,
                                                                 "config.json": record.companions[0].size}

    kept = tmp_path / "kept"
    (training / "voc").rename(kept)  # a second machine has no copy of either file
    home = second_machine(tmp_path, monkeypatch)
    run(uri, *infer, "-o", "out.wav")
    assert Path("out.wav").read_bytes() == (tmp_path / "own.wav").read_bytes()  # bit-identical
    (cached,) = (home / ".cache" / "mlflow-ddsp" / "weights").iterdir()
    assert sorted(p.name for p in cached.iterdir()) == ["config.json", "model", "model.verified"]
    # the right weights named without a config.json beside them (a flag, or the variable): both from
    # the cache, and the converter uses what resolution chose, not the named file again
    (tmp_path / "lonely").mkdir()
    shutil.copy(kept / "model", tmp_path / "lonely" / "model")
    run(uri, *infer, "-o", "flag.wav", "--vocoder-ckpt", str(tmp_path / "lonely" / "model"))
    monkeypatch.setenv("MLFLOW_DDSP_VOCODER_CKPT", str(tmp_path / "lonely" / "model"))
    run(uri, *infer, "-o", "variable.wav")
    monkeypatch.delenv("MLFLOW_DDSP_VOCODER_CKPT")
    assert Path("flag.wav").read_bytes() == Path("variable.wav").read_bytes() == Path("out.wav").read_bytes()

    # mlflow.pyfunc.load_model on a third machine, which has not fetched anything yet
    home = second_machine(tmp_path, monkeypatch, "third")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    audio, rate = sf.read(clip, dtype="float32")
    loaded = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    (out,) = loaded.predict(pd.DataFrame([{"samples": audio.tolist(), "sample_rate": rate}]), params={"method": "rk4"})
    assert out["sample_rate"] == 44100 and np.isfinite(out["samples"]).all() and np.abs(out["samples"]).max() > 1e-4
    assert (home / ".cache" / "mlflow-ddsp" / "weights").is_dir()

    # export: upstream's layout, config.json beside the weights
    export_version(model, tmp_path / "upstream", tracking_uri=uri)
    voc = tmp_path / "upstream" / "pretrain" / "nsf_hifigan"
    assert sha256(voc / "model") == record.sha256 and sha256(voc / "config.json") == record.companions[0].sha256

    # the right weights at the config's path with a changed config.json beside: refused, both digests named
    (training / "voc").mkdir()
    shutil.copy(kept / "model", training / "voc" / "model")
    (training / "voc" / "config.json").write_text((kept / "config.json").read_text().replace(" ", "  "))
    refused = run(uri, *infer, "-o", "refused.wav", ok=False)
    assert refused.exit_code != 0 and "Traceback" not in refused.output, refused.output
    (line,) = [x for x in refused.output.splitlines() if x.strip()]
    changed = sha256(training / "voc" / "config.json")
    assert "config.json" in line and record.companions[0].sha256[:12] in line and changed[:12] in line, line
    assert not Path("refused.wav").exists()

    # gc after the registered model is deleted: the dry run and the run name the same bytes, both files
    mlflow.MlflowClient(uri).delete_registered_model(name)
    both = f"vocoder weights {record.sha256[:12]} (model + config.json, {record.size + record.companions[0].size} bytes"
    for args in (["--dry-run"], []):
        result = run(uri, "gc", name, *args)
        assert both in result.output, result.output
    assert models_of(store, record) == []
