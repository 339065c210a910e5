"""The frame grid every feature shares.

Upstream DDSP-SVC gives a clip of ``T`` samples ``T // hop_size + 1`` frames, frame
``n`` centred on sample ``n * hop_size``. Volume, f0 and units all use this grid, so
the model sees ``[n_frames]`` of each and synthesises ``n_frames * hop_size`` samples.
"""

from __future__ import annotations

__all__ = ["frame_count"]


def frame_count(n_samples: int, hop_size: int) -> int:
    """Number of frames for ``n_samples`` at ``hop_size``: ``n_samples // hop_size + 1``."""
    if hop_size <= 0:
        raise ValueError(f"hop_size must be positive, got {hop_size}")
    return int(n_samples) // int(hop_size) + 1
