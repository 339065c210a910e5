"""LYNXNet: the velocity network of DDSP-SVC 6.1's rectified flow.

Source: upstream DDSP-SVC ``reflow/lynxnet.py``, branch ``6.1`` (LYNXNet, "linear
gated depthwise separable convolution network"). It replaces 6.0's NaiveV2Diff
(:mod:`mlflow_ddsp.models.naive_v2_diff`) behind the same call form, so
:class:`~mlflow_ddsp.models.rectified_flow.RectifiedFlow` drives either.

Data flow, ``B`` batch, ``M`` mel bins, ``D`` width (``n_chans``), ``C`` condition
channels, ``T`` frames, ``I = D * n_dilates`` inner width::

    x   = gelu(input_projection(mel))                      # [B, D, T]
    emb = mlp(sinusoid(step))                              # [B, D, 1]
    each layer: x = x + conv_module(x + step_proj(emb) + cond_proj(cond))
    out = output_projection(LayerNorm(x))                  # [B, M, T], zero-initialised weight

with the gated conv module (:class:`GatedConvModule`)
``LayerNorm -> 1x1 conv D->2I -> SwiGLU -> depthwise conv k31 -> PReLU(I) -> 1x1 conv I->D``.
Unlike 6.0's layers, the LayerNorm inside each block is applied, and a final
LayerNorm precedes the output projection.

Attribute names are upstream's state_dict keys: ``input_projection``,
``diffusion_embedding.{1,3}``, ``residual_layers.<i>.{diffusion_projection,
conditioner_projection, convmodule.net.{0,2,4,5,6}}``, ``norm``,
``output_projection``; do not rename them. Upstream's other activations
('SiLU', 'ReLU') and its dropout are never selected by the SVC model and are not
offered here.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mlflow_ddsp.models.naive_v2_diff import PreparedCondition, SinusoidalStepEmbedding

__all__ = ["SwiGLU", "GatedConvModule", "LYNXNetResidualLayer", "LYNXNet"]


class _SwapLastTwo(nn.Module):
    """``[B, X, Y] -> [B, Y, X]`` (a view), a parameter-free slot in the ``net`` Sequential."""

    def forward(self, x: Tensor) -> Tensor:
        return x.transpose(1, 2)


class SwiGLU(nn.Module):
    """Gated linear unit with a SiLU gate: split channels ``dim`` in halves ``(a, g)`` -> ``a * silu(g)``.

    ``[..., 2I, ...] -> [..., I, ...]`` (upstream ``SwiGLU``, ``reflow/lynxnet.py`` and
    ``ddsp/model_conformer_naive.py``, branch 6.1).
    """

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        value, gate = x.chunk(2, dim=self.dim)
        return value * F.silu(gate)


class GatedConvModule(nn.Module):
    """Residual-branch conv block of 6.1: [LayerNorm], 1x1 conv + SwiGLU, depthwise conv, PReLU, 1x1 conv.

    Shapes: ``[B, T, D] -> [B, T, D]`` (time-major in and out; convolutions run on
    ``[B, D, T]``). Used by LYNXNet (``use_norm=True``) and by 6.1's Unit2Control
    decoder (``use_norm`` from ``model.use_norm``); upstream ``LYNXConvModule``
    (``reflow/lynxnet.py``) and ``ConformerConvModule`` mode1
    (``ddsp/model_conformer_naive.py``), branch 6.1.

    State_dict keys: ``net.0`` (LayerNorm, only with ``use_norm``), ``net.2``,
    ``net.4`` (depthwise), ``net.5`` (PReLU slopes ``[I]``), ``net.6``.
    """

    def __init__(self, dim: int, expansion_factor: int = 2, kernel_size: int = 31, use_norm: bool = True) -> None:
        """
        Args:
            dim: model width ``D``.
            expansion_factor: inner width ``I = D * expansion_factor``.
            kernel_size: odd depthwise kernel length in frames ('same' padding).
            use_norm: apply a LayerNorm over ``D`` first.

        Raises:
            ValueError: ``kernel_size`` is even (upstream's padding would then shorten the sequence).
        """
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size={kernel_size} must be odd for 'same' padding")
        inner = dim * expansion_factor
        # indices are checkpoint keys: keep the parameter-free slots in place
        self.net = nn.Sequential(
            nn.LayerNorm(dim) if use_norm else nn.Identity(),
            _SwapLastTwo(),
            nn.Conv1d(dim, inner * 2, 1),
            SwiGLU(dim=1),
            nn.Conv1d(inner, inner, kernel_size, padding=kernel_size // 2, groups=inner),
            nn.PReLU(num_parameters=inner),
            nn.Conv1d(inner, dim, 1),
            _SwapLastTwo(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, T, D]`` -> ``[B, T, D]``."""
        return self.net(x)


class LYNXNetResidualLayer(nn.Module):
    """``x + conv_module(x + step_proj(emb) + cond_proj(cond))`` on ``[B, D, T]``."""

    def __init__(self, dim_cond: int, dim: int, expansion_factor: int, kernel_size: int = 31) -> None:
        super().__init__()
        self.diffusion_projection = nn.Conv1d(dim, dim, 1)
        self.conditioner_projection = nn.Conv1d(dim_cond, dim, 1)
        self.convmodule = GatedConvModule(dim, expansion_factor, kernel_size, use_norm=True)

    def forward(self, x: Tensor, condition: Tensor, step_embedding: Tensor, projected: bool = False) -> Tensor:
        """
        Args:
            x: ``[B, D, T]``.
            condition: ``[B, C, T]``, or ``[B, D, T]`` already through ``conditioner_projection``
                when ``projected``.
            step_embedding: ``[B, D, 1]``.
            projected: ``condition`` is already projected.

        Returns:
            ``[B, D, T]``.
        """
        residual = x.transpose(1, 2)
        if not projected:
            condition = self.conditioner_projection(condition)
        h = x + self.diffusion_projection(step_embedding) + condition
        h = self.convmodule(h.transpose(1, 2)) + residual  # [B, T, D]
        return h.transpose(1, 2)


class LYNXNet(nn.Module):
    """Velocity field ``v(x, 1000 t, cond)`` of 6.1's rectified flow.

    Upstream's 6.1 ``Unit2Wav`` builds ``LYNXNet(in_dims=M, dim_cond=M, n_layers=6,
    n_chans=512)`` with ``M = 128`` mel bins (``n_dilates`` 2, kernel 31, PReLU).
    """

    def __init__(
        self,
        in_dims: int = 128,
        dim_cond: int = 128,
        n_layers: int = 6,
        n_chans: int = 512,
        n_dilates: int = 2,
        *,
        kernel_size: int = 31,
    ) -> None:
        """
        Args:
            in_dims: mel bins ``M`` (``vocoder.dimension``).
            dim_cond: condition channels ``C`` (the DDSP mel: ``M``).
            n_layers: residual layers (``model.n_layers``).
            n_chans: width ``D`` (``model.n_chans``), even and >= 4.
            n_dilates: inner widening of each conv module.
            kernel_size: depthwise kernel length (odd).

        Raises:
            ValueError: a size is not a positive integer, ``kernel_size`` is even or
                ``n_chans`` is odd or below 4.
        """
        super().__init__()
        for name, value in (
            ("in_dims", in_dims),
            ("dim_cond", dim_cond),
            ("n_layers", n_layers),
            ("n_chans", n_chans),
            ("n_dilates", n_dilates),
            ("kernel_size", kernel_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LYNXNet {name}={value!r}: must be a positive integer")
        self.in_dims = in_dims
        self.input_projection = nn.Conv1d(in_dims, n_chans, 1)
        self.diffusion_embedding = nn.Sequential(
            SinusoidalStepEmbedding(n_chans),
            nn.Linear(n_chans, n_chans * 4),
            nn.GELU(),
            nn.Linear(n_chans * 4, n_chans),
        )
        self.residual_layers = nn.ModuleList(
            LYNXNetResidualLayer(dim_cond, n_chans, n_dilates, kernel_size) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(n_chans)
        self.output_projection = nn.Conv1d(n_chans, in_dims, 1)
        # a fresh network predicts a constant (upstream zero-initialises the weight, not the bias)
        nn.init.zeros_(self.output_projection.weight)

    def prepare(self, cond: Tensor) -> PreparedCondition:
        """Project ``cond [B, C, T]`` once for many calls with the same condition (ODE steps).

        Returns every layer's ``conditioner_projection(cond)`` (``[B, D, T]`` each) as a
        :class:`~mlflow_ddsp.models.naive_v2_diff.PreparedCondition`, to pass as ``cond`` to
        :meth:`forward`: the same result as passing ``cond`` itself.
        """
        return PreparedCondition(tuple(layer.conditioner_projection(cond) for layer in self.residual_layers))

    def forward(self, spec: Tensor, diffusion_step: Tensor, cond: Tensor | PreparedCondition) -> Tensor:
        """
        Args:
            spec: ``[B, 1, M, T]`` (or ``[B, M, T]``) normalised mel on the flow path.
            diffusion_step: ``[B]`` float, ``1000 * t``.
            cond: ``[B, C, T]`` condition, or :meth:`prepare` of it.

        Returns:
            Same layout as ``spec``: the predicted velocity ``[B, 1, M, T]`` (or ``[B, M, T]``).

        Raises:
            ValueError: ``spec`` is neither 3- nor 4-dimensional.
        """
        four_dim = spec.dim() == 4
        x = spec[:, 0] if four_dim else spec
        if x.dim() != 3:
            raise ValueError(f"spec must be [B, 1, M, T] or [B, M, T]; got {tuple(spec.shape)}")
        x = F.gelu(self.input_projection(x))
        step_embedding = self.diffusion_embedding(diffusion_step).unsqueeze(-1)
        if isinstance(cond, PreparedCondition):
            for layer, projected in zip(self.residual_layers, cond.layers):
                x = layer(x, projected, step_embedding, projected=True)
        else:
            for layer in self.residual_layers:
                x = layer(x, cond, step_embedding)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        x = self.output_projection(x)
        return x[:, None] if four_dim else x
