"""PCmer: the Performer + Conformer-convolution decoder inside DDSP-SVC's Unit2Control.

Each layer adds, residually, (1) multi-head *linear* attention whose softmax
kernel is approximated with fixed random features (Performer / FAVOR+), applied
to the layer-normed input, then (2) a Conformer convolution module (pointwise
conv + GLU, depthwise conv, SiLU, pointwise conv). Linear attention costs
``O(T)`` rather than ``O(T^2)``, which keeps minute-long clips cheap.

Attribute names (``_layers``, ``attn.fast_attention.projection_matrix``,
``attn.to_q``, ``conformer.net.<i>``, ``net.4.conv``) are the state_dict
interface of upstream checkpoints; do not rename them.

Shapes: ``B`` batch, ``T`` frames, ``D`` model width (256), ``H`` heads,
``E`` head width (64), ``M`` random features (266).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "gaussian_orthogonal_random_matrix",
    "softmax_kernel_features",
    "linear_attention",
    "FastAttention",
    "PerformerSelfAttention",
    "ConformerConvModule",
    "PCmerLayer",
    "PCmer",
]


def gaussian_orthogonal_random_matrix(n_rows: int, n_columns: int, generator: torch.Generator | None = None) -> Tensor:
    """Random feature directions for FAVOR+: orthogonal blocks with chi-distributed norms.

    Rows come in blocks of ``n_columns`` mutually orthogonal unit vectors (Q of a
    Gaussian matrix's QR), which lowers the kernel estimate's variance versus
    i.i.d. Gaussian rows; each row is then rescaled by the norm of an independent
    Gaussian vector so row lengths are distributed as for i.i.d. Gaussian rows.

    Args:
        n_rows: number of features ``M``.
        n_columns: head width ``E``.
        generator: optional RNG for reproducible draws.

    Returns:
        ``[M, E]`` float32.
    """
    blocks = []
    for start in range(0, n_rows, n_columns):
        gaussian = torch.randn(n_columns, n_columns, generator=generator)
        q, _ = torch.linalg.qr(gaussian, mode="reduced")
        blocks.append(q.t()[: min(n_columns, n_rows - start)])
    directions = torch.cat(blocks)
    norms = torch.randn(n_rows, n_columns, generator=generator).norm(dim=1)
    return norms.unsqueeze(1) * directions


def softmax_kernel_features(data: Tensor, projection_matrix: Tensor, is_query: bool, eps: float = 1e-4) -> Tensor:
    """Positive random features whose dot products approximate ``exp(q . k / sqrt(E))``.

    ``phi(x) = M^-1/2 * exp(w_j . x' - |x'|^2 / 2)`` with ``x' = x * E^-1/4``.
    Queries subtract their per-position maximum before ``exp`` for stability (a
    per-row constant cancels in the attention normalisation); keys do not, and,
    as upstream, add ``eps`` *inside* the exponent. Both quirks are kept so
    upstream checkpoints give the same output.

    Args:
        data: ``[B, H, T, E]`` queries or keys.
        projection_matrix: ``[M, E]``.
        is_query: choose the query or the key variant.
        eps: small positive floor.

    Returns:
        ``[B, H, T, M]``.
    """
    normalizer = data.shape[-1] ** -0.25
    ratio = projection_matrix.shape[0] ** -0.5
    projected = (normalizer * data) @ projection_matrix.type_as(data).t()  # [B, H, T, M]
    half_sq_norm = (data**2).sum(dim=-1, keepdim=True) / 2.0 * normalizer**2  # [B, H, T, 1]
    # Upstream's ratio * (exp(projected - half_sq_norm - max) + eps) for queries and
    # ratio * exp(projected - half_sq_norm + eps) for keys, with every per-row term
    # (ratio as + log(ratio)) folded into one [B, H, T, 1] shift: one subtraction, one
    # exp (and one add) over the [B, H, T, M] features instead of four or five, in the
    # forward and the backward pass; the values agree with upstream's to float rounding.
    if is_query:
        shift = half_sq_norm + projected.max(dim=-1, keepdim=True).values - math.log(ratio)
        return torch.exp(projected - shift) + ratio * eps
    return torch.exp(projected - (half_sq_norm - (eps + math.log(ratio))))


def linear_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Non-causal linear attention ``(q (k^T v)) / (q . sum_t k_t)``.

    Args:
        q: ``[B, H, T, M]`` query features.
        k: ``[B, H, T, M]`` key features.
        v: ``[B, H, T, E]`` values.

    Returns:
        ``[B, H, T, E]``.
    """
    # einsum (rather than matmul) contracts batch dims the way upstream does, so
    # results are bit-identical for every batch size
    k_sum = k.sum(dim=-2)  # [B, H, M]
    d_inv = 1.0 / (torch.einsum("...nm,...m->...n", q, k_sum.type_as(q)) + 1e-8)  # [B, H, T]
    context = torch.einsum("...nm,...ne->...me", k, v)  # [B, H, M, E]: no T x T matrix
    return torch.einsum("...me,...nm->...ne", context, q) * d_inv.unsqueeze(-1)


class FastAttention(nn.Module):
    """FAVOR+ kernelised attention with a fixed (never redrawn) projection buffer.

    The ``projection_matrix`` buffer is drawn once at construction and saved in
    the state_dict, so a loaded checkpoint uses the features it was trained with.
    """

    def __init__(self, dim_head: int, n_features: int | None = None, qk_norm: bool = False) -> None:
        """
        Args:
            dim_head: head width ``E``.
            n_features: random features ``M``; default ``int(E * ln E)`` (266 for 64).
            qk_norm: L2-normalise queries and keys first (upstream ``pcmer_norm``).
        """
        super().__init__()
        if n_features is None:
            n_features = int(dim_head * math.log(dim_head))
        self.qk_norm = qk_norm
        self.register_buffer("projection_matrix", gaussian_orthogonal_random_matrix(n_features, dim_head))

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``q, k, v``: ``[B, H, T, E]`` -> ``[B, H, T, E]``."""
        if self.qk_norm:
            q = q / (q.norm(dim=-1, keepdim=True) + 1e-8)
            k = k / (k.norm(dim=-1, keepdim=True) + 1e-8)
        q = softmax_kernel_features(q, self.projection_matrix, is_query=True)
        k = softmax_kernel_features(k, self.projection_matrix, is_query=False)
        return linear_attention(q, k, v)


class PerformerSelfAttention(nn.Module):
    """Multi-head self-attention using :class:`FastAttention` (no dropout, no mask)."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, qk_norm: bool = False) -> None:
        """
        Args:
            dim: model width ``D``.
            heads: number of heads ``H``.
            dim_head: head width ``E`` (upstream fixes 64, so inner width is ``H * E``).
            qk_norm: see :class:`FastAttention`.
        """
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.fast_attention = FastAttention(dim_head, qk_norm=qk_norm)
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, T, D]`` -> ``[B, T, D]``."""
        batch, frames, _ = x.shape

        def split_heads(t: Tensor) -> Tensor:  # [B, T, H*E] -> [B, H, T, E]
            return t.reshape(batch, frames, self.heads, -1).transpose(1, 2)

        q, k, v = split_heads(self.to_q(x)), split_heads(self.to_k(x)), split_heads(self.to_v(x))
        out = self.fast_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(batch, frames, -1))


class _SwapTime(nn.Module):
    """``[B, T, C] <-> [B, C, T]`` (Conv1d wants channels first); no parameters."""

    def forward(self, x: Tensor) -> Tensor:
        return x.transpose(1, 2)


class _DepthwiseConv1d(nn.Module):
    """Depthwise 'same' convolution; the wrapper exists for the ``.conv`` key level."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.pad = kernel_size // 2
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels)

    def forward(self, x: Tensor) -> Tensor:
        # explicit zero padding (not Conv1d's) selects the same conv kernel as
        # upstream, giving bit-identical outputs
        return self.conv(F.pad(x, (self.pad, self.pad)))


class _Swish(nn.Module):
    """``x * sigmoid(x)``: SiLU, computed as upstream PCmer does (bit-identical)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * x.sigmoid()


class ConformerConvModule(nn.Module):
    """Conformer convolution block: [LayerNorm], 1x1 conv + GLU, depthwise conv, SiLU, 1x1 conv.

    Two upstream variants differ in state_dict layout and in how they compute
    the same operations; ``variant`` picks one:

    - ``"pcmer"``: LayerNorm at ``net.0``, depthwise conv at ``net.4.conv``.
    - ``"conv_only"`` (CombSubSuperFast's decoder): no norm, depthwise conv at ``net.4``.
    """

    def __init__(self, dim: int, expansion_factor: int = 2, kernel_size: int = 31, variant: str = "pcmer") -> None:
        """
        Args:
            dim: model width ``D``.
            expansion_factor: inner width is ``D * expansion_factor``.
            kernel_size: odd depthwise kernel length in frames.
            variant: ``"pcmer"`` or ``"conv_only"`` (see above).
        """
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size={kernel_size} must be odd for 'same' padding")
        inner = dim * expansion_factor
        if variant == "pcmer":
            norm: nn.Module = nn.LayerNorm(dim)
            depthwise: nn.Module = _DepthwiseConv1d(inner, kernel_size)
            activation: nn.Module = _Swish()
        elif variant == "conv_only":
            norm = nn.Identity()
            depthwise = nn.Conv1d(inner, inner, kernel_size, padding=kernel_size // 2, groups=inner)
            activation = nn.SiLU()
        else:
            raise ValueError(f"variant={variant!r}: must be 'pcmer' or 'conv_only'")
        # indices are the checkpoint keys: net.0, net.2, net.4, net.6 hold weights
        self.net = nn.Sequential(
            norm,
            _SwapTime(),
            nn.Conv1d(dim, inner * 2, 1),
            nn.GLU(dim=1),
            depthwise,
            activation,
            nn.Conv1d(inner, dim, 1),
            _SwapTime(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, T, D]`` -> ``[B, T, D]``."""
        return self.net(x)


class PCmerLayer(nn.Module):
    """``x + attn(norm(x))`` then ``+ conformer(.)``."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False) -> None:
        super().__init__()
        self.conformer = ConformerConvModule(dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = PerformerSelfAttention(dim, heads=heads, qk_norm=qk_norm)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, T, D]`` -> ``[B, T, D]``."""
        x = x + self.attn(self.norm(x))
        return x + self.conformer(x)


class PCmer(nn.Module):
    """A stack of :class:`PCmerLayer` (upstream: 3 layers, 8 heads, width 256).

    Upstream declares residual/attention dropout of 0.1 but never applies it, so
    this decoder has no dropout: train and eval mode compute the same function.
    """

    def __init__(self, num_layers: int = 3, num_heads: int = 8, dim_model: int = 256, qk_norm: bool = False) -> None:
        super().__init__()
        self._layers = nn.ModuleList(PCmerLayer(dim_model, num_heads, qk_norm) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, T, D]`` -> ``[B, T, D]``."""
        for layer in self._layers:
            x = layer(x)
        return x
