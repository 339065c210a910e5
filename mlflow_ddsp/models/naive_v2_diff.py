"""NaiveV2Diff: the conv-only Conformer network DDSP-SVC 5.0 and 6.0 use to refine mels.

The same network serves as the denoiser of 5.0's Gaussian diffusion (its step
input is an integer step) and as the velocity field of 6.0's rectified flow (its
step input is ``1000 * t``). Source: upstream DDSP-SVC ``reflow/naive_v2_diff.py``
(identical to ``diffusion/naive_v2_diff.py``), branch ``master``.

Data flow, ``B`` batch, ``M`` mel bins, ``D`` width, ``T`` frames::

    x    = gelu(input_projection(mel))                      # [B, D, T]
    emb  = mlp(sinusoid(step))                              # [B, D, 1]
    cond = conditioner_projection(cond)                     # [B, C, T] (identity unless use_mlp)
    each layer: x = x + conv_module(x + step_proj(emb) + cond_proj(cond))
    out  = output_projection(x)                             # [B, M, T], zero-initialised weight

Computed time-major inside (``[B, T, D]``, the 1x1 convolutions as ``F.linear``):
the same sums as upstream's channels-first convolutions to float rounding. For
many calls with one condition (sampling steps), :meth:`NaiveV2Diff.prepare`
projects it for every layer once; pass its result as ``cond``.

Attribute names are upstream's state_dict keys (``input_projection``,
``diffusion_embedding.{1,3}``, ``residual_layers.<i>.{conformer.net.{2,4,6},
norm, diffusion_step_projection, condition_projection}``, ``output_projection``);
do not rename them. Each layer's LayerNorm is never applied (upstream builds it
for an attention branch the conv-only layers lack) but is part of the checkpoint.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlflow_ddsp.models.pcmer import ConformerConvModule

__all__ = ["SinusoidalStepEmbedding", "NaiveV2DiffLayer", "NaiveV2Diff", "PreparedCondition"]


class SinusoidalStepEmbedding(nn.Module):
    """Sinusoidal embedding of a (possibly fractional) diffusion step or flow time.

    ``[B]`` -> ``[B, dim]``: ``sin(s * f_k) | cos(s * f_k)`` with
    ``f_k = exp(-k * log(10000) / (dim/2 - 1))``, ``k = 0 .. dim/2 - 1``
    (upstream ``DiffusionEmbedding``, ``reflow/naive_v2_diff.py``, master).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"step embedding width must be even and >= 4; got {dim}")
        self.dim = dim

    def forward(self, step: Tensor) -> Tensor:
        """``step``: ``[B]`` float -> ``[B, dim]``."""
        half = self.dim // 2
        # integer arange times a Python float, then exp: the same float32 ops as upstream
        freqs = torch.exp(torch.arange(half, device=step.device) * -(math.log(10000) / (half - 1)))
        angles = step[:, None] * freqs[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


def _pointwise(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """A 1x1 ``Conv1d`` applied to time-major ``x [B, T, C_in]`` -> ``[B, T, C_out]`` (as ``F.linear``)."""
    return F.linear(x, conv.weight.squeeze(-1), conv.bias)


class NaiveV2DiffLayer(nn.Module):
    """One residual block: add step and condition projections, then a Conformer conv module.

    ``x -> x + conv_module(x + step_proj(emb) + cond_proj(cond))``, computed time-major
    (``[B, T, D]``: the 1x1 projections as ``F.linear``, no transposes), in upstream's
    summation order.
    """

    def __init__(self, dim: int, condition_dim: int, expansion_factor: int = 2, kernel_size: int = 31) -> None:
        super().__init__()
        self.conformer = ConformerConvModule(
            dim, expansion_factor=expansion_factor, kernel_size=kernel_size, variant="conv_only"
        )
        self.norm = nn.LayerNorm(dim)  # checkpoint compatibility only, never applied (see module docstring)
        self.diffusion_step_projection = nn.Conv1d(dim, dim, 1)
        self.condition_projection = nn.Conv1d(condition_dim, dim, 1)

    def project_condition(self, condition: Tensor) -> Tensor:
        """``cond_proj``: time-major condition ``[B, T, C]`` -> ``[B, T, D]``."""
        return _pointwise(self.condition_projection, condition)

    def forward(self, x: Tensor, condition: Tensor, step_embedding: Tensor, projected: bool = False) -> Tensor:
        """
        Args:
            x: ``[B, T, D]``.
            condition: ``[B, T, C]``, or ``[B, T, D]`` already through :meth:`project_condition`
                when ``projected``.
            step_embedding: ``[B, D]``.
            projected: ``condition`` is already projected.

        Returns:
            ``[B, T, D]``.
        """
        if not projected:
            condition = self.project_condition(condition)
        step = _pointwise(self.diffusion_step_projection, step_embedding)[:, None, :]
        return x + self.conformer(x + step + condition)


class PreparedCondition(NamedTuple):
    """A condition projected by :meth:`NaiveV2Diff.prepare`: ``layers[i]`` is layer ``i``'s ``[B, T, D]``."""

    layers: tuple[Tensor, ...]


class NaiveV2Diff(nn.Module):
    """Mel refiner conditioned on a mel-like sequence and a scalar step.

    Upstream's 5.0/6.0 configs build it as
    ``NaiveV2Diff(mel_channels=128, dim=512, num_layers=6, condition_dim=128, use_mlp=False)``
    (13.86 M parameters).
    """

    def __init__(
        self,
        mel_channels: int = 128,
        dim: int = 512,
        num_layers: int = 6,
        condition_dim: int = 128,
        use_mlp: bool = False,
        *,
        mlp_factor: int = 4,
        expansion_factor: int = 2,
        kernel_size: int = 31,
    ) -> None:
        """
        Args:
            mel_channels: mel bins ``M`` of the refined spectrogram (``vocoder.dimension``).
            dim: network width ``D`` (``model.n_chans``).
            num_layers: residual layers (``model.n_layers``).
            condition_dim: condition channels ``C`` (the DDSP mel: ``M``).
            use_mlp: project the condition and the output through 1x1-conv MLPs of width
                ``D * mlp_factor`` (upstream's class default; the SVC models pass False).
            mlp_factor: MLP widening for the step embedding (and ``use_mlp``).
            expansion_factor: Conformer conv module inner width is ``D * expansion_factor``.
            kernel_size: depthwise convolution length in frames (odd).

        Raises:
            ValueError: a size is not a positive integer, or ``kernel_size`` is even.
        """
        super().__init__()
        for name, value in (
            ("mel_channels", mel_channels),
            ("dim", dim),
            ("num_layers", num_layers),
            ("condition_dim", condition_dim),
            ("mlp_factor", mlp_factor),
            ("expansion_factor", expansion_factor),
            ("kernel_size", kernel_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"NaiveV2Diff {name}={value!r}: must be a positive integer")
        self.mel_channels = mel_channels
        self.input_projection = nn.Conv1d(mel_channels, dim, 1)
        self.diffusion_embedding = nn.Sequential(
            SinusoidalStepEmbedding(dim),
            nn.Linear(dim, dim * mlp_factor),
            nn.GELU(),
            nn.Linear(dim * mlp_factor, dim),
        )
        if use_mlp:
            self.conditioner_projection: nn.Module = nn.Sequential(
                nn.Conv1d(condition_dim, dim * mlp_factor, 1),
                nn.GELU(),
                nn.Conv1d(dim * mlp_factor, dim, 1),
            )
            layer_condition_dim = dim
        else:
            self.conditioner_projection = nn.Identity()
            layer_condition_dim = condition_dim
        self.residual_layers = nn.ModuleList(
            NaiveV2DiffLayer(dim, layer_condition_dim, expansion_factor, kernel_size) for _ in range(num_layers)
        )
        if use_mlp:
            final = nn.Conv1d(dim * mlp_factor, mel_channels, 1)
            self.output_projection: nn.Module = nn.Sequential(nn.Conv1d(dim, dim * mlp_factor, 1), nn.GELU(), final)
        else:
            final = nn.Conv1d(dim, mel_channels, 1)
            self.output_projection = final
        # a fresh network predicts zero (upstream zero-initialises the last weight, not its bias)
        nn.init.zeros_(final.weight)

    def prepare(self, cond: Tensor) -> PreparedCondition:
        """Project ``cond [B, C, T]`` once for many calls with the same condition (ODE / sampler steps).

        Returns a :class:`PreparedCondition` (every layer's condition projection, ``[B, T, D]``
        each) to pass as ``cond`` to :meth:`forward`: the same result as passing ``cond`` itself.
        """
        condition = self.conditioner_projection(cond).transpose(1, 2)  # [B, T, C]
        return PreparedCondition(tuple(layer.project_condition(condition) for layer in self.residual_layers))

    def forward(self, spec: Tensor, diffusion_step: Tensor, cond: Tensor | PreparedCondition) -> Tensor:
        """
        Args:
            spec: ``[B, 1, M, T]`` (or ``[B, M, T]``) noisy normalised mel.
            diffusion_step: ``[B]`` float: ``1000 * t`` for the flow, the step index for diffusion.
            cond: ``[B, C, T]`` condition, or :meth:`prepare` of it.

        Returns:
            Same layout as ``spec``: ``[B, 1, M, T]`` (or ``[B, M, T]``).

        Raises:
            ValueError: ``spec`` is neither 3- nor 4-dimensional.
        """
        four_dim = spec.dim() == 4
        x = spec[:, 0] if four_dim else spec
        if x.dim() != 3:
            raise ValueError(f"spec must be [B, 1, M, T] or [B, M, T]; got {tuple(spec.shape)}")
        # time-major inside: [B, T, D] (the 1x1 convolutions as F.linear), upstream's sums
        x = F.gelu(_pointwise(self.input_projection, x.transpose(1, 2)))
        step_embedding = self.diffusion_embedding(diffusion_step)  # [B, D]
        if isinstance(cond, PreparedCondition):
            for layer, projected in zip(self.residual_layers, cond.layers):
                x = layer(x, projected, step_embedding, projected=True)
        else:
            condition = self.conditioner_projection(cond).transpose(1, 2)  # [B, T, C]
            for layer in self.residual_layers:
                x = layer(x, condition, step_embedding)
        if isinstance(self.output_projection, nn.Conv1d):
            x = _pointwise(self.output_projection, x).transpose(1, 2)  # [B, M, T]
        else:
            x = self.output_projection(x.transpose(1, 2))
        return x[:, None] if four_dim else x
