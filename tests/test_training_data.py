"""Training data (upstream's float16 cache semantics, ``train.cache_fp16``) and CPU training threads."""

from __future__ import annotations

import math
import random

import torch

from mlflow_ddsp.audio import load_audio
from mlflow_ddsp.config import load_config
from mlflow_ddsp.corpus import AUDIO_DIR
from mlflow_ddsp.training.data import make_loaders

from conftest import tiny_config


def _upstream_item_audio(cached: torch.Tensor, seed: int, duration: float, crop: float, block: int, sr: int):
    """Upstream ``AudioDataset.get_data`` for a cached clip, drawing from ``random.Random(seed)``."""
    rng = random.Random(seed)
    start = rng.uniform(0, duration - crop - 0.1)
    start_frame = int(start / (block / sr))
    n_frames = int(crop / (block / sr))
    audio = cached[start_frame * block : (start_frame + n_frames) * block]
    peak = float(torch.max(torch.abs(audio))) + 1e-5
    return audio * (10 ** rng.uniform(-1, min(1, math.log10(1 / peak))))  # stays in the cached dtype


def test_cache_fp16_keeps_training_audio_fp16_through_the_gain_and_not_the_validation_set(demo_data, tmp_path):
    cfg = load_config(tiny_config(demo_data, tmp_path / "c.yaml", "fp16", cache_all_data=True, cache_fp16=True))
    train, valid = (loader.dataset for loader in make_loaders(cfg))

    record = train.records[0]
    assert record.audio.dtype == torch.float16 and record.units.dtype == torch.float16
    seed = 12345
    item = train[(0, seed)]
    expected = _upstream_item_audio(record.audio, seed, record.duration, cfg.data.duration,
                                    cfg.data.block_size, cfg.data.sampling_rate)  # fmt: skip
    assert expected.dtype == torch.float16
    assert item["audio"].dtype == torch.float32  # widened for the loss, after the float16 gain
    assert torch.equal(item["audio"], expected.float())
    # ... which differs from applying the gain in float32 (the rounding is upstream's, not a no-op).
    in_fp32 = _upstream_item_audio(record.audio.float(), seed, record.duration, cfg.data.duration,
                                   cfg.data.block_size, cfg.data.sampling_rate)  # fmt: skip
    assert not torch.equal(item["audio"], in_fp32)

    # Validation: float32, whatever cache_fp16 says (upstream builds it without fp16).
    first = valid.records[0]
    assert first.audio.dtype == torch.float32 and first.units.dtype == torch.float32
    exact = torch.from_numpy(load_audio(valid.root / AUDIO_DIR / first.rel, cfg.data.sampling_rate))
    batch = next(iter(make_loaders(cfg)[1]))
    n = batch["audio"].shape[-1]
    assert torch.equal(batch["audio"][0], exact[:n])
    assert not torch.equal(batch["audio"][0], exact[:n].half().float())  # would fail with a float16 cache


def test_without_cache_fp16_training_audio_is_float32_throughout(demo_data, tmp_path):
    cfg = load_config(tiny_config(demo_data, tmp_path / "c.yaml", "fp32", cache_all_data=True, cache_fp16=False))
    train = make_loaders(cfg)[0].dataset
    record = train.records[0]
    assert record.audio.dtype == torch.float32
    item = train[(0, 7)]
    expected = _upstream_item_audio(record.audio, 7, record.duration, cfg.data.duration,
                                    cfg.data.block_size, cfg.data.sampling_rate)  # fmt: skip
    assert torch.equal(item["audio"], expected)


def test_cpu_training_threads_are_torchs_unless_configured_and_restored(demo_data, tmp_path):
    from mlflow_ddsp.training.session import intra_op_threads, training_threads

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    default = load_config(tiny_config(demo_data, tmp_path / "a.yaml", "threads"))
    assert default.train.num_threads is None
    assert training_threads(default, cpu) is None  # torch's default: one per core, fastest when idle
    two = load_config(tmp_path / "a.yaml", ["train.num_threads=2"])
    assert training_threads(two, cpu) == 2
    assert training_threads(two, cuda) is None  # left to torch on CUDA

    before = torch.get_num_threads()
    inside = 2 if before == 1 else 1
    with intra_op_threads(inside):
        assert torch.get_num_threads() == inside
    assert torch.get_num_threads() == before
    try:
        with intra_op_threads(inside):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert torch.get_num_threads() == before
