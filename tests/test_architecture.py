"""The architecture comes from the checkpoint; every load path names what differs in one line."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
import yaml
from click.testing import CliRunner

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.checkpoint import CheckpointReader
from mlflow_ddsp.store import RegistryStore
from mlflow_ddsp.cli import main
from mlflow_ddsp.config import parse_config
from mlflow_ddsp.errors import ArchitectureMismatchError, ConfigError, StateDictMismatchError
from mlflow_ddsp.models import (
    MODEL_TYPES,
    architecture,
    architecture_in_weights,
    architecture_of,
    build_model,
    build_model_from_config,
    check_same_architecture,
)
from mlflow_ddsp.serving.model_files import pyfunc_files
from mlflow_ddsp.state_dict import SHOWN_PER_KIND, compare_state_dict, load_state_dict_checked
from mlflow_ddsp.training.checkpoint_fit import check_resume_architecture

from conftest import tiny_config

BASE = {
    "data": {"encoder": "logmel", "encoder_out_channels": 128, "sampling_rate": 44100, "block_size": 512},
    "model": {"type": "CombSubFast", "n_spk": 2},
    "device": "cpu",
}

# name -> (config change, what the checkpoint was trained with, what the other config has)
CHANGES = {
    "n_spk": ({"model": {"n_spk": 1}}, "model.n_spk=2", "model.n_spk=1"),
    "encoder_out_channels": ({"data": {"encoder_out_channels": 64}},
                             "data.encoder_out_channels=128", "data.encoder_out_channels=64"),
    "model_type": ({"model": {"type": "CombSubSuperFast"}}, "model.type=CombSubFast", "model.type=CombSubSuperFast"),
    "two_keys": ({"model": {"n_spk": 4}, "data": {"encoder_out_channels": 256}},
                 "model.n_spk=2, data.encoder_out_channels=128", "model.n_spk=4, data.encoder_out_channels=256"),
}  # fmt: skip


def changed(doc: dict, change: dict) -> dict:
    return {section: {**doc.get(section, {}), **change.get(section, {})} if isinstance(doc.get(section), dict)
            else doc.get(section) for section in {**doc, **change}}  # fmt: skip


# ---------------------------------------------------------------- the one function

CASCADES = ("RectifiedFlow", "DiffusionFast")  # upstream 6.0 and 5.0: a CombSubSuperFast DDSP stage + a mel decoder


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_architecture_is_every_constructor_keyword(model_type):
    cfg = parse_config(changed(BASE, {"model": {"type": model_type, "win_length": 1024}}))
    arch = architecture(cfg)
    # out_dims (the cascade models' mel bins) is the vocoder's, not a config key
    keywords = [p for p in inspect.signature(MODEL_TYPES[model_type].__init__).parameters if p not in ("self", "out_dims")]
    assert sorted(arch.params) == sorted(keywords)
    assert architecture_of(build_model_from_config(cfg)) == arch
    assert arch.settings["model.type"] == model_type and arch.settings["data.encoder_out_channels"] == 128
    # a key the type does not take (win_length outside CombSubSuperFast) is not part of it
    assert ("model.win_length" in arch.settings) == (model_type in ("CombSubSuperFast", *CASCADES))


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_difference_is_named_in_one_line(change):
    delta, trained, mine = CHANGES[change]
    with pytest.raises(ArchitectureMismatchError) as info:
        check_same_architecture(architecture(parse_config(BASE)), architecture(parse_config(changed(BASE, delta))),
                                trained_by="checkpoint voice v3")  # fmt: skip
    assert str(info.value).startswith(f"checkpoint voice v3 was trained with {trained}; this config has {mine}: ")
    assert "\n" not in str(info.value)
    # what shapes no tensor may change freely
    tuned = changed(BASE, {"train": {"lr": 1e-5, "batch_size": 4}})
    check_same_architecture(architecture(parse_config(BASE)), architecture(parse_config(tuned)), trained_by="x")


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_the_weights_reveal_their_shaping_keys(model_type):
    cfg = parse_config(changed(BASE, {"model": {"type": model_type, "n_spk": 3, "use_pitch_aug": True}}))
    found = architecture_in_weights(build_model_from_config(cfg).state_dict())
    settings = architecture(cfg).settings
    expected_type = model_type if model_type in ("CombSubFast", "CombSubSuperFast", *CASCADES) else "CombSub or Sins"
    assert found.pop("model.type") == expected_type
    assert found.pop("upstream", None) == ("6.0" if model_type == "RectifiedFlow" else None)
    takes_aug = "model.use_pitch_aug" in settings
    assert found.pop("model.use_pitch_aug") is takes_aug
    assert found == {k: v for k, v in settings.items() if k in found}
    assert {"model.n_spk", "data.encoder_out_channels", "data.sampling_rate", "data.block_size"} <= set(found)
    one = parse_config(changed(BASE, {"model": {"type": model_type, "n_spk": 1}}))
    assert architecture_in_weights(build_model_from_config(one).state_dict())["model.n_spk"] == 1  # no embedding
    assert architecture_in_weights({"proj.weight": torch.zeros(2, 2)}) == {}  # not a DDSP-SVC state_dict


# ---------------------------------------------------------------- the one state_dict check


def test_state_dict_mismatch_names_keys_and_shapes():
    small = build_model("CombSubFast", sampling_rate=44100, block_size=512, n_unit=256, n_spk=2)
    large = build_model("CombSubFast", sampling_rate=44100, block_size=512, n_unit=256, n_spk=4)
    before = large.unit2ctrl.spk_embed.weight.clone()
    with pytest.raises(StateDictMismatchError) as info:
        load_state_dict_checked(large, small.state_dict(), source="checkpoint voice v3")
    assert str(info.value) == ("checkpoint voice v3 does not fit this CombSubFast: 1 shape mismatch "
                               "(unit2ctrl.spk_embed.weight: checkpoint [2, 256] vs model [4, 256])")  # fmt: skip
    assert torch.equal(large.unit2ctrl.spk_embed.weight, before)  # nothing loaded
    assert isinstance(info.value, ConfigError)

    state = small.state_dict()
    state.pop("window")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(StateDictMismatchError, match=r": 1 missing key \(window\); 1 unexpected key \(extra.weight\): "
                       r"use the right config$"):
        load_state_dict_checked(small, state, source="x", hint="use the right config")
    load_state_dict_checked(small, state, source="x", strict=False)  # non-strict: only shapes count


def test_long_listings_are_truncated():
    many = {f"layer{i}.weight": torch.zeros(3) for i in range(SHOWN_PER_KIND + 3)}
    module = torch.nn.Linear(2, 2)
    diff = compare_state_dict(module, many)
    assert diff.missing == ["weight", "bias"] and len(diff.unexpected) == SHOWN_PER_KIND + 3
    with pytest.raises(StateDictMismatchError, match=rf"{SHOWN_PER_KIND + 3} unexpected keys \(layer0.weight, "
                       rf".*layer{SHOWN_PER_KIND - 1}.weight, and 3 more\)$"):  # fmt: skip
        load_state_dict_checked(module, many, source="x")
    bad = {"weight": torch.zeros(3, 3), "bias": "not a tensor"}
    with pytest.raises(StateDictMismatchError, match=r"weight: checkpoint \[3, 3\] vs model \[2, 2\], "
                       r"bias: checkpoint a str vs model \[2\]"):  # fmt: skip
        load_state_dict_checked(module, bad, source="x")
    with pytest.raises(StateDictMismatchError, match=r"^x holds a NoneType, not a state_dict"):
        load_state_dict_checked(module, None, source="x")


def test_module_checks_of_values_still_come_through_as_one_line():
    model = build_model("CombSubFast", sampling_rate=44100, block_size=512, n_unit=256)
    state = model.state_dict()
    state["sampling_rate"] = torch.tensor(22050)
    with pytest.raises(StateDictMismatchError, match=r"^x does not fit this CombSubFast: checkpoint has "
                       r"data.sampling_rate=22050 but this CombSubFast was built with 44100"):  # fmt: skip
        load_state_dict_checked(model, state, source="x")


# ---------------------------------------------------------------- every command refuses in one line


def register(backend, name: str, config: dict, weights_of: dict | None = None) -> None:
    """Register step 10 of ``name`` with ``config``; its weights from ``weights_of`` (default the same config)."""
    torch.manual_seed(0)
    model = build_model_from_config(parse_config(weights_of or config))
    with CheckpointQueue(name, 10, None, config=yaml.safe_dump(config).encode(), tracking_uri=backend.uri,
                         experiment=backend.experiment, extra_files=pyfunc_files()) as queue:  # fmt: skip
        queue.save(10, model).result()


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    text = result.stderr.strip()
    assert text.startswith("error: ") and "\n" not in text and "Traceback" not in result.output, result.output
    return text


@pytest.mark.parametrize("change", ["n_spk", "encoder_out_channels", "model_type"])
def test_import_into_a_model_of_another_architecture(embedded, model_name, tmp_path, change):
    delta, trained, mine = CHANGES[change]
    register(embedded, model_name, BASE)
    other = changed(BASE, delta)
    expdir = tmp_path / "exp"
    expdir.mkdir()
    (expdir / "config.yaml").write_text(yaml.safe_dump(other))
    torch.save({"global_step": 100, "model": build_model_from_config(parse_config(other)).state_dict()},
               expdir / "model_100.pt")  # fmt: skip
    result = CliRunner().invoke(main, ["--tracking-uri", embedded.uri, "import", str(expdir), "--name", model_name])
    text = one_line_error(result)
    assert re.search(rf"was trained with {re.escape(trained)}; .*config.yaml has {re.escape(mine)}: ", text), text


@pytest.mark.parametrize("change", ["n_spk", "encoder_out_channels", "model_type"])
def test_infer_and_serving_refuse_a_version_whose_weights_are_not_its_configs(embedded, model_name, tmp_path, change):
    from mlflow_ddsp.serving.resolve import load_model

    delta, trained, mine = CHANGES[change]
    register(embedded, model_name, changed(BASE, delta), weights_of=BASE)
    argv = ["--tracking-uri", embedded.uri, "infer", "-m", f"models:/{model_name}/1", "-i", "in.wav", "-o", "out.wav"]
    (tmp_path / "in.wav").write_bytes(b"")  # never read: the model is loaded first
    text = one_line_error(CliRunner().invoke(main, argv))
    assert text == (f"error: checkpoint {model_name} v1 (step 10) holds weights of {trained}; its config.yaml has "
                    f"{mine}: the config.yaml is not the one these weights were trained with")  # fmt: skip
    with pytest.raises(ArchitectureMismatchError, match=rf"holds weights of {re.escape(trained)}; its config.yaml "
                       rf"has {re.escape(mine)}: "):  # fmt: skip
        load_model(f"models:/{model_name}/1", tracking_uri=embedded.uri)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["resume", "init-from"])
@pytest.mark.parametrize("change", ["n_spk", "encoder_out_channels", "model_type"])
def test_training_from_a_checkpoint_of_another_architecture(demo_data, embedded, model_name, tmp_path, command, change):
    delta, trained, mine = CHANGES[change]
    path = tiny_config(demo_data, tmp_path / "config.yaml", model_name)
    doc = yaml.safe_load(path.read_text())
    source = model_name if command == "resume" else f"{model_name}-base"
    register(embedded, source, doc)
    path.write_text(yaml.safe_dump(changed(doc, delta)))
    argv = ["--tracking-uri", embedded.uri, "train", "-c", str(path)]
    if command == "init-from":
        argv += ["--init-from", f"models:/{source}/1"]
    text = one_line_error(CliRunner().invoke(main, argv))
    assert text.startswith(f"error: checkpoint {source} v1 (step 10) was trained with {trained}; "
                           f"this config has {mine}: set these keys as the checkpoint has them"), text  # fmt: skip
    # refused before anything was created: no run, no new registered model, no lease left
    store = RegistryStore(embedded.uri)
    assert store.client.get_experiment_by_name(f"exp-{model_name}") is None
    assert [m.name for m in store.client.search_registered_models()] == [source]


def test_training_checks_the_resume_point_before_anything_is_created(embedded, model_name):
    """What ``train`` asks before its lease and run: the version ``restore`` would load."""
    register(embedded, f"{model_name}-base", BASE)
    mine = architecture(parse_config(changed(BASE, CHANGES["n_spk"][0])))
    reader = CheckpointReader(model_name, store=RegistryStore(embedded.uri))
    check_resume_architecture(reader, mine)  # nothing to resume: nothing to compare
    with pytest.raises(ArchitectureMismatchError, match=rf"^checkpoint {model_name}-base v1 \(step 10\) was trained "
                       r"with model.n_spk=2; this config has model.n_spk=1: "):  # fmt: skip
        check_resume_architecture(reader, mine, source=f"models:/{model_name}-base/1")
    check_resume_architecture(reader, architecture(parse_config(BASE)), source=f"models:/{model_name}-base/1")
    register(embedded, model_name, changed(BASE, CHANGES["n_spk"][0]))
    check_resume_architecture(reader, mine, source=f"models:/{model_name}-base/1")  # its own checkpoint comes first
