"""Building blocks shared by the HuBERT-family content encoders.

Both bshall's HubertSoft and fairseq's HuBERT add a convolutional positional
embedding whose convolution is weight-normalised over the kernel axis
(``torch.nn.utils.weight_norm(conv, dim=2)``). Their checkpoints therefore hold
``weight_g [1, 1, k]`` and ``weight_v [C, C / groups, k]`` instead of ``weight``;
``WeightNormConv1d`` keeps exactly those two parameters (and ``bias``) so the files
load as they are, without the deprecated hook-based ``weight_norm`` API.

At inference (autograd off: ``torch.no_grad`` / ``torch.inference_mode``) the
effective kernel is computed once and reused while the parameters stay the same
tensors at the same version; training (autograd on) recomputes it every call, so
gradients reach ``weight_g`` and ``weight_v`` as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WeightNormConv1d", "SamePad", "TransposeLast", "upgrade_weight_norm_keys"]


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d with weight = ``weight_g * weight_v / ||weight_v||``, norm over dims 0 and 1.

    Shapes: ``x [B, C_in, N] -> [B, C_out, N + 2 * (k // 2) - k + 1]`` (padding ``k // 2``).

    With autograd off the kernel is cached (see the module doc): the cache is keyed
    on the identity, version counter, dtype and device of both parameters, so an
    in-place update (``load_state_dict``, an optimiser step), ``.to()`` or a
    replaced parameter recomputes it. It is no parameter or buffer (not in the
    ``state_dict``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel_size))
        self.weight_v = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.normal_(self.weight_v, std=(4.0 / (kernel_size * in_channels)) ** 0.5)
        with torch.no_grad():  # start as a plain conv with weight == weight_v
            self.weight_g.copy_(self.weight_v.norm(dim=(0, 1), keepdim=True))

        self._cached: tuple[tuple, torch.Tensor] | None = None

    def weight(self) -> torch.Tensor:
        """The effective ``[C_out, C_in / groups, k]`` kernel (recomputed on every call)."""
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))

    def _cache_key(self) -> tuple:
        g, v = self.weight_g, self.weight_v
        return (id(g), id(v), g._version, v._version, g.data_ptr(), v.data_ptr(), v.dtype, v.device)

    def inference_weight(self) -> torch.Tensor:
        """:meth:`weight` computed once and reused while the parameters are unchanged (autograd off only)."""
        key = self._cache_key()
        if self._cached is None or self._cached[0] != key:
            with torch.no_grad():
                self._cached = (key, self.weight())
        return self._cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight() if torch.is_grad_enabled() else self.inference_weight()
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drop the extra last frame an even kernel with padding ``k // 2`` produces."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, N + remove] -> [B, C, N]
        return x[..., : x.size(-1) - self.remove] if self.remove else x


class TransposeLast(nn.Module):
    """Swap the last two axes (lets a LayerNorm run over channels of ``[B, C, N]``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -1)


def upgrade_weight_norm_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``parametrizations.weight.original0/1`` keys to ``weight_g``/``weight_v``.

    Checkpoints re-saved with ``torch.nn.utils.parametrizations.weight_norm`` use the
    new names; the original releases use the legacy ones this package expects.
    """
    renamed = {}
    for key, value in state_dict.items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        renamed[key] = value
    return renamed
