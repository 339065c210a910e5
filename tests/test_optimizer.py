"""The training optimizer: fused AdamW whose checkpoint state any AdamW loads, and whose resume stays fused."""

from __future__ import annotations

import torch

from mlflow_ddsp.optimizer import IMPLEMENTATION_FLAGS, build_optimizer, load_state, portable_state

BATCHES = [torch.randn(4, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _fused(model: torch.nn.Module) -> torch.optim.Optimizer:
    return build_optimizer(model.parameters(), 1e-2, 0.01, torch.device("cpu"))


def _train(model, optimizer, batches) -> None:
    for x in batches:
        optimizer.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        optimizer.step()


def test_the_cpu_optimizer_is_fused_adamw_with_the_configured_hyper_parameters() -> None:
    optimizer = _fused(_model())
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert group["fused"] is True and group["lr"] == 1e-2 and group["weight_decay"] == 0.01


def test_checkpoint_state_leaves_out_kernel_flags_and_loads_into_upstreams_plain_adamw() -> None:
    model = _model()
    optimizer = _fused(model)
    _train(model, optimizer, BATCHES)
    state = portable_state(optimizer)
    assert not any(flag in group for group in state["param_groups"] for flag in IMPLEMENTATION_FLAGS)
    assert optimizer.param_groups[0]["fused"] is True, "the live optimizer is left as it was"
    upstream = torch.optim.AdamW(model.parameters())  # upstream's train.py
    upstream.load_state_dict(state)
    assert upstream.param_groups[0]["lr"] == 1e-2 and not upstream.param_groups[0]["fused"]
    assert torch.equal(upstream.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_a_resume_keeps_the_fused_kernel_and_ends_bit_identical() -> None:
    """Loading a state without the flags (ours, or upstream's) must not fall back to the loop kernel."""
    uninterrupted = _model()
    _train(uninterrupted, _fused(uninterrupted), BATCHES)

    first = _model()
    optimizer = _fused(first)
    _train(first, optimizer, BATCHES[:2])
    saved = {"model": first.state_dict(), "optimizer": portable_state(optimizer)}
    resumed = _model()
    optimizer = _fused(resumed)
    resumed.load_state_dict(saved["model"])
    load_state(optimizer, saved["optimizer"])
    assert optimizer.param_groups[0]["fused"] is True
    _train(resumed, optimizer, BATCHES[2:])
    for a, b in zip(uninterrupted.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
