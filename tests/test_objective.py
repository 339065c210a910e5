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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_mel_objective_trains_under_autocast_with_a_grad_scaler(dtype):
    """What a CPU can show of the AMP path (train.amp_dtype fp16 / bf16 runs it on CUDA): the cascade
    objective under autocast gives finite terms, and GradScaler steps update the weights (fp16's first
    steps may overflow at the initial scale: the scaler skips them and lowers the scale, as on CUDA)."""
    from mlflow_ddsp.models import build_model
    from mlflow_ddsp.training.objective import MelObjective
    from mlflow_ddsp.vocoder import Vocoder, default_vocoder_config

    torch.manual_seed(0)
    model = build_model("RectifiedFlow", sampling_rate=44100, block_size=512, n_unit=16, n_layers=1, n_chans=8,
                        use_pitch_aug=True)  # fmt: skip
    vocoder = Vocoder("nsf-hifigan", "/nonexistent/model", config=default_vocoder_config())
    objective = MelObjective(vocoder, 1.0, "reflow_loss", {"t_start": 0.7}, {})
    frames = 12
    batch = {"units": torch.randn(2, frames, 16), "f0": torch.full((2, frames, 1), 220.0),
             "volume": torch.full((2, frames, 1), 0.1), "spk_id": torch.ones(2, 1, dtype=torch.long),
             "aug_shift": torch.zeros(2, 1, 1), "mel": torch.randn(2, frames, 128) - 5}  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(30):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype):
            loss, terms = objective.training_loss(model, batch, torch.device("cpu"))
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in terms.values())
        assert set(terms) == {"ddsp_loss", "reflow_loss"}
        scaler.scale(loss.float()).backward()
        scaler.step(optimizer)
        scaler.update()
        changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
        if changed:
            break
    assert any(k.startswith("reflow_model.") for k in changed) and any(k.startswith("ddsp_model.") for k in changed)
