"""Import of upstream DDSP-SVC experiment folders, export back, bit for bit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml

from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.config import parse_config
from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.models import build_model_from_config
from mlflow_ddsp.checkpoint.policy_record import recorded_policy
from mlflow_ddsp.transfer import export_version, import_experiment

from registry_checks import assert_invariants, versions_by_step

# An upstream-style config (hubertsoft units: 256 channels), as upstream writes it into exp/<name>/.
UPSTREAM_CONFIG = {
    "data": {"f0_extractor": "parselmouth", "sampling_rate": 44100, "block_size": 512, "duration": 2,
             "encoder": "hubertsoft", "encoder_out_channels": 256, "encoder_ckpt": "pretrain/hubert/hubert-soft.pt",
             "train_path": "data/train", "valid_path": "data/val", "extensions": ["wav"]},
    "model": {"type": "CombSubFast", "n_spk": 2},
    "enhancer": {"type": "nsf-hifigan", "ckpt": "pretrain/nsf_hifigan/model"},
    "loss": {"fft_min": 256, "fft_max": 2048, "n_scale": 4},
    "device": "cuda",
    "env": {"expdir": "exp/combsub-test", "gpu_id": 0},
    "train": {"batch_size": 24, "interval_log": 10, "interval_val": 2000, "interval_force_save": 4000,
              "lr": 0.0005, "weight_decay": 0, "save_opt": True},
}  # fmt: skip


def write_upstream_expdir(root: Path, steps, config=UPSTREAM_CONFIG, *, with_optimizer=True) -> dict[int, Path]:
    """What upstream's trainer leaves: config.yaml and model_<N>.pt files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cfg = parse_config(config)
    files = {}
    for step in steps:
        torch.manual_seed(step)
        model = build_model_from_config(cfg)
        payload = {"global_step": step, "model": model.state_dict()}
        if with_optimizer:
            optimizer = torch.optim.AdamW(model.parameters())
            model(torch.randn(1, 4, 256), torch.full((1, 4, 1), 200.0), torch.rand(1, 4, 1), 1).pow(2).mean().backward()
            optimizer.step()
            payload["optimizer"] = optimizer.state_dict()
        files[step] = root / f"model_{step}.pt"
        torch.save(payload, files[step])
    return files


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_import_then_export_round_trips_bit_for_bit(backend, model_name, tmp_path):
    files = write_upstream_expdir(tmp_path / "exp" / "combsub-test", [0, 4000, 8000, 10000])
    report = import_experiment(tmp_path / "exp" / "combsub-test", model_name, tracking_uri=backend.uri,
                               experiment=backend.experiment)  # fmt: skip
    assert [(s, k) for s, _, k in report.imported] == [
        (0, "force_saved"), (4000, "force_saved"), (8000, "force_saved"), (10000, "rolling")]  # fmt: skip
    store = RegistryStore(backend.uri)
    assert versions_by_step(store, model_name) == {0: "force_saved", 4000: "force_saved", 8000: "force_saved",
                                                   10000: "rolling"}  # fmt: skip
    assert assert_invariants(store, backend, model_name) == 10000

    # Idempotent: a second import registers nothing.
    again = import_experiment(tmp_path / "exp" / "combsub-test", model_name, tracking_uri=backend.uri,
                              experiment=backend.experiment)  # fmt: skip
    assert again.imported == [] and [s for s, _ in again.skipped] == [0, 4000, 8000, 10000]
    assert len(store.list_versions(model_name)) == 4

    # Export gives back the very files upstream wrote, and its config.
    for version in store.list_versions(model_name):
        out = export_version(f"models:/{model_name}/{version.version}", tmp_path / f"out-{version.step}",
                             tracking_uri=backend.uri)  # fmt: skip
        assert out.name == f"model_{version.step}.pt"
        assert sha(out) == sha(files[version.step])
        assert (out.parent / "config.yaml").read_bytes() == (tmp_path / "exp" / "combsub-test" / "config.yaml").read_bytes()
    rolling = export_version(f"models:/{model_name}@rolling", tmp_path / "out-rolling", tracking_uri=backend.uri)
    assert sha(rolling) == sha(files[10000])
    exported = torch.load(rolling, weights_only=True)
    assert exported["global_step"] == 10000 and "optimizer" in exported


@pytest.mark.parametrize(
    "config_change, message",
    [
        ({"model": {"type": "Sins", "n_spk": 2}},
         r"model_4000.pt holds weights of model.type=CombSubFast; its config.yaml has model.type=Sins: "
         r"copy the config.yaml it was trained with beside it"),
        ({"data": {**UPSTREAM_CONFIG["data"], "encoder_out_channels": 768}},
         r"holds weights of data.encoder_out_channels=256; its config.yaml has data.encoder_out_channels=768"),
        ({"data": {**UPSTREAM_CONFIG["data"], "block_size": 256}},
         r"holds weights of data.block_size=512; its config.yaml has data.block_size=256"),
    ],
)  # fmt: skip
def test_incompatible_checkpoint_is_a_clear_error(embedded, model_name, tmp_path, config_change, message):
    expdir = tmp_path / "exp"
    write_upstream_expdir(expdir, [4000], with_optimizer=False)
    (expdir / "config.yaml").write_text(yaml.safe_dump({**UPSTREAM_CONFIG, **config_change}))
    with pytest.raises(ConfigError, match=message) as info:
        import_experiment(expdir, model_name, tracking_uri=embedded.uri)
    assert "\n" not in str(info.value)
    assert not RegistryStore(embedded.uri).registered_model_exists(model_name)  # nothing half-imported


def test_what_the_tensors_cannot_show_is_named_by_key_and_shape(embedded, model_name, tmp_path):
    sins = {**UPSTREAM_CONFIG, "model": {"type": "Sins", "n_spk": 2}}
    expdir = tmp_path / "exp"
    write_upstream_expdir(expdir, [4000], config=sins, with_optimizer=False)
    (expdir / "config.yaml").write_text(yaml.safe_dump({**sins, "model": {**sins["model"], "n_harmonics": 64}}))
    with pytest.raises(ConfigError, match=r"model_4000.pt does not fit this Sins: 3 shape mismatches "
                       r"\(unit2ctrl.dense_out.bias: checkpoint \[640\] vs model \[576\], ") as info:
        import_experiment(expdir, model_name, tracking_uri=embedded.uri)
    assert "\n" not in str(info.value) and "copy the config.yaml it was trained with" in str(info.value)


def test_superfast_window_mismatch_is_refused(embedded, model_name, tmp_path):
    # Upstream issue #111: a win_length 1024 checkpoint used with a 2048 config.
    config = {**UPSTREAM_CONFIG, "model": {"type": "CombSubSuperFast", "win_length": 1024, "n_spk": 2}}
    expdir = tmp_path / "exp"
    write_upstream_expdir(expdir, [2000], config=config, with_optimizer=False)
    (expdir / "config.yaml").write_text(yaml.safe_dump({**config, "model": {**config["model"], "win_length": 2048}}))
    with pytest.raises(ConfigError, match=r"model.win_length=2048"):
        import_experiment(expdir, model_name, tracking_uri=embedded.uri)


def test_a_different_architecture_cannot_join_a_registered_model(embedded, model_name, tmp_path):
    write_upstream_expdir(tmp_path / "a", [2000], with_optimizer=False)
    import_experiment(tmp_path / "a", model_name, tracking_uri=embedded.uri)
    other = {**UPSTREAM_CONFIG, "model": {"type": "CombSubFast", "n_spk": 1}}
    write_upstream_expdir(tmp_path / "b", [2000], config=other, with_optimizer=False)
    with pytest.raises(ConfigError, match=r"registered model .* was trained with model.n_spk=2; .*b/config.yaml has "
                       r"model.n_spk=1: a registered model holds one architecture; import into a new name"):
        import_experiment(tmp_path / "b", model_name, tracking_uri=embedded.uri)


def test_folder_without_config_or_checkpoints(embedded, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"config.yaml not found: upstream writes config.yaml beside"):
        import_experiment(tmp_path / "empty", "x", tracking_uri=embedded.uri)
    (tmp_path / "empty" / "config.yaml").write_text(yaml.safe_dump(UPSTREAM_CONFIG))
    with pytest.raises(ConfigError, match=r"no model_<N>.pt checkpoints in"):
        import_experiment(tmp_path / "empty", "x", tracking_uri=embedded.uri)


@pytest.fixture
def one_version(backend, model_name, tmp_path) -> str:
    write_upstream_expdir(tmp_path / "exp" / "one", [2000], with_optimizer=False)
    import_experiment(tmp_path / "exp" / "one", model_name, tracking_uri=backend.uri, experiment=backend.experiment)
    return f"models:/{model_name}/1"


@pytest.mark.parametrize("existing", ["config.yaml", "model_2000.pt"])
def test_export_never_overwrites_a_persons_files(backend, one_version, tmp_path, existing):
    out = tmp_path / "out"
    out.mkdir()
    (out / existing).write_text("my hand-tuned file\n")
    with pytest.raises(ConfigError, match=rf"already holds {existing}; export never overwrites .* --force"):
        export_version(one_version, out, tracking_uri=backend.uri)
    assert sorted(p.name for p in out.iterdir()) == [existing]  # nothing partial
    assert (out / existing).read_text() == "my hand-tuned file\n"

    export_version(one_version, out, tracking_uri=backend.uri, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model_2000.pt"]  # no temp files left
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["type"] == "CombSubFast"


def test_export_never_writes_through_a_symlink(backend, one_version, tmp_path):
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("a file outside the output folder\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").symlink_to(outside)
    with pytest.raises(ConfigError, match=r"already holds config.yaml"):
        export_version(one_version, out, tracking_uri=backend.uri)
    export_version(one_version, out, tracking_uri=backend.uri, force=True)
    assert outside.read_text() == "a file outside the output folder\n"
    assert not (out / "config.yaml").is_symlink() and (out / "config.yaml").is_file()


def test_export_to_a_path_that_cannot_be_a_folder_is_one_line(backend, one_version, tmp_path):
    from click.testing import CliRunner

    from mlflow_ddsp.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for target in (blocker, blocker / "sub"):
        result = CliRunner().invoke(main, ["--tracking-uri", backend.uri, "export", one_version, str(target)])
        assert result.exit_code != 0 and "Traceback" not in result.output
        last = result.output.strip().splitlines()[-1]
        assert last.lower().startswith("error:") and "a-file" in last  # one line naming the path
    assert blocker.read_text() == "x"


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("config is a list", r"config.yaml must contain a mapping of config sections, got list"),
        ("config is not utf-8", r"config.yaml is not UTF-8 text"),
        ("config is a symlink", r"config.yaml is a symlink; import reads only regular files"),
        ("checkpoint is a symlink", r"model_2000.pt is a symlink; import reads only regular files"),
        ("checkpoint is empty", r"model_2000.pt is not a readable DDSP-SVC checkpoint: .*model_2000.pt is empty"),
        ("checkpoint is truncated", r"model_2000.pt is not a readable DDSP-SVC checkpoint: .*truncated or another format"),
        ("checkpoint is text", r"model_2000.pt is not a readable DDSP-SVC checkpoint"),
        ("checkpoint would run code", r"model_2000.pt is not a readable DDSP-SVC checkpoint: .*would run code"),
    ],
)
def test_a_broken_experiment_folder_is_one_line_and_registers_nothing(embedded, model_name, tmp_path, breakage, message):
    import os
    import pickle

    from click.testing import CliRunner

    from mlflow_ddsp.cli import main

    expdir = tmp_path / "exp"
    files = write_upstream_expdir(expdir, [2000], with_optimizer=False)
    checkpoint, config = files[2000], expdir / "config.yaml"
    outside = tmp_path / "outside"
    outside.write_bytes(config.read_bytes())
    if breakage == "config is a list":
        config.write_text("- data\n- model\n")
    elif breakage == "config is not utf-8":
        config.write_bytes(b"data:\n  encoder: caf\xe9\n")
    elif breakage == "config is a symlink":
        config.unlink()
        config.symlink_to(outside)
    elif breakage == "checkpoint is a symlink":
        checkpoint.unlink()
        checkpoint.symlink_to("/etc/hostname")
    elif breakage == "checkpoint is empty":
        checkpoint.write_bytes(b"")
    elif breakage == "checkpoint is truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    elif breakage == "checkpoint is text":
        checkpoint.write_text("not a checkpoint\n")
    elif breakage == "checkpoint would run code":
        marker = tmp_path / "ran"

        class Exploit:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        checkpoint.write_bytes(pickle.dumps({"model": Exploit()}))
    result = CliRunner().invoke(main, ["--tracking-uri", embedded.uri, "import", str(expdir), "--name", model_name])
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in result.output
    import re

    assert re.search(message, line), line
    assert not RegistryStore(embedded.uri).registered_model_exists(model_name)
    assert not (tmp_path / "ran").exists()


def test_import_keeps_what_the_configs_retention_keeps(backend, model_name, tmp_path):
    """Import opens its queue with the config's whole retention (keep_last, best metric), not the
    defaults: with keep_last=1 its plans retired rolling versions the training's keep_last kept,
    and its recorded options overwrote the training's for every later gc and versions."""
    config = {**UPSTREAM_CONFIG, "train": {**UPSTREAM_CONFIG["train"], "keep_last": 3}}
    expdir = tmp_path / "exp" / "combsub-test"
    write_upstream_expdir(expdir, [2000], config, with_optimizer=False)
    import_experiment(expdir, model_name, tracking_uri=backend.uri, experiment=backend.experiment)
    write_upstream_expdir(expdir, [2000, 6000], config, with_optimizer=False)  # training went on
    import_experiment(expdir, model_name, tracking_uri=backend.uri, experiment=backend.experiment)
    store = RegistryStore(backend.uri)
    assert versions_by_step(store, model_name) == {2000: "rolling", 6000: "rolling"}  # keep_last=3 keeps both
    _, policy = recorded_policy(store, model_name)
    assert policy.keep_last == 3
