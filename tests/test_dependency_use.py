"""Every command that uses a version resolves the weight files it records through one function
(issue 21, point 3; ``mlflow_ddsp/serving/dependencies.py``): ``infer``, ``serve`` (and the pyfunc
loader), ``compare``, ``export``.

Real stores (embedded SQLite and the session's ``mlflow server``). A version that records its
dependencies is made the way a version written before issue 21 gets them: imported from an
upstream folder, then ``attach_dependencies`` (stores the file once, tags the version); the
manifest form is checked at the function level (the queue writing it is the lead's part).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mlflow_ddsp.checkpoint.dependency_cache import CACHE_ENV, cache_root
from mlflow_ddsp.checkpoint.dependency_attach import attach_dependencies
from mlflow_ddsp.checkpoint.files import MANIFEST_FILE, Manifest, sha256_file, write_checkpoint
from mlflow_ddsp.config import parse_config
from mlflow_ddsp.errors import CheckpointIntegrityError, ConfigError
from mlflow_ddsp.serving.dependencies import (
    manifest_dependencies,
    registered_dependencies,
    resolve_dependencies,
    upstream_paths,
)
from mlflow_ddsp.serving.resolve import fetch_servable
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.transfer import export_version, import_experiment

from conftest import second_machine
from test_dependencies import weights
from test_transfer import UPSTREAM_CONFIG, write_upstream_expdir


pytestmark = pytest.mark.usefixtures("forget_stored_dependencies")


def _no_store():
    raise AssertionError("the store was opened, but nothing needed a download")


@pytest.fixture
def recorded_version(backend, model_name, tmp_path):
    """``(uri, a copy of the encoder's bytes, its record)``: an imported hubertsoft version whose
    encoder is stored once and recorded on the version (``attach_dependencies``); the file is gone
    from the path its config names."""
    encoder, record = weights(tmp_path / "training-machine")
    config = {**UPSTREAM_CONFIG, "data": {**UPSTREAM_CONFIG["data"], "encoder_ckpt": str(encoder)}}
    write_upstream_expdir(tmp_path / "exp" / "dep", [2000], config, with_optimizer=False)
    import_experiment(tmp_path / "exp" / "dep", model_name, tracking_uri=backend.uri, experiment=backend.experiment)
    store = RegistryStore(backend.uri)
    version = store.get_version(model_name, 1)
    outcome = attach_dependencies(store, version, [(encoder, record)])
    assert outcome.attached == (record,)
    kept = tmp_path / "kept-copy.bin"
    encoder.rename(kept)  # off the training machine's path: a second machine has no copy there
    return f"models:/{model_name}/1", kept, record


# -- the manifest's optional field --------------------------------------------------------
def test_a_manifest_without_dependencies_keeps_its_bytes_and_digest(tmp_path):
    old = (
        b'{\n  "format": "mlflow-ddsp.checkpoint/1",\n  "step": 4,\n  "files": {\n    "config.yaml": '
        b'{\n      "sha256": "' + b"a" * 64 + b'",\n      "size": 3\n    }\n  }\n}\n'
    )
    manifest = Manifest.from_json(old)
    assert manifest.dependencies is None and manifest_dependencies(manifest) == []
    assert manifest.to_json() == old  # an old version's manifest still verifies against its recorded sha256
    written, _ = write_checkpoint(tmp_path, 4, {"global_step": 4, "model": {}}, b"{}\n")
    assert "dependencies" not in json.loads((tmp_path / MANIFEST_FILE).read_bytes())


def test_a_manifest_with_dependencies_round_trips_and_a_bad_record_is_refused(tmp_path):
    _, record = weights(tmp_path)
    manifest, _ = write_checkpoint(tmp_path, 4, {"global_step": 4, "model": {}}, b"{}\n",
                                   dependencies=[record.to_dict()])  # fmt: skip
    again = Manifest.from_json((tmp_path / MANIFEST_FILE).read_bytes())
    assert again == manifest and manifest_dependencies(again) == [record]
    bad = json.loads(manifest.to_json())
    bad["dependencies"][0]["sha256"] = "not-hex"
    with pytest.raises(CheckpointIntegrityError, match=r"v9: manifest.json has an invalid dependency record.*64"):
        manifest_dependencies(Manifest.from_json(json.dumps(bad).encode()), label="v9")
    with pytest.raises(CheckpointIntegrityError, match="not a list of records"):
        Manifest.from_json(json.dumps({**bad, "dependencies": "encoder"}).encode())


# -- resolving ---------------------------------------------------------------------------
def test_a_version_without_records_is_left_exactly_as_it_was():
    raw = b"data: {encoder_ckpt: /nowhere/cv.pt}\n"
    assert resolve_dependencies(_no_store, [], raw) is raw  # bytes stay bytes, nothing opened or hashed
    cfg = parse_config({"data": {"encoder_ckpt": "/nowhere/cv.pt"}})
    assert resolve_dependencies(_no_store, [], cfg) is cfg


def test_resolve_on_a_fresh_machine_downloads_into_the_cache_verified(backend, recorded_version, tmp_path, monkeypatch):
    uri, encoder, record = recorded_version
    store = RegistryStore(backend.uri)
    version = store.get_version(uri.split("/")[1], 1)
    second_machine(tmp_path, monkeypatch)
    records = registered_dependencies(store, version)  # the tag attach wrote (the manifest has none)
    assert records == [record]
    cfg = parse_config({**UPSTREAM_CONFIG, "data": {**UPSTREAM_CONFIG["data"], "encoder_ckpt": "/gone/cv.pt"}})
    resolved = resolve_dependencies(store, records, cfg)
    path = Path(resolved.data.encoder_ckpt)
    assert path == cache_root() / "weights" / record.sha256 / record.file
    assert str(path).startswith(str(tmp_path / "second" / "home"))
    assert sha256_file(path).sha256 == record.sha256 and path.read_bytes() == encoder.read_bytes()
    assert resolved.model == cfg.model  # only the paths change
    # Cached now: resolving again needs no store at all (a serving box without the server).
    assert resolve_dependencies(_no_store, records, cfg).data.encoder_ckpt == str(path)


def test_a_matching_local_file_is_used_in_place(tmp_path, monkeypatch):
    encoder, record = weights(tmp_path / "here")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    cfg = parse_config({"data": {"encoder": "hubertsoft", "encoder_out_channels": 256, "encoder_ckpt": str(encoder)}})
    assert resolve_dependencies(_no_store, [record], cfg).data.encoder_ckpt == str(encoder)
    moved = tmp_path / "elsewhere.pt"
    encoder.rename(moved)
    monkeypatch.setenv("MLFLOW_DDSP_ENCODER_CKPT", str(moved))
    assert resolve_dependencies(_no_store, [record], cfg).data.encoder_ckpt == str(moved)
    assert not (tmp_path / "cache").exists()  # nothing copied


@pytest.mark.parametrize("how", ["flag", "env", "config"])
def test_other_bytes_are_refused_naming_both_digests(tmp_path, monkeypatch, how):
    _, record = weights(tmp_path / "training")
    other, other_record = weights(tmp_path / "mine")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    overrides = {}
    data = {"encoder": "hubertsoft", "encoder_out_channels": 256, "encoder_ckpt": "/gone/cv.pt"}
    if how == "flag":
        overrides = {"encoder": ("--encoder-ckpt", str(other))}
    elif how == "env":
        monkeypatch.setenv("MLFLOW_DDSP_ENCODER_CKPT", str(other))
    else:
        data["encoder_ckpt"] = str(other)
    with pytest.raises(CheckpointIntegrityError) as info:
        resolve_dependencies(_no_store, [record], parse_config({"data": data}), overrides=overrides, label="voice v3")
    message = str(info.value)
    assert record.sha256[:12] in message and other_record.sha256[:12] in message and "\n" not in message
    setting = {"flag": "--encoder-ckpt", "env": "MLFLOW_DDSP_ENCODER_CKPT", "config": "data.encoder_ckpt"}[how]
    assert setting in message
    assert not (tmp_path / "cache").exists()  # refused before anything was fetched


def test_an_explicit_override_that_names_no_file_is_one_line(tmp_path, monkeypatch):
    _, record = weights(tmp_path)
    cfg = parse_config({"data": {"encoder": "hubertsoft", "encoder_out_channels": 256}})
    with pytest.raises(ConfigError, match=r"^--encoder-ckpt=.*nope.pt: no such file; voice v3 needs encoder weights"):
        resolve_dependencies(_no_store, [record], cfg, overrides={"encoder": ("--encoder-ckpt", "nope.pt")},
                             label="voice v3")  # fmt: skip


def test_infer_refuses_an_override_with_other_bytes_before_converting(backend, recorded_version, tmp_path):
    from mlflow_ddsp.cli import main

    uri, _, record = recorded_version
    other, other_record = weights(tmp_path / "mine")
    (tmp_path / "in.wav").write_bytes(b"")  # never read: the refusal comes first
    result = CliRunner().invoke(main, ["--tracking-uri", backend.uri, "infer", "-m", uri, "-i", "in.wav",
                                       "-o", "out.wav", "--encoder-ckpt", str(other)])  # fmt: skip
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if "sha256" in line]
    assert len(lines) == 1 and record.sha256[:12] in lines[0] and other_record.sha256[:12] in lines[0]
    assert "Traceback" not in result.output and not (tmp_path / "out.wav").exists()


def test_serve_fetches_the_dependencies_into_the_cache(backend, recorded_version, tmp_path, monkeypatch):
    uri, encoder, record = recorded_version
    second_machine(tmp_path, monkeypatch)
    dst = tmp_path / "served"
    dst.mkdir()
    fetch_servable(uri, dst, tracking_uri=backend.uri)
    cached = cache_root() / "weights" / record.sha256 / record.file
    assert cached.read_bytes() == encoder.read_bytes()


# -- export: upstream's layout -----------------------------------------------------------
def test_export_writes_upstreams_pretrain_layout(backend, recorded_version, tmp_path, monkeypatch):
    uri, encoder, record = recorded_version
    second_machine(tmp_path, monkeypatch)
    out = tmp_path / "upstream"
    export_version(uri, out, tracking_uri=backend.uri)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["config.yaml", "model_2000.pt", "pretrain/hubert/hubert-soft-0d54a1f4.pt"]
    exported = yaml.safe_load((out / "config.yaml").read_text())
    assert exported["data"]["encoder_ckpt"] == "pretrain/hubert/hubert-soft-0d54a1f4.pt"  # relative, as upstream's
    assert (out / exported["data"]["encoder_ckpt"]).read_bytes() == encoder.read_bytes()
    # Upstream's layout check: every weight path the config names, resolved from the folder, is there.
    cfg = parse_config(exported)
    assert upstream_paths(cfg, [record]) == {"encoder": exported["data"]["encoder_ckpt"]}
    assert {k: v for k, v in exported.items() if k != "data"} == {
        k: v for k, v in UPSTREAM_CONFIG.items() if k != "data"
    }  # only the weight paths changed
    # Refused names: the pretrain file is a target too, never overwritten without --force.
    (out / "config.yaml").unlink()
    (out / "model_2000.pt").unlink()
    with pytest.raises(ConfigError, match=r"already holds pretrain/hubert/hubert-soft-0d54a1f4.pt; .* --force"):
        export_version(uri, out, tracking_uri=backend.uri)
    assert not (out / "config.yaml").exists() and not (out / "model_2000.pt").exists()  # nothing partial
