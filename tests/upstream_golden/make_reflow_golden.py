"""Write tests/data/reflow_upstream_golden.pt by running upstream DDSP-SVC 6.0's own code.

Usage (from the repository root, in the project's venv)::

    mkdir -p /tmp/up-master
    git -C <mirror of github.com/yxlllc/DDSP-SVC> archive master | tar -x -C /tmp/up-master
    python tests/upstream_golden/make_reflow_golden.py --upstream /tmp/up-master \
        --out tests/data/reflow_upstream_golden.pt

This script holds no upstream code: it imports upstream's ``reflow.vocoder.Unit2Wav``
and ``nsf_hifigan.nvSTFT.STFT`` from ``--upstream`` and calls them. Modules that
upstream imports at top level but the model never uses (and that do not install
beside this project's torch: torchaudio, pyworld, torchcrepe, transformers, fairseq,
gin, the HuBERT encoder's sklearn) are replaced by empty stub modules when they
cannot be imported.

Inputs, cases, the weight recipe and the per-case runner are shared with the test
(``tests/test_reflow_model.py``, ``tests/test_upstream_parity.py``), so both sides
make the same calls with the same seeds; upstream's side extracts mels with upstream's
``STFT.get_mel`` (44.1 kHz, 128 bins, n_fft 2048, hop 512, fmin 40, fmax 16000).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import types
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1]
DEFAULT_COMMIT = "88f157c03dfea4855e9b7101897bac174fd9b53d"
STUBBED = {
    "torchaudio": (),
    "torchaudio.transforms": ("Resample",),
    "pyworld": (),
    "torchcrepe": (),
    "transformers": ("HubertModel", "Wav2Vec2FeatureExtractor"),
    "fairseq": ("checkpoint_utils",),
    "gin": (),
    "sklearn": (),
    "sklearn.cluster": ("KMeans",),
}


def install_stubs() -> list[str]:
    """Put an empty module in ``sys.modules`` for each unusable import; returns their names."""
    stubbed = []
    for name, attributes in STUBBED.items():
        try:
            importlib.import_module(name)
            continue
        except Exception:  # noqa: BLE001 - any failure to import means: stub it
            pass
        module = types.ModuleType(name)
        for attribute in attributes:
            setattr(module, attribute, type(attribute, (), {}))
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)
        stubbed.append(name)
    return stubbed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, type=Path, help="extracted upstream checkout (branch master)")
    parser.add_argument("--out", required=True, type=Path, help="golden .pt file to write")
    parser.add_argument("--commit", default=DEFAULT_COMMIT, help="upstream commit the checkout was taken from")
    options = parser.parse_args()

    stubbed = install_stubs()
    sys.path.insert(0, str(TESTS))
    sys.path.insert(0, str(options.upstream.resolve()))
    from nsf_hifigan.nvSTFT import STFT
    from reflow.vocoder import Unit2Wav

    import test_reflow_model as shared
    from test_upstream_parity import RECIPE_SEED, checksums, recipe_state_dict

    class UpstreamMelVocoder(shared.StandInVocoder):
        """The test's stand-in with upstream's own mel extractor."""

        def __init__(self) -> None:
            super().__init__()
            self.stft = STFT(44100, 128, 2048, 2048, 512, 40, 16000)

        def extract(self, audio: torch.Tensor, sample_rate: int = 0, keyshift: float = 0) -> torch.Tensor:
            return self.stft.get_mel(audio, keyshift=keyshift).transpose(1, 2)

    def build(n_spk: int) -> torch.nn.Module:
        kw = shared.MODEL_KWARGS
        return Unit2Wav(kw["sampling_rate"], kw["block_size"], 2048, kw["n_unit"], n_spk, kw["use_pitch_aug"],
                        128, 6, 512)  # fmt: skip

    torch.manual_seed(0)
    layouts = {}
    for n_spk in (1, 2):
        state = build(n_spk).state_dict()
        layouts[n_spk] = {
            "layout": [(key, list(value.shape), str(value.dtype)) for key, value in state.items()],
            "int_buffers": {key: value.clone() for key, value in state.items() if not value.is_floating_point()},
        }

    model = build(shared.N_SPK)
    weights = recipe_state_dict(model.state_dict(), seed=RECIPE_SEED)
    with tempfile.TemporaryDirectory() as tmp:  # go through an upstream-style checkpoint file
        path = Path(tmp) / "model_0.pt"
        torch.save({"global_step": 0, "model": weights}, path)
        checkpoint = torch.load(path, weights_only=True)
    model.load_state_dict(checkpoint["model"], strict=True)

    inputs, cases = shared.make_inputs(), shared.make_cases()
    vocoder = UpstreamMelVocoder()
    outputs = {}
    for name, case in cases.items():
        outputs[name] = shared.run_case(model, inputs, case, vocoder)
        summary = {k: (tuple(v.shape) if torch.is_tensor(v) else len(v)) for k, v in outputs[name].items()}
        print(f"{name}: {summary}")

    golden = {
        "upstream_commit": options.commit,
        "torch_version": str(torch.__version__),
        "recipe_seed": RECIPE_SEED,
        "stubbed_modules": stubbed,
        "model_kwargs": dict(shared.MODEL_KWARGS, n_spk=shared.N_SPK),
        "inputs": inputs,
        "cases": cases,
        "layouts": layouts,
        "checksums": checksums(checkpoint["model"]),
        "outputs": outputs,
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(golden, options.out)
    print(f"wrote {options.out} ({options.out.stat().st_size} bytes); stubbed: {', '.join(stubbed) or 'none'}")


if __name__ == "__main__":
    main()
