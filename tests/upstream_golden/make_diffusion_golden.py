"""Write ``tests/data/diffusion_upstream_golden.pt`` by running upstream DDSP-SVC's own 5.0 code.

Usage (upstream extracted with ``git archive master | tar -x -C PATH``)::

    python tests/upstream_golden/make_diffusion_golden.py --upstream PATH --out tests/data/diffusion_upstream_golden.pt

Builds upstream's ``diffusion.vocoder.Unit2WavFast`` at its default sizes and a
``diffusion.diffusion.GaussianDiffusion`` around a narrow ``NaiveV2Diff``
(``test_diffusion_model.SMALL_DENOISER``, for the sampler cases), loads the weights
of ``test_diffusion_model.diffusion_recipe`` strictly, and records for each
case of ``test_diffusion_model`` the result of one call made right after
``torch.manual_seed(seed)``. Modules upstream imports but these classes do not use
(torchaudio, pyworld, transformers, fairseq, gin, torchcrepe, ...) are replaced by
empty stubs when they cannot be imported here. Nothing of upstream is copied: its
modules are imported from PATH.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

import test_diffusion_model as spec  # noqa: E402  (tests/ on sys.path first)
from test_upstream_parity import RECIPE_SEED, checksums  # noqa: E402

# imported by upstream modules on the import path of diffusion/vocoder.py, unused by Unit2WavFast
_ALWAYS_STUB = ("torchaudio", "torchaudio.transforms", "torchcrepe")
_STUB_IF_MISSING = ("pyworld", "parselmouth", "resampy", "transformers", "fairseq", "gin", "local_attention", "sklearn",
                    "sklearn.cluster")


def _stub(name: str) -> None:
    module = types.ModuleType(name)
    # any attribute is a do-nothing class: enough for imports and decorators never called
    module.__getattr__ = lambda attr: type(attr, (), {"__init__": lambda self, *a, **k: None})  # type: ignore
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent and parent in sys.modules:
        setattr(sys.modules[parent], child, module)


def import_upstream(path: Path):
    for name in _ALWAYS_STUB:
        _stub(name)
    for name in _STUB_IF_MISSING:
        if name in sys.modules:
            continue
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            _stub(name)
    sys.path.insert(0, str(path))
    from diffusion.diffusion import GaussianDiffusion  # upstream's modules
    from diffusion.naive_v2_diff import NaiveV2Diff
    from diffusion.vocoder import Unit2WavFast

    return Unit2WavFast, GaussianDiffusion, NaiveV2Diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, required=True, help="extracted upstream DDSP-SVC checkout (master)")
    parser.add_argument("--out", type=Path, required=True, help="golden file to write")
    args = parser.parse_args()
    Unit2WavFast, GaussianDiffusion, NaiveV2Diff = import_upstream(args.upstream)
    try:
        commit = subprocess.run(
            ["git", "-C", str(args.upstream), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = spec.UPSTREAM_COMMIT  # a git-archive extraction has no .git: the commit the brief names

    kw = spec.MODEL_KWARGS
    torch.manual_seed(0)
    model = Unit2WavFast(
        kw["sampling_rate"], kw["block_size"], kw["win_length"], kw["n_unit"], kw["n_spk"],
        kw["use_pitch_aug"], kw["out_dims"], kw["n_layers"], kw["n_chans"],
    ).eval()
    template = model.state_dict()
    weights = spec.diffusion_recipe(template)
    model.load_state_dict(weights, strict=True)
    state = model.state_dict()
    layout = {key: (tuple(value.shape), str(value.dtype)) for key, value in state.items()}
    buffers = {
        key: value.clone()
        for key, value in state.items()
        if key.startswith("diff_model.") and not key.startswith("diff_model.denoise_fn.")
    }

    small = GaussianDiffusion(NaiveV2Diff(**spec.SMALL_DENOISER), out_dims=spec.SMALL_DENOISER["mel_channels"])
    small.eval().load_state_dict(spec.diffusion_recipe(small.state_dict()), strict=True)

    inputs = spec.make_inputs()
    cond, start = inputs["cond"][:1], inputs["gt_spec"][:1]
    samplers = {}
    for case, (method, k_step, speedup, seed) in spec.SAMPLER_CASES.items():
        torch.manual_seed(seed)
        with torch.no_grad():
            samplers[case] = small(
                cond, gt_spec=None if k_step is None else start, infer=True,
                infer_speedup=speedup, method=method, k_step=k_step, use_tqdm=False,
            )

    torch.manual_seed(spec.DIFF_TRAIN_SEED)
    with torch.no_grad():
        diff_train_loss = model.diff_model(inputs["cond"], gt_spec=inputs["gt_spec"], infer=False,
                                           k_step=spec.TRAIN_K_STEP)

    torch.manual_seed(spec.MODEL_TRAIN_SEED)
    with torch.no_grad():
        ddsp_loss, diff_loss = model(
            inputs["units"], inputs["f0"], inputs["volume"], aug_shift=inputs["aug_shift"],
            vocoder=spec.StandInVocoder(), gt_spec=inputs["gt_spec"], infer=False, k_step=spec.TRAIN_K_STEP,
        )

    torch.manual_seed(spec.MODEL_INFER_SEED)
    with torch.no_grad():
        model_infer_mel = model(
            inputs["units"][:1], inputs["f0"][:1], inputs["volume"][:1], aug_shift=inputs["aug_shift"][:1],
            vocoder=spec.StandInVocoder(), infer=True, return_wav=False, infer_speedup=5, method="dpm-solver",
            k_step=20, use_tqdm=False,
        )

    golden = {
        "upstream_commit": commit,
        "torch_version": str(torch.__version__),
        "recipe_seed": RECIPE_SEED,
        "model_kwargs": dict(kw),
        "layout": layout,
        "buffers": buffers,
        "checksums": checksums(weights),
        "small_checksums": checksums(small.state_dict()),
        "inputs": inputs,
        "samplers": samplers,
        "diff_train_loss": diff_train_loss,
        "model_train_losses": (ddsp_loss, diff_loss),
        "model_infer_mel": model_infer_mel,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(golden, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
