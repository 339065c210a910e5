"""Snapshot training state into CPU memory: the only part of a save that blocks training.

After ``stage`` returns, training may update its parameters in place; the
snapshot is unaffected. Buffers are reused from one save to the next (a
4 M-parameter model with AdamW state is ~48 MB: allocating that afresh at every
validation step only churns the allocator), which is safe because the queue
stages a new snapshot only after the previous one has been written.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["StagingBuffer"]


class StagingBuffer:
    """Copies nested state (dicts/lists of tensors and plain values) into reused CPU tensors.

    Args:
        pin_memory: allocate page-locked buffers so device-to-host copies can run
            asynchronously; default: whenever CUDA is available.
    """

    def __init__(self, pin_memory: bool | None = None):
        self._pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._buffers: dict[tuple, torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def stage(self, tree: Any) -> Any:
        """Return a copy of ``tree`` whose tensors live in this buffer's CPU memory."""
        copied_from_device = False

        def visit(node: Any, path: tuple) -> Any:
            nonlocal copied_from_device
            if isinstance(node, torch.Tensor):
                src = node.detach()
                buf = self._buffers.get(path)
                if buf is None or buf.shape != src.shape or buf.dtype != src.dtype:
                    buf = torch.empty(src.shape, dtype=src.dtype, pin_memory=self._pin and src.is_cuda)
                    self._buffers[path] = buf
                copied_from_device |= src.device.type != "cpu"
                buf.copy_(src, non_blocking=src.device.type != "cpu")
                return buf
            if isinstance(node, dict):
                return type(node)((k, visit(v, path + (k,))) for k, v in node.items())
            if isinstance(node, (list, tuple)):
                return type(node)(visit(v, path + (i,)) for i, v in enumerate(node))
            return copy.deepcopy(node)

        staged = visit(tree, ())
        if copied_from_device and torch.cuda.is_available():
            # non_blocking copies must land before the worker thread reads them.
            torch.cuda.synchronize()
        return staged
