"""Write tests/data/reflow61_upstream_golden.pt by running upstream DDSP-SVC 6.1's own model code.

Usage (from the repository root, in this project's venv)::

    git -C <mirror of github.com/yxlllc/DDSP-SVC> archive 6.1 | tar -x -C /tmp/up-6.1
    python tests/upstream_golden/make_reflow61_golden.py --upstream /tmp/up-6.1 \
        --out tests/data/reflow61_upstream_golden.pt

Upstream branch ``6.1`` was f1f8383c29bc78508c3116a28a6e2ef1ed646172 when the committed
file was made. The script imports upstream's ``reflow.vocoder.Unit2Wav`` (with
``ddsp.vocoder.CombSubSuperFast``, ``reflow.lynxnet.LYNXNet`` and
``reflow.reflow.RectifiedFlow``) and ``nsf_hifigan.nvSTFT.STFT`` (the mel the flow is
conditioned on) from ``--upstream``; modules those files import but the model does
not use (feature extractors, torchaudio, which does not load beside this torch) are
replaced by empty stand-ins first. It copies no upstream code.

For each configuration in :data:`CONFIGS` (upstream defaults: 44.1 kHz, block 512,
n_unit 768, win 2048, 128 mels, LYNXNet 6 x 512, aux 3 x 256, use_pitch_aug):

1. build upstream's ``Unit2Wav``, replace every tensor of its state_dict by
   ``recipe_state_dict`` (tests/test_upstream_parity.py), load it strictly, round-trip
   it through ``torch.save({'global_step': 0, 'model': ...})`` and record its key
   names, shapes and ``checksums``;
2. with ``torch.manual_seed(case seed)`` before each call (upstream draws all noise
   from the global RNG), record: the DDSP stage (``ddsp_model(...)``, eval, no_grad;
   12 frames and a 2-frame clip), inference mels (``Unit2Wav.forward`` euler and
   rk4, eval, no_grad), and the two training losses (``infer=False``, ``train()``
   mode, so attention dropout draws too) on a fixed batch;
3. once: LYNXNet's velocity for a fixed input.
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
sys.path.insert(0, str(TESTS))

from test_upstream_parity import RECIPE_SEED, checksums, recipe_state_dict  # noqa: E402

UPSTREAM_COMMIT = "f1f8383c29bc78508c3116a28a6e2ef1ed646172"  # branch 6.1 when the committed file was made
SAMPLING_RATE, BLOCK_SIZE, N_UNIT, FRAMES = 44100, 512, 768, 12
MEL = {"sr": 44100, "n_mels": 128, "n_fft": 2048, "win_size": 2048, "hop_length": 512, "fmin": 40, "fmax": 16000}
#: name -> upstream Unit2Wav keywords besides the shared ones
CONFIGS = {
    "plain": {"n_spk": 1, "use_norm": False, "use_attention": False},
    "attn": {"n_spk": 2, "use_norm": True, "use_attention": True},
}
SHARED = {"win_length": 2048, "n_unit": N_UNIT, "use_pitch_aug": True, "out_dims": 128, "n_aux_layers": 3,
          "n_aux_chans": 256, "n_layers": 6, "n_chans": 512}  # fmt: skip
ALWAYS_STUBBED = ["gin", "pyworld", "torchcrepe", "transformers", "fairseq", "torchaudio", "torchaudio.transforms"]
STUB_IF_MISSING = ["parselmouth", "resampy", "soundfile", "sklearn", "sklearn.cluster", "matplotlib",
                   "matplotlib.pylab"]  # fmt: skip


def _stub(name: str) -> None:
    module = types.ModuleType(name)
    # every attribute the upstream files import by name
    for attr in ("HubertModel", "Wav2Vec2FeatureExtractor", "checkpoint_utils", "Resample", "KMeans", "use"):
        setattr(module, attr, object)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)


def import_upstream(path: Path) -> tuple[type, type]:
    """Upstream 6.1's ``Unit2Wav`` and ``STFT`` classes, imported from ``path``."""
    for name in ALWAYS_STUBBED:
        _stub(name)
    for name in STUB_IF_MISSING:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - any failure to import means: stand in for it
            _stub(name)
    sys.path.insert(0, str(path))
    vocoder = importlib.import_module("reflow.vocoder")
    nvstft = importlib.import_module("nsf_hifigan.nvSTFT")
    return vocoder.Unit2Wav, nvstft.STFT


class MelExtractor:
    """The vocoder interface the model calls, with upstream's ``STFT.get_mel`` (keyshift 0)."""

    def __init__(self, stft_class: type) -> None:
        self.stft = stft_class(**MEL)

    def extract(self, audio: torch.Tensor, sample_rate: int = 0, keyshift: float = 0) -> torch.Tensor:
        return self.stft.get_mel(audio, keyshift=keyshift).transpose(1, 2)


def make_inputs() -> dict[str, torch.Tensor]:
    """units [2, 12, 768], f0 / volume [2, 12, 1], aug_shift [2, 1, 1], gt audio [2, 12 * 512]."""
    gen = torch.Generator().manual_seed(61)
    t = torch.arange(FRAMES, dtype=torch.float32)
    f0 = torch.stack([220 * 2 ** (0.3 * torch.sin(t / 2)), torch.linspace(110, 600, FRAMES)]).unsqueeze(-1)
    seconds = torch.arange(FRAMES * BLOCK_SIZE, dtype=torch.float32) / SAMPLING_RATE
    tones = torch.stack([0.3 * torch.sin(2 * torch.pi * 220 * seconds), 0.2 * torch.sin(2 * torch.pi * 330 * seconds)])
    return {
        "units": torch.randn(2, FRAMES, N_UNIT, generator=gen),
        "f0": f0,
        "volume": 0.05 + 0.3 * torch.rand(2, FRAMES, 1, generator=gen),
        "aug_shift": torch.tensor([[[2.0]], [[-3.0]]]),
        "gt_audio": tones + 0.01 * torch.randn(2, FRAMES * BLOCK_SIZE, generator=gen),
        "velocity_x": torch.randn(2, 1, 128, 10, generator=gen),
        "velocity_t": torch.tensor([0.37, 0.81]),
        "velocity_cond": torch.randn(2, 128, 10, generator=gen) - 4,
    }


def speakers(n_spk: int, batch: list[int], mix: bool) -> dict:
    """Speaker keywords of a call: ids 1 and 2 by batch row, or a mix for one row."""
    if n_spk == 1:
        return {}
    if mix:
        return {"spk_mix_dict": {1: 0.3, 2: 0.7}}
    return {"spk_id": torch.tensor([[1], [2]])[torch.tensor(batch)]}


#: case name -> what it runs; "batch" rows of the inputs, "frames" leading frames
CASES = {
    "ddsp": {"kind": "ddsp", "batch": [0, 1], "frames": FRAMES, "seed": 1234},
    "ddsp_short": {"kind": "ddsp", "batch": [1], "frames": 2, "seed": 99},
    "euler": {"kind": "infer", "batch": [0], "frames": FRAMES, "seed": 2024, "method": "euler", "infer_step": 3,
              "t_start": 0.7, "mix": True},
    "rk4": {"kind": "infer", "batch": [0, 1], "frames": FRAMES, "seed": 4321, "method": "rk4", "infer_step": 2,
            "t_start": 0.4},
    "train": {"kind": "train", "batch": [0, 1], "frames": FRAMES, "seed": 777, "t_start": 0.7},
}  # fmt: skip


def run_case(model: torch.nn.Module, vocoder: MelExtractor, inputs: dict, gt_spec: torch.Tensor, n_spk: int,
             case: dict) -> dict[str, torch.Tensor]:  # fmt: skip
    """Run one case on upstream's model; returns its outputs."""
    rows, frames = torch.tensor(case["batch"]), case["frames"]
    units, f0, volume = (inputs[k][rows, :frames] for k in ("units", "f0", "volume"))
    kwargs = {"aug_shift": inputs["aug_shift"][rows], **speakers(n_spk, case["batch"], case.get("mix", False))}
    torch.manual_seed(case["seed"])
    if case["kind"] == "train":
        model.train()
        ddsp_loss, reflow_loss = model(units, f0, volume, vocoder=vocoder, gt_spec=gt_spec[rows, :frames],
                                       infer=False, t_start=case["t_start"], **kwargs)  # fmt: skip
        return {"ddsp_loss": ddsp_loss.detach(), "reflow_loss": reflow_loss.detach()}
    model.eval()
    with torch.no_grad():
        if case["kind"] == "ddsp":
            wav, hidden = model.ddsp_model(units, f0, volume, infer=True, **kwargs)
            return {"ddsp_wav": wav, "hidden": hidden}
        mel = model(units, f0, volume, vocoder=vocoder, infer=True, infer_step=case["infer_step"],
                    method=case["method"], t_start=case["t_start"], use_tqdm=False, **kwargs)  # fmt: skip
        return {"mel": mel}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, required=True, help="extracted DDSP-SVC branch 6.1 checkout")
    parser.add_argument("--out", type=Path, required=True, help="golden .pt file to write")
    parser.add_argument("--commit", default=UPSTREAM_COMMIT, help="upstream commit of --upstream (recorded)")
    args = parser.parse_args()
    unit2wav, stft_class = import_upstream(args.upstream.resolve())
    vocoder = MelExtractor(stft_class)
    inputs = make_inputs()
    gt_spec = vocoder.extract(inputs["gt_audio"])
    golden: dict = {
        "upstream_branch": "6.1",
        "upstream_commit": args.commit,
        "torch_version": torch.__version__,
        "recipe_seed": RECIPE_SEED,
        "inputs": inputs,
        "gt_spec": gt_spec,
        "cases": CASES,
        "configs": {},
    }
    for name, config in CONFIGS.items():
        kwargs = {**SHARED, **config}
        model = unit2wav(SAMPLING_RATE, BLOCK_SIZE, kwargs["win_length"], kwargs["n_unit"], kwargs["n_spk"],
                         use_norm=kwargs["use_norm"], use_attention=kwargs["use_attention"],
                         use_pitch_aug=kwargs["use_pitch_aug"], out_dims=kwargs["out_dims"],
                         n_aux_layers=kwargs["n_aux_layers"], n_aux_chans=kwargs["n_aux_chans"],
                         n_layers=kwargs["n_layers"], n_chans=kwargs["n_chans"])  # fmt: skip
        template = model.state_dict()
        model.load_state_dict(recipe_state_dict(template), strict=True)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model_0.pt"
            torch.save({"global_step": 0, "model": model.state_dict()}, path)
            state = torch.load(path, map_location="cpu", weights_only=True)["model"]
        model.load_state_dict(state, strict=True)
        entry = {
            "kwargs": {"sampling_rate": SAMPLING_RATE, "block_size": BLOCK_SIZE, **kwargs},
            "keys": {k: tuple(v.shape) for k, v in state.items()},
            "checksums": checksums(state),
            "outputs": {},
        }
        for case_name, case in CASES.items():
            entry["outputs"][case_name] = run_case(model, vocoder, inputs, gt_spec, kwargs["n_spk"], case)
        if name == "plain":
            model.eval()
            with torch.no_grad():
                velocity = model.reflow_model.velocity_fn(
                    inputs["velocity_x"], 1000 * inputs["velocity_t"], inputs["velocity_cond"]
                )
            entry["outputs"]["velocity"] = {"velocity": velocity}
        golden["configs"][name] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(golden, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
