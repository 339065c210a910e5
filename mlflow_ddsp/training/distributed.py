"""Data-parallel training under ``torchrun``: who does what.

Rank 0 does all MLflow I/O (the run, the tracker, the checkpoint queue and its
writer lease); every rank trains. Ranks agree on three things through
collectives: which checkpoint to resume from (rank 0 picks, the others load
that exact version read-only), whether to stop (a SIGTERM on any rank stops
every rank after the same step), and nothing else, so the per-step cost is
one tiny all-reduce.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "NullTracker", "NullCheckpointer"]


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> "DistributedContext":
        """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (a single process without them)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per process on CUDA; every rank on the CPU otherwise."""
        if self.enabled and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def start(self, device: torch.device) -> None:
        if self.enabled and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def finish(self) -> None:
        """After success: wait for every rank, then tear down.

        Without the barrier a rank that finishes first destroys its process group
        while rank 0 is still saving, and gloo aborts that process at exit.
        """
        if self.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def abort(self) -> None:
        """After a failure: tear down without waiting (other ranks may be stuck in a
        collective; torchrun stops them once this process exits)."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.enabled:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([1 if flag else 0], dtype=torch.int32)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())


class NullTracker:
    """Ranks other than 0 log nothing."""

    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
        pass

    def log_validation(self, result: Any, step: int, media: Any = None) -> None:
        pass


class NullCheckpointer:
    """Ranks other than 0 save nothing; rank 0's queue holds the lease."""

    def save(self, step: int, model: torch.nn.Module, optimizer: Any = None, *, metrics: Any = None,
             metrics_timestamp: Any = None, trainer_state: Any = None, attachments: Any = None) -> None:  # fmt: skip
        return None
