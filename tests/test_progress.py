"""Long work reports progress when stderr is not a terminal (mlflow run, CI, nohup): a line every so often."""

from __future__ import annotations

import logging

import pytest
import torch

from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.progress import INTERVAL_ENV, Progress, format_duration, progress_interval


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mlflow_ddsp.progress"]


def test_a_line_at_most_every_interval_with_step_loss_rate_and_eta(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, "mlflow_ddsp.progress"):
        bar = Progress("training", 1000, initial=100, terminal=False, interval=30, clock=clock)
        for step in range(101, 201):  # 100 steps, 1 s apart: 100 s
            clock.now += 1.0
            bar.set_postfix(loss=f"{1 / step:.3f}", refresh=False)
            bar.update(1)
        bar.close()
    lines = progress_lines(caplog)
    assert len(lines) == 3  # at 30, 60 and 90 s
    assert lines[0] == "training: step 130/1000 (13%), loss=0.008, 1 step/s, ETA 14m30s"
    assert lines[2].startswith("training: step 190/1000 (19%)") and lines[2].endswith("ETA 13m30s")


def test_on_a_terminal_the_bar_draws_and_nothing_is_logged(caplog, capsys):
    import io

    stream = io.StringIO()
    with caplog.at_level(logging.INFO, "mlflow_ddsp.progress"):
        with Progress("preprocess", 3, unit="file", terminal=True, stream=stream) as bar:
            for _ in range(3):
                bar.update(1)
    assert "3/3" in stream.getvalue() and progress_lines(caplog) == []


def test_disabled_progress_reports_nothing(caplog):
    with caplog.at_level(logging.INFO, "mlflow_ddsp.progress"):
        bar = Progress("training", 5, enabled=False, interval=0)
        bar.update(5)
    assert progress_lines(caplog) == []


@pytest.mark.parametrize("value, expected", [("", 30.0), ("0", 0.0), ("2.5", 2.5), ("-1", None), ("soon", None), ("nan", None)])
def test_the_interval_comes_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(INTERVAL_ENV, value)
    if expected is None:
        with pytest.raises(ConfigError, match=rf"^{INTERVAL_ENV}={value!r} must be a number of seconds >= 0"):
            progress_interval()
    else:
        assert progress_interval() == expected


def test_format_duration():
    assert [format_duration(s) for s in (9, 75, 10260)] == ["9s", "1m15s", "2h51m"]


class _TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(1))

    def forward(self, units, f0, volume, spk_id, infer=False):
        return self.gain * volume.squeeze(-1).repeat_interleave(4, dim=1)


def test_training_off_a_terminal_logs_progress_lines(monkeypatch, caplog):
    from mlflow_ddsp.training.distributed import NullCheckpointer, NullTracker
    from mlflow_ddsp.training.loop import TrainLoop

    monkeypatch.setenv(INTERVAL_ENV, "0")  # a line at every step: no waiting in the test
    batch = {"units": torch.zeros(2, 5, 3), "f0": torch.ones(2, 5, 1), "volume": torch.rand(2, 5, 1),
             "spk_id": torch.ones(2, 1, dtype=torch.long), "audio": torch.rand(2, 20)}  # fmt: skip
    model = _TinyModel()
    loop = TrainLoop(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        loss_fn=torch.nn.functional.mse_loss, validation_loss_fn=torch.nn.functional.mse_loss,
        train_loader=[batch] * 4, valid_loader=[], checkpointer=NullCheckpointer(), tracker=NullTracker(),
        device=torch.device("cpu"), interval_log=100, interval_val=100, epochs=10, max_steps=6, progress=True,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, "mlflow_ddsp.progress"):
        assert loop.run(start_step=2) == 6  # pytest's captured stderr is not a terminal
    lines = progress_lines(caplog)
    assert [line.split(",")[0] for line in lines] == [f"training: step {s}/6 ({100 * s / 6:.0f}%)" for s in (3, 4, 5, 6)]
    assert all("loss=" in line and "epoch=" in line and "step/s" in line for line in lines[1:])


def test_preprocess_off_a_terminal_logs_progress_lines(tmp_path, monkeypatch, caplog):
    import numpy as np
    import soundfile as sf

    from mlflow_ddsp.config import parse_config
    from mlflow_ddsp.preprocess import preprocess

    monkeypatch.setenv(INTERVAL_ENV, "0")
    t = np.arange(22050) / 22050
    for split in ("train", "val"):
        (tmp_path / split / "audio").mkdir(parents=True)
        for i in range(2):
            sf.write(tmp_path / split / "audio" / f"{i}.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 22050)
    cfg = parse_config({"data": {"f0_extractor": "parselmouth", "encoder": "logmel", "encoder_out_channels": 128,
                                 "sampling_rate": 22050, "block_size": 256, "duration": 0.5,
                                 "train_path": str(tmp_path / "train"), "valid_path": str(tmp_path / "val")},
                        "model": {"n_spk": 1}, "device": "cpu"})  # fmt: skip
    with caplog.at_level(logging.INFO, "mlflow_ddsp.progress"):
        preprocess(cfg, workers=1, progress=True)
    assert [line.split(",")[0] for line in progress_lines(caplog)] == [  # the band check first, then the features
        f"{what}: file {n}/4 ({25 * n}%)" for what in ("band check", "preprocess") for n in (1, 2, 3, 4)
    ]
