"""The optimizer DDSP-SVC trains with: AdamW (upstream's ``train.py``), on PyTorch's fused kernel.

Upstream builds ``torch.optim.AdamW(model.parameters())`` and sets ``lr`` and
``weight_decay`` on its groups; on the CPU that runs PyTorch's for-loop
implementation, one small kernel per parameter and moment. ``fused=True`` (CPU
since torch 2.4, CUDA since 2.0) is the same update in one kernel per step: 6.4
against 2.0 ms for the default CombSubFast's 3.5 M parameters on this 2-core CPU
(torch 2.13), about 3% of a training step. The result differs from the loop
only by float rounding.

Whether an optimizer is fused or uses ``foreach`` is how it runs, not what it has
learnt: :func:`portable_state` leaves those flags out of the state a checkpoint
keeps (so upstream's trainer, on any torch, loads it as its own), and
:func:`load_state` keeps the live optimizer's flags when it loads a state (so a
resume runs the same kernel as the run it continues, and is bit-identical to it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["IMPLEMENTATION_FLAGS", "build_optimizer", "portable_state", "load_state"]

IMPLEMENTATION_FLAGS = ("fused", "foreach")
"""``param_groups`` keys that choose a kernel, not hyper-parameters or state."""


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, device: torch.device
) -> torch.optim.AdamW:
    """``AdamW(parameters, lr, weight_decay)``, fused on the CPU and CUDA (the loop elsewhere)."""
    parameters = list(parameters)
    if torch.device(device).type in ("cpu", "cuda"):
        try:
            return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, ValueError):  # a torch without the fused kernel for this device
            pass
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


def portable_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` without :data:`IMPLEMENTATION_FLAGS` in its ``param_groups``.

    The tensors are the optimizer's own (not copies), as in ``state_dict()``.
    """
    state = optimizer.state_dict()
    groups = [{k: v for k, v in group.items() if k not in IMPLEMENTATION_FLAGS} for group in state["param_groups"]]
    return {**state, "param_groups": groups}


def load_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping the live optimizer's :data:`IMPLEMENTATION_FLAGS`.

    Raises:
        ValueError: the state does not fit the optimizer (torch's message).
    """
    flags = [{k: group[k] for k in IMPLEMENTATION_FLAGS if k in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kept in zip(optimizer.param_groups, flags):
        group.update(kept)
