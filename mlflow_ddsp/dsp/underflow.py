"""``exp`` without PyTorch's slow path for results that underflow.

Below about -87.3 a float32 ``exp`` underflows to subnormal numbers and then zero,
and PyTorch's vectorised CPU ``exp`` takes a slow path for such lanes: 0.35 ms for
732k arguments near 0, 6-12 ms for arguments near -90 and 4 ms near -200 (this
2-core CPU, torch 2.13; flushing subnormals to zero does not help: the cost is in
computing them). DDSP-SVC trains such arguments: the Performer's key features
(``-|k|^2 / (2 sqrt(E))`` in the exponent, growing with the keys' norms) and the
log-gains of filter bins the model learns to silence. Flooring the argument at
:data:`EXP_FLOOR` changes a result by less than 1.7e-38 (a gain of -760 dB) and
zeroes its gradient there, where the true one is below 1.7e-38 times the incoming
gradient: the same function to float rounding, at a steady speed. The floored results'
products with numbers below 1 are subnormal in turn, a separate cost (in the
matmuls, on Intel CPUs) that CPU training removes by flushing them to zero on
every thread (:mod:`mlflow_ddsp.subnormals`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["EXP_FLOOR", "exp_floored"]

EXP_FLOOR = -87.0
"""``exp(-87) = 1.6e-38``, just above float32's smallest normal number (1.2e-38)."""


def exp_floored(x: Tensor) -> Tensor:
    """``exp(max(x, EXP_FLOOR))``, elementwise; same shape and dtype as ``x``."""
    return torch.exp(x.clamp(min=EXP_FLOOR))
