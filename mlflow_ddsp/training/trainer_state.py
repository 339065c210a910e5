"""The trainer's state beside a checkpoint: what an exact resume needs besides the weights.

Stored as its own file in every version (``trainer_state.pt``), so that
``model_<step>.pt`` stays byte-compatible with upstream DDSP-SVC. It holds:

* the random number generators: torch (CPU, and CUDA when present), numpy and
  python's ``random``, as they were when the checkpoint was taken;
* where the data stood: the epoch and how many batches of it were trained
  (the sampler's order is a function of the seed and the epoch, see
  :class:`mlflow_ddsp.training.data.EpochSampler`);
* the AMP gradient scaler's state (fp16 on CUDA), if any.

Every value is a tensor, an int, a float or None, so it loads with
``torch.load(weights_only=True)`` like the checkpoint itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["TrainerState", "capture", "restore_rngs", "seed_everything"]

FORMAT = 1


@dataclass(frozen=True)
class TrainerState:
    """Where training stood: ``epoch`` and ``batches`` trained of it, plus RNG and scaler state."""

    epoch: int
    batches: int
    payload: Mapping[str, Any]  # the stored form (see capture)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any] | None) -> "TrainerState | None":
        """Parse a stored trainer state; None for checkpoints without one (upstream's, or older)."""
        if not payload or payload.get("format") != FORMAT:
            return None
        return cls(int(payload["epoch"]), int(payload["batches"]), payload)

    @property
    def scaler(self) -> Mapping[str, Any] | None:
        return self.payload.get("scaler")

    def position_only(self) -> "TrainerState":
        """The data position and scaler without the RNGs (DDP ranks other than 0, whose
        random streams are their own)."""
        return TrainerState(self.epoch, self.batches, {"scaler": self.scaler})


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python's ``random`` (a fresh training run; ``train.seed``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture(epoch: int, batches: int, scaler: Any = None) -> dict[str, Any]:
    """The trainer state now, in its stored form."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "format": FORMAT,
        "epoch": int(epoch),
        "batches": int(batches),
        "torch_rng": torch.get_rng_state(),
        "python_rng": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy_rng": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "scaler": scaler.state_dict() if scaler is not None else None,
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore_rngs(state: TrainerState) -> None:
    """Put every random number generator back where :func:`capture` found it."""
    p = state.payload
    if "torch_rng" not in p:
        return  # position only
    torch.set_rng_state(p["torch_rng"])
    if "cuda_rng" in p and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(p["cuda_rng"])
    py = p["python_rng"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    nr = p["numpy_rng"]
    np.random.set_state(("MT19937", nr["keys"].numpy().astype(np.uint32), nr["pos"], nr["has_gauss"], nr["cached"]))
