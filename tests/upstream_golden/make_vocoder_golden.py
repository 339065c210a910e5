"""Write tests/data/vocoder_upstream_golden.pt by running upstream DDSP-SVC's own NSF-HiFiGAN code.

Usage (from the repository root, with this project's venv)::

    git -C <mirror of yxlllc/DDSP-SVC> archive master | tar -x -C /tmp/up-vocoder-master
    python tests/upstream_golden/make_vocoder_golden.py --upstream /tmp/up-vocoder-master \\
        --out tests/data/vocoder_upstream_golden.pt

What it does (upstream master 88f157c03dfea4855e9b7101897bac174fd9b53d):

1. Imports upstream's ``nsf_hifigan.models``, ``nsf_hifigan.nvSTFT`` and ``reflow.vocoder`` from
   ``--upstream``; modules they import but the vocoder does not use (torchaudio, which does not
   import beside torch 2.13, pyworld, parselmouth, torchcrepe, resampy, transformers, fairseq, ...)
   are replaced by empty stub modules.
2. Mel cases: a fixed synthetic clip (1 s at 44.1 kHz: a vibrato tone with 12 harmonics plus
   seeded noise) through ``STFT(...).get_mel(audio, keyshift=k)`` for the default vocoder config
   (k = 0, 2, -3.5; also a 1000-sample clip, which takes the zero-padding branch) and for a small
   config (22.05 kHz, 80 mels, n_fft 1024, win 800, fmax null; k = 1.5).
3. Generator cases: upstream's ``Generator`` for each config, every tensor of its state_dict
   replaced by ``recipe_state_dict`` (tests/test_upstream_parity.py, seed RECIPE_SEED), written as
   ``{'generator': state_dict}`` with ``config.json`` beside it in a temporary folder, then
   upstream's ``reflow.vocoder.Vocoder(type, path, device='cpu')``. One warm-up ``infer`` makes it
   load the weights (its lazy load initialises a Generator, which draws from the global RNG), then
   per case ``torch.manual_seed(seed)`` and ``Vocoder.infer(mel, f0)`` under no_grad.
4. Saves inputs, outputs, configs, seeds, the weights' checksums and upstream's state_dict
   key -> shape lists (no weights) with ``torch.save``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: the shared weight recipe

from test_upstream_parity import RECIPE_SEED, checksums, recipe_state_dict  # noqa: E402

UPSTREAM_COMMIT = "88f157c03dfea4855e9b7101897bac174fd9b53d"
UPSTREAM_PACKAGES = {"nsf_hifigan", "reflow", "ddsp", "diffusion", "encoder"}

DEFAULT_CONFIG = {
    "sampling_rate": 44100, "num_mels": 128, "n_fft": 2048, "win_size": 2048, "hop_size": 512,
    "fmin": 40, "fmax": 16000, "upsample_rates": [8, 8, 2, 2, 2], "upsample_kernel_sizes": [16, 16, 4, 4, 4],
    "upsample_initial_channel": 512, "resblock": "1", "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    # keys of openvpi's file the vocoder does not read
    "num_freq": 1025, "segment_size": 16384, "fmax_for_loss": None,
}  # fmt: skip
SMALL_CONFIG = {
    "sampling_rate": 22050, "num_mels": 80, "n_fft": 1024, "win_size": 800, "hop_size": 256,
    "fmin": 0, "fmax": None, "upsample_rates": [8, 8, 4], "upsample_kernel_sizes": [16, 16, 8],
    "upsample_initial_channel": 64, "resblock": "2", "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 3], [1, 2]],
}  # fmt: skip


def synthetic_audio() -> torch.Tensor:
    """``[1, 44100]``: 1 s of a 220 Hz tone (5.5 Hz vibrato, 12 harmonics, 1/k) plus seeded noise."""
    gen = torch.Generator().manual_seed(11)
    rate, n = 44100, 44100
    t = torch.arange(n, dtype=torch.float64) / rate
    f0 = 220 * 2 ** (0.5 / 12 * torch.sin(2 * torch.pi * 5.5 * t))
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / rate
    tone = sum(torch.sin(k * phase) / k for k in range(1, 13))
    envelope = 0.5 * (1 - torch.cos(2 * torch.pi * t.clamp(max=0.1) / 0.2))  # 100 ms fade-in
    audio = 0.2 * envelope * tone + 0.01 * torch.randn(n, generator=gen, dtype=torch.float64)
    return audio.float().unsqueeze(0)


def _stub(name: str) -> None:
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        full = ".".join(parts[: i])
        if full in sys.modules:
            continue
        module = types.ModuleType(full)
        module.__path__ = []  # a package, so submodules can be stubbed too

        def __getattr__(attr: str, _full: str = full):  # noqa: N807
            if attr.startswith("__"):
                raise AttributeError(attr)
            return type(attr, (), {"__init__": lambda self, *a, **k: None})

        module.__getattr__ = __getattr__
        sys.modules[full] = module
        if i > 1:
            setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], module)


def import_upstream(upstream: Path, name: str) -> types.ModuleType:
    """Import ``name`` from the upstream checkout, stubbing third-party modules it cannot load."""
    if str(upstream) not in sys.path:
        sys.path.insert(0, str(upstream))
    for stubbed in ("torchaudio", "torchaudio.transforms"):
        _stub(stubbed)
    for _ in range(30):
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            missing = exc.name
            if not missing or missing.split(".")[0] in UPSTREAM_PACKAGES or missing in sys.modules:
                raise
            print(f"stubbing {missing}", file=sys.stderr)
            _stub(missing)
    raise RuntimeError(f"too many missing modules importing {name}")


def key_shapes(state_dict: dict[str, torch.Tensor]) -> list[tuple[str, list[int]]]:
    return [(key, list(value.shape)) for key, value in state_dict.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, required=True, help="extracted upstream DDSP-SVC master checkout")
    parser.add_argument("--out", type=Path, required=True, help="golden file to write")
    args = parser.parse_args()
    upstream = args.upstream.resolve()
    models = import_upstream(upstream, "nsf_hifigan.models")
    nvstft = import_upstream(upstream, "nsf_hifigan.nvSTFT")
    env = import_upstream(upstream, "nsf_hifigan.env")
    reflow_vocoder = import_upstream(upstream, "reflow.vocoder")

    configs = {"default": DEFAULT_CONFIG, "small": SMALL_CONFIG}
    audio = synthetic_audio()

    # ---- mels
    def stft_for(config: dict) -> object:
        keys = ("sampling_rate", "num_mels", "n_fft", "win_size", "hop_size", "fmin", "fmax")
        return nvstft.STFT(*(config[k] for k in keys))

    mel_cases = {
        "default_k0": {"config": "default", "keyshift": 0, "samples": 44100},
        "default_k2": {"config": "default", "keyshift": 2, "samples": 44100},
        "default_k-3.5": {"config": "default", "keyshift": -3.5, "samples": 44100},
        "default_short": {"config": "default", "keyshift": 0, "samples": 1000},
        "small_k1.5": {"config": "small", "keyshift": 1.5, "samples": 44100},
    }
    mels = {}
    for name, case in mel_cases.items():
        stft = stft_for(configs[case["config"]])
        with torch.no_grad():
            mel = stft.get_mel(audio[:, : case["samples"]], keyshift=case["keyshift"])
        mels[name] = mel.transpose(1, 2).contiguous()  # [B, frames, M]

    # ---- generator inputs
    gen = torch.Generator().manual_seed(5)
    full_mel = mels["default_k0"][0]
    frames = 10
    t = torch.arange(frames + 2, dtype=torch.float32)
    vibrato = 220 * 2 ** (0.3 * torch.sin(t / 2))
    vibrato[3:5] = 0  # two unvoiced frames
    glide = torch.linspace(110, 600, frames + 2)
    inputs = {
        "default_mel": torch.stack([full_mel[20 : 20 + frames], full_mel[50 : 50 + frames]]),  # [2, 10, 128]
        "default_f0": torch.stack([vibrato, glide]).unsqueeze(-1),  # [2, 12, 1]: longer than the mel
        "small_mel": -5 + 2 * torch.randn(1, frames, 80, generator=gen),
        "small_f0": torch.linspace(300, 90, frames).reshape(1, frames, 1),
    }
    gen_cases = {
        "default_batch2": {"config": "default", "type": "nsf-hifigan", "batch": [0, 1], "seed": 1234},
        "default_log10": {"config": "default", "type": "nsf-hifigan-log10", "batch": [1], "seed": 4321},
        "small_resblock2": {"config": "small", "type": "nsf-hifigan", "batch": [0], "seed": 99},
    }

    shapes, sums, outputs = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for config_name, config in configs.items():
            generator = models.Generator(env.AttrDict(config))
            weights = recipe_state_dict(generator.state_dict(), RECIPE_SEED)
            generator.load_state_dict(weights, strict=True)
            folder = Path(tmp) / config_name
            folder.mkdir()
            (folder / "config.json").write_text(json.dumps(config))
            torch.save({"generator": generator.state_dict()}, folder / "model")
            shapes[config_name] = key_shapes(generator.state_dict())
            sums[config_name] = checksums(torch.load(folder / "model", weights_only=True)["generator"])
        for name, case in gen_cases.items():
            vocoder = reflow_vocoder.Vocoder(case["type"], str(Path(tmp) / case["config"] / "model"), device="cpu")
            index = torch.tensor(case["batch"])
            mel = inputs[f"{case['config']}_mel"][index]
            f0 = inputs[f"{case['config']}_f0"][index]
            vocoder.infer(mel[:, :2], f0[:, :2])  # warm-up: the lazy load draws from the global RNG
            torch.manual_seed(case["seed"])
            with torch.no_grad():
                outputs[name] = vocoder.infer(mel, f0).contiguous()  # upstream: [B, 1, N]

    golden = {
        "upstream_commit": UPSTREAM_COMMIT,
        "torch_version": str(torch.__version__),
        "recipe_seed": RECIPE_SEED,
        "configs": configs,
        "audio": audio,
        "mel_cases": mel_cases,
        "mels": mels,
        "inputs": inputs,
        "generator_cases": gen_cases,
        "outputs": outputs,
        "state_dict_shapes": shapes,
        "checksums": sums,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(golden, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
