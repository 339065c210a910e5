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

from mlflow_ddsp.dsp.underflow import EXP_FLOOR

__all__ = [
    "gaussian_orthogonal_random_matrix",
    "softmax_kernel_features",
    "linear_attention",
    "favor_attention",
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


class _FavorAttention(torch.autograd.Function):
    """:func:`softmax_kernel_features` for ``q`` and ``k`` then :func:`linear_attention`, with a hand-written backward.

    The same function as the reference pair (to float rounding), computed with
    fewer passes over the ``[B, H, T, M]`` features, in both directions:

    - the query features ``phi_q = e_q + r * eps`` (``r = M^-1/2``) are never
      formed: every product with them is one with ``e_q`` plus ``r * eps`` times a
      column sum;
    - the numerator and the normaliser share one matmul: with ``[v | 1]`` the
      keys give ``[C | S] = phi_k^T [v | 1]`` (``C`` the context, ``S`` the key
      sum) and ``e_q [C | S]`` gives both at once;
    - the backward is matmuls and two in-place products (``dz = dphi * e``, the
      derivative of ``exp``), no autograd graph over the features; the query
      maximum's subgradient (upstream does not detach it) is kept as a gather
      of the projection rows it selected.

    Derivation (one batch item and head; ``c = E^-1/4``, ``P = c x W^T``,
    ``a = c^2 |x|^2 / 2``, ``G`` the output's gradient)::

        out = num / den,  num = phi_q C,  den = phi_q S + 1e-8
        D = [G / den | -sum_e(G * out) / den]          # d/d[num | den]
        dphi_q = D [C | S]^T,    d[C | S] = phi_q^T D,   dphi_k = [v | 1] d[C | S]^T,   dv = phi_k dC
        dz_q = dphi_q * e_q,     dq = c dz_q W - s_q c W[argmax P_q] - s_q c^2 q,   s_q = sum_m dz_q
        dz_k = dphi_k * phi_k,   dk = c dz_k W - s_k c^2 k,                       s_k = sum_m dz_k

    Exponents are floored at :data:`~mlflow_ddsp.dsp.underflow.EXP_FLOOR` before ``exp``
    (see there: a slow path of PyTorch's CPU ``exp`` that the key features reach in training).

    Under CUDA autocast it runs in fp32 (``custom_fwd``): the features are an
    ``exp`` of projections, which fp16 would overflow.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, projection_matrix: Tensor, eps: float) -> Tensor:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        n_features, dim_head = projection_matrix.shape
        c = dim_head**-0.25
        log_ratio = -0.5 * math.log(n_features)
        w = (c * projection_matrix).to(q.dtype)  # [M, E]
        projected_q = q @ w.t()  # [B, H, T, M]; contiguous q: one matmul over B * H * T rows
        top, top_index = projected_q.max(dim=-1, keepdim=True)
        shift_q = (q * q).sum(dim=-1, keepdim=True) * (c * c / 2.0) + top - log_ratio
        e_q = projected_q.sub_(shift_q).clamp_(min=EXP_FLOOR).exp_()  # phi_q = e_q + r * eps
        shift_k = (k * k).sum(dim=-1, keepdim=True) * (c * c / 2.0) - (eps + log_ratio)
        phi_k = (k @ w.t()).sub_(shift_k).clamp_(min=EXP_FLOOR).exp_()  # [B, H, T, M]
        v1 = torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], dim=-1)  # [B, H, T, E + 1]
        cs = phi_k.transpose(-1, -2) @ v1  # [C | S]: [B, H, M, E + 1]
        floor = math.exp(log_ratio) * eps
        ns = e_q @ cs + floor * cs.sum(dim=-2, keepdim=True)  # [num | den - 1e-8]: [B, H, T, E + 1]
        den = ns[..., -1:] + 1e-8
        out = ns[..., :-1] / den
        ctx.save_for_backward(q, k, v1, w, top_index, e_q, phi_k, cs, den, out)
        ctx.floor, ctx.c = floor, c
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: Tensor):
        q, k, v1, w, top_index, e_q, phi_k, cs, den, out = ctx.saved_tensors
        floor, c = ctx.floor, ctx.c
        d = torch.cat([grad / den, -(grad * out).sum(dim=-1, keepdim=True) / den], dim=-1)  # [B, H, T, E + 1]
        dz_q = (d @ cs.transpose(-1, -2)).mul_(e_q)  # dphi_q * e_q: [B, H, T, M]
        d_cs = e_q.transpose(-1, -2) @ d + floor * d.sum(dim=-2, keepdim=True)  # phi_q^T D: [B, H, M, E + 1]
        dv = phi_k @ d_cs[..., :-1]
        dz_k = (v1 @ d_cs.transpose(-1, -2)).mul_(phi_k)  # dphi_k * phi_k
        s_q = dz_q.sum(dim=-1, keepdim=True)
        s_k = dz_k.sum(dim=-1, keepdim=True)
        dq = dz_q @ w - s_q * (c * c) * q - s_q * w[top_index.squeeze(-1)]
        dk = dz_k @ w - s_k * (c * c) * k
        return dq, dk, dv, None, None


def favor_attention(q: Tensor, k: Tensor, v: Tensor, projection_matrix: Tensor, eps: float = 1e-4) -> Tensor:
    """``linear_attention(softmax_kernel_features(q, W, True), softmax_kernel_features(k, W, False), v)``, fused.

    The two reference functions above define what is computed (upstream's
    FAVOR+ with its quirks); this computes the same to float rounding, about
    twice as fast in training on the CPU (see :class:`_FavorAttention`).

    Args:
        q, k, v: ``[B, H, T, E]``.
        projection_matrix: ``[M, E]`` random features (no gradient).

    Returns:
        ``[B, H, T, E]``.
    """
    return _FavorAttention.apply(q, k, v, projection_matrix, eps)


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
        return favor_attention(q, k, v, self.projection_matrix)


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
        """``x``: ``[B, T, D]`` -> ``[B, T, D]``.

        ``self.net`` in order, computed on time-major (channels-last) frames with
        no transpose copy: the 1x1 convolutions as ``F.linear`` with their
        ``[C_out, C_in, 1]`` weights, GLU over the last dim, the depthwise
        convolution by oneDNN on a channels-last view (its fastest depthwise
        kernels, forward and backward). Same function as ``self.net(x)`` (to
        float rounding), about 1.3x faster to train on the CPU.
        """
        norm, pointwise_in, depthwise, activation, pointwise_out = (self.net[i] for i in (0, 2, 4, 5, 6))
        h = F.glu(F.linear(norm(x), pointwise_in.weight.squeeze(-1), pointwise_in.bias), dim=-1)  # [B, T, I]
        conv = depthwise.conv if isinstance(depthwise, _DepthwiseConv1d) else depthwise
        # [B, I, 1, T] view of [B, T, I] memory: channels-last for conv2d, so its output is too.
        h = F.conv2d(h.transpose(1, 2).unsqueeze(2), conv.weight.unsqueeze(2), conv.bias,
                     groups=conv.groups, padding=(0, conv.kernel_size[0] // 2)).squeeze(2).transpose(1, 2)  # fmt: skip
        return F.linear(activation(h), pointwise_out.weight.squeeze(-1), pointwise_out.bias)


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
