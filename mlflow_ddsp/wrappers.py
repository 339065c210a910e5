"""Model wrappers (DDP, DataParallel, ``torch.compile``): a leaf module (torch only).

Checkpoints hold the state_dict of the module inside every wrapper, so that
upstream DDSP-SVC and any single-process run load them without prefixes; the
checkpoint queue, the reader and the training loop all unwrap the same way.
"""

from __future__ import annotations

import torch

__all__ = ["unwrap_model"]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose state_dict is saved: DDP/DataParallel (``.module``) and compile (``._orig_mod``) removed."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner
