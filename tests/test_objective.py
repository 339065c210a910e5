"""The cascade models' objective: upstream's learning-rate schedule, validation scores, fixed validation noise."""

from __future__ import annotations

import math

import pytest
import torch

from mlflow_ddsp.training.objective import mel_scores, step_lr


def test_the_lr_of_every_step_is_upstreams_steplr():
    """Upstream (train_reflow.py, reflow/solver.py): lr set by formula on start, StepLR(last_epoch=start - 2),
    one scheduler.step() after every optimiser step. The lr each step of an uninterrupted run trains with
    must be ours (ours is a function of the step, so a resume continues it exactly)."""
    start = 0
    lr, gamma, decay = 2e-4, 0.5, 3
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=lr)
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
        group["lr"] = lr * gamma ** max((start - 2) // decay, 0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=decay, gamma=gamma, last_epoch=start - 2)
    ours = step_lr(lr, gamma, decay)
    seen = set()
    for step in range(start + 1, start + 20):
        assert math.isclose(optimizer.param_groups[0]["lr"], ours(step), rel_tol=1e-12), step
        seen.add(ours(step))
        optimizer.step()
        scheduler.step()
    assert len(seen) == 6  # it did decay, five times in 19 steps
    assert step_lr(lr, gamma, None) is None


def test_mel_scores_are_upstreams_formulas():
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(1, 50, 128, generator=gen) - 4
    prediction = target + 0.1 * torch.randn(1, 50, 128, generator=gen)
    scores = mel_scores(target, prediction)
    error = (target - prediction).double()
    assert scores["mel_mse"] == pytest.approx(float((error**2).mean()))
    assert scores["mel_snr"] == pytest.approx(float(10 * torch.log10((target.double() ** 2).mean() / error.var())))
    assert scores["mel_psnr"] == pytest.approx(float(10 * torch.log10(target.double().max() ** 2 / (error**2).mean())))
    assert scores["mel_si_snr"] > 20 and mel_scores(target, target)["mel_mse"] == 0
