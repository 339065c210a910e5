"""The convolution-only Conformer decoder used by CombSubSuperFast's Unit2Control.

Upstream builds it from a general Conformer encoder with attention switched off
(``conv_only``): each layer is ``x + conv_module(x)``. Every layer also owns a
LayerNorm that only the attention branch would use; it is kept (unused) because
it is part of the checkpoint's state_dict and parameter count.

Keys: ``encoder_layers.<i>.conformer.net.{2,4,6}`` and ``encoder_layers.<i>.norm``.
"""

from __future__ import annotations

from torch import Tensor, nn

from mlflow_ddsp.models.pcmer import ConformerConvModule

__all__ = ["ConvConformerLayer", "ConvConformerDecoder"]


class ConvConformerLayer(nn.Module):
    """One residual Conformer convolution block (no norm, plain depthwise conv)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conformer = ConformerConvModule(dim, variant="conv_only")
        self.norm = nn.LayerNorm(dim)  # checkpoint compatibility only, see module docstring

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, T, D]`` -> ``[B, T, D]``."""
        return x + self.conformer(x)


class ConvConformerDecoder(nn.Module):
    """A stack of :class:`ConvConformerLayer` (upstream: 3 layers, width 256)."""

    def __init__(self, num_layers: int = 3, dim_model: int = 256) -> None:
        super().__init__()
        self.encoder_layers = nn.ModuleList(ConvConformerLayer(dim_model) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, T, D]`` -> ``[B, T, D]``."""
        for layer in self.encoder_layers:
            x = layer(x)
        return x
