"""A cascade model's sampler options: the config's defaults, upstream's rules, one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_ddsp.config import load_config
from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.inference import Sampler

ROOT = Path(__file__).resolve().parents[1]


def reflow(*sets: str):
    return load_config(ROOT / "projects/reflow/config.yaml", sets)


def diffusion(*sets: str):
    return load_config(ROOT / "projects/diffusion-fast/config.yaml", sets)


def test_defaults_are_the_configs():
    assert Sampler().keywords(reflow()) == {"infer_step": 20, "method": "euler", "t_start": 0.7}
    assert Sampler().keywords(diffusion()) == {"infer_speedup": 10, "method": "dpm-solver", "k_step": 100}
    assert Sampler().keywords(reflow("infer.method=rk4", "infer.infer_step=5"))["method"] == "rk4"


def test_t_start_is_raised_to_the_trained_one_and_k_step_capped():
    """Upstream main_reflow.py raises t_start to model.t_start; main_diff.py caps k_step at k_step_max."""
    assert Sampler(t_start=0.2).keywords(reflow())["t_start"] == 0.7
    assert Sampler(t_start=0.9).keywords(reflow())["t_start"] == 0.9
    assert Sampler(t_start=1.0).keywords(reflow())["t_start"] == 1.0
    assert Sampler(k_step=40, speedup=4).keywords(diffusion())["k_step"] == 40
    with pytest.raises(ConfigError, match=r"^k_step=101 must be in 1\.\.100 \(model\.k_step_max"):
        Sampler(k_step=101).keywords(diffusion())


@pytest.mark.parametrize(("sampler", "cfg", "message"), [
    (Sampler(method="ddim"), reflow, "method='ddim' is not a RectifiedFlow sampler; allowed: euler, rk4"),
    (Sampler(method="euler"), diffusion, "method='euler' is not a DiffusionFast sampler; allowed: dpm-solver"),
    (Sampler(k_step=5), reflow, "k_step apply to DiffusionFast models; this is a RectifiedFlow (upstream 6.0)"),
    (Sampler(speedup=5, k_step=50), reflow, "k_step, speedup apply to DiffusionFast models"),
    (Sampler(infer_step=5), diffusion, "infer_step apply to RectifiedFlow models; this is a DiffusionFast"),
    (Sampler(t_start=0.5), diffusion, "t_start apply to RectifiedFlow models"),
    (Sampler(infer_step=0), reflow, "infer_step=0 must be in 1..1000"),
    (Sampler(t_start=1.5), reflow, "t_start=1.5 must be in [0, 1]"),
    (Sampler(speedup=0), diffusion, "speedup=0 must be in 1..1000"),
    (Sampler(k_step=10, speedup=6), diffusion, "method=dpm-solver needs at least 2 solver steps"),
    (Sampler(infer_step=2.5), reflow, "infer_step=2.5 must be a whole number"),
], ids=lambda v: v if isinstance(v, str) and " " not in v else None)  # fmt: skip
def test_options_that_do_not_apply_are_refused_in_one_line(sampler, cfg, message):
    with pytest.raises(ConfigError) as info:
        sampler.keywords(cfg())
    assert message in str(info.value) and "\n" not in str(info.value)
