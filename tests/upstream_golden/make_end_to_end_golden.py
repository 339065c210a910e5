"""Write tests/data/end_to_end_upstream_golden.pt: upstream's cascade models rendered by upstream's vocoder.

Usage (from the repository root, in this project's venv)::

    M=<mirror of github.com/yxlllc/DDSP-SVC>
    mkdir -p /tmp/up-e2e-master /tmp/up-e2e-61
    git -C $M archive master | tar -x -C /tmp/up-e2e-master
    git -C $M archive 6.1 | tar -x -C /tmp/up-e2e-61
    python tests/upstream_golden/make_end_to_end_golden.py --upstream-master /tmp/up-e2e-master \\
        --upstream-61 /tmp/up-e2e-61 --out tests/data/end_to_end_upstream_golden.pt

This script holds no upstream code. It imports, from ``--upstream-master``,
``reflow.vocoder`` (``Unit2Wav`` of 6.0, ``Vocoder``) and ``diffusion.vocoder``
(``Unit2WavFast`` of 5.0, ``Vocoder``) and ``nsf_hifigan.models.Generator``; then drops
those packages from ``sys.modules`` and imports ``reflow.vocoder`` (6.1's ``Unit2Wav``
and ``Vocoder``) from ``--upstream-61``. Modules upstream imports but these classes do
not use (torchaudio, which does not load beside this torch, pyworld, transformers, ...)
are stubbed by ``make_vocoder_golden.import_upstream``.

Steps:

1. Vocoder: upstream's ``Generator`` for ``test_end_to_end_parity.VOCODER_CONFIG`` (the
   openvpi 44.1 kHz layout with 32 initial channels), its state_dict replaced by
   ``test_end_to_end_parity.vocoder_weights`` (``recipe_state_dict``, the ``conv_pre`` and
   ``ups`` weight-norm gains tripled so the audio depends on the mel), saved as
   ``{'generator': ...}`` with ``config.json`` in a temporary folder.
2. Per family of ``test_end_to_end_parity.FAMILIES`` (upstream default sizes): upstream's
   model, weights from ``test_end_to_end_parity.model_weights`` loaded strictly after a
   round trip through an upstream-style ``model_0.pt``; upstream's ``Vocoder('nsf-hifigan',
   <folder>/model)`` of that family's module, called once (``infer`` on two frames) so its
   lazy weight load, which initialises a Generator from the global RNG, happens before any
   seed.
3. Per case of ``test_end_to_end_parity.CASES``: ``test_end_to_end_parity.run_case`` (the
   function the test runs: ``torch.manual_seed(seed)``, then ``model(..., vocoder=...,
   infer=True, return_wav=True)`` under no_grad, recording ``vocoder.extract``'s output and
   ``vocoder.infer``'s arguments).
4. Saves inputs, cases, configs, weight checksums and the outputs (no weights).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: the shared spec and weight recipe
sys.path.insert(0, str(HERE))  # the vocoder recipe's import helper

import make_vocoder_golden  # noqa: E402
import test_end_to_end_parity as spec  # noqa: E402
from test_upstream_parity import RECIPE_SEED, checksums  # noqa: E402

UPSTREAM_PACKAGES = ("nsf_hifigan", "reflow", "ddsp", "diffusion", "encoder")


def forget_upstream(path: Path) -> None:
    """Drop an upstream checkout's packages from ``sys.modules`` and its folder from ``sys.path``."""
    for name in list(sys.modules):
        if name.split(".")[0] in UPSTREAM_PACKAGES:
            del sys.modules[name]
    while str(path) in sys.path:
        sys.path.remove(str(path))


def upstream_model(module: object, family: str) -> tuple[torch.nn.Module, dict[str, tuple[float, float]]]:
    """Upstream's model of ``family`` with the recipe weights (strict load via a model_0.pt file)."""
    kwargs = dict(spec.FAMILIES[family][1])
    cls = module.Unit2WavFast if family == "5.0" else module.Unit2Wav
    torch.manual_seed(0)
    model = cls(**kwargs)
    weights = spec.model_weights(family, model.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model_0.pt"
        torch.save({"global_step": 0, "model": weights}, path)
        state = torch.load(path, weights_only=True)["model"]
    model.load_state_dict(state, strict=True)
    return model.eval(), checksums(state)


def upstream_vocoder(module: object, weights: Path) -> object:
    """Upstream's ``Vocoder`` of ``module``, its weights already loaded (see step 2)."""
    vocoder = module.Vocoder("nsf-hifigan", str(weights), device="cpu")
    with torch.no_grad():
        vocoder.infer(torch.zeros(1, 2, 128), torch.full((1, 2, 1), 220.0))
    return vocoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream-master", type=Path, required=True, help="extracted upstream master checkout")
    parser.add_argument("--upstream-61", type=Path, required=True, help="extracted upstream branch 6.1 checkout")
    parser.add_argument("--out", type=Path, required=True, help="golden .pt file to write")
    args = parser.parse_args()
    master, branch61 = args.upstream_master.resolve(), args.upstream_61.resolve()
    torch.set_num_threads(2)

    inputs = spec.make_inputs()
    outputs: dict[str, dict] = {}
    model_sums: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # ---- the vocoder's weights, from upstream's Generator
        models_module = make_vocoder_golden.import_upstream(master, "nsf_hifigan.models")
        env = make_vocoder_golden.import_upstream(master, "nsf_hifigan.env")
        generator = models_module.Generator(env.AttrDict(spec.VOCODER_CONFIG))
        vocoder_state = spec.vocoder_weights(generator.state_dict())
        generator.load_state_dict(vocoder_state, strict=True)
        weights = Path(tmp) / "model"
        (Path(tmp) / "config.json").write_text(json.dumps(spec.VOCODER_CONFIG))
        torch.save({"generator": generator.state_dict()}, weights)
        vocoder_sums = checksums(torch.load(weights, weights_only=True)["generator"])

        # ---- master: 6.0 (reflow/vocoder.py) and 5.0 (diffusion/vocoder.py); then branch 6.1
        plan = [
            (master, "reflow.vocoder", "6.0"),
            (master, "diffusion.vocoder", "5.0"),
            (branch61, "reflow.vocoder", "6.1"),
        ]
        for checkout, module_name, family in plan:
            if checkout == branch61:
                forget_upstream(master)
            module = make_vocoder_golden.import_upstream(checkout, module_name)
            model, model_sums[family] = upstream_model(module, family)
            vocoder = upstream_vocoder(module, weights)
            for name, case in spec.CASES.items():
                if case["family"] != family:
                    continue
                outputs[name] = spec.run_case(model, vocoder, inputs, case)
                summary = {k: list(v.shape) for k, v in outputs[name].items()}
                print(f"{name}: {summary}; max |audio| {outputs[name]['audio'].abs().max():.3g}")

    golden = {
        "upstream_commits": dict(spec.UPSTREAM_COMMITS),
        "torch_version": str(torch.__version__),
        "recipe_seed": RECIPE_SEED,
        "vocoder_config": dict(spec.VOCODER_CONFIG),
        "vocoder_gain": spec.VOCODER_GAIN,
        "families": {family: dict(kwargs) for family, (_, kwargs) in spec.FAMILIES.items()},
        "cases": spec.CASES,
        "inputs": inputs,
        "vocoder_checksums": vocoder_sums,
        "model_checksums": model_sums,
        "outputs": outputs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(golden, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
