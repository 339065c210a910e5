"""Training throughput: steps/s and audio-seconds/s for the demo and the default configs.

Runs real training steps (forward, random-scale spectral loss, backward, AdamW)
of the model each config describes, on batches of its shape (batch_size x
data.duration seconds), on the CPU and, when available, on CUDA. Data loading
is left out: with cache_all_data it is an in-memory crop.

    python bench/train_throughput.py [--steps 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mlflow_ddsp.config import load_config
from mlflow_ddsp.loss import RandomScaleSpectralLoss
from mlflow_ddsp.models import build_model_from_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"demo (tiny)": ROOT / "projects/demo/config.yaml", "default CombSubFast": ROOT / "projects/combsub/config.yaml"}


def measure(config_path: Path, device: torch.device, steps: int) -> tuple[float, float, float]:
    """(seconds per step, steps/s, audio seconds trained per second)."""
    cfg = load_config(config_path)
    torch.manual_seed(0)
    model = build_model_from_config(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    loss_fn = RandomScaleSpectralLoss(cfg.loss.fft_min, cfg.loss.fft_max, cfg.loss.n_scale).to(device)
    batch, block = cfg.train.batch_size, cfg.data.block_size
    frames = int(cfg.data.duration * cfg.data.sampling_rate / block)
    units = torch.randn(batch, frames, cfg.data.encoder_out_channels, device=device)
    f0 = 110 + 330 * torch.rand(batch, frames, 1, device=device)
    volume = 0.1 * torch.rand(batch, frames, 1, device=device)
    spk = torch.randint(1, cfg.model.n_spk + 1, (batch, 1), device=device)
    target = 0.1 * torch.randn(batch, frames * block, device=device)

    def step() -> None:
        loss = loss_fn(model(units, f0, volume, spk, infer=False), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - started) / steps
    return per_step, 1 / per_step, batch * cfg.data.duration / per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per config and device")
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'config':<22} {'device':<6} {'batch':>12} {'s/step':>8} {'steps/s':>8} {'audio s/s':>10}")
    for label, path in CONFIGS.items():
        cfg = load_config(path)
        for device in devices:
            per_step, rate, audio_rate = measure(path, device, args.steps)
            shape = f"{cfg.train.batch_size}x{cfg.data.duration:g}s"
            print(f"{label:<22} {device.type:<6} {shape:>12} {per_step:>8.2f} {rate:>8.2f} {audio_rate:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
