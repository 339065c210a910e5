"""Numeric precision of a content encoder at inference: fp32, or dynamic int8 on the CPU.

``encoder_precision`` takes one of :data:`ENCODER_PRECISIONS`:

- ``fp32``: the network as loaded (the reference; what preprocessing always uses,
  so that training features are exact).
- ``int8``: dynamic int8 quantization (``torch.ao.quantization.quantize_dynamic``,
  PyTorch's "dynamic quantization" recipe: weights int8 per tensor ahead of time,
  activations quantized per call with one scale per tensor, int32 accumulation
  in fbgemm's VNNI kernels, fp32 in and out) of the attention and feed-forward
  Linears of every transformer layer of a fairseq HuBERT / ContentVec: ~95% of
  the transformer's multiply-adds. The attention's q, k and v projections run
  as one ``[D, 3 D]`` Linear with one weight scale per output channel
  (:class:`FusedQkvAttention`: one activation quantization and one kernel call
  instead of three; ~2% of a conversion, per-channel scales no less accurate
  than three per-tensor ones). The conv feature extractor is rewritten
  as windows times matrix on channels-last frames (a ``Conv1d`` with kernel
  ``k`` and stride ``s`` over ``[B, C, T]`` is a matmul of the ``[B, N, k * C]``
  windows with the ``[k * C, C_out]`` weight; the first block's per-channel
  GroupNorm folded into its fp32 matmul), the blocks after the first run in
  bf16 where the CPU has bf16 kernels (AVX-512; fp32 convolutions otherwise),
  the first block's output rounded to bf16 before its GELU. Not int8 there:
  with one activation scale per tensor, the quiet frames of a clip with loud
  singing lose most of their resolution (mean units cosine 0.95 on singing with
  pauses, measured). ``post_extract_proj`` stays fp32 for the same reason
  (0.986 when quantized), and so do ``final_proj``, LayerNorms, softmax and the
  transformer's GELUs. The positional convolution's weight-normed kernel is
  computed once and the convolution runs as an fp32 FFT convolution
  (:class:`FftConv1d`: exact to fp32 rounding, and faster than a bf16
  convolution for its 128-tap kernel). CPU only.
- ``auto``: ``int8`` on the CPU for encoders that have an int8 form (the fairseq
  HuBERT family: ``contentvec*``, ``hubertbase*``, ``hubertlarge1024l24``);
  ``fp32`` otherwise, including every GPU (the GPU path is unchanged).

Quality guard (``bench/serve_latency.py`` prints it): the int8 units keep a mean
per-frame cosine similarity >= 0.99 to the fp32 units.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from mlflow_ddsp.errors import ConfigError
from mlflow_ddsp.features.encoders.fairseq_hubert import FairseqHubert, attend_heads
from mlflow_ddsp.features.encoders.layers import WeightNormConv1d

__all__ = [
    "ENCODER_PRECISIONS",
    "check_encoder_precision",
    "resolve_encoder_precision",
    "ChannelsLastConvStack",
    "FftConv1d",
    "FusedQkvAttention",
    "fast_matmul_dtype",
    "quantize_fairseq_hubert_int8",
]

ENCODER_PRECISIONS = ("auto", "fp32", "int8")


def check_encoder_precision(value: object, key: str = "encoder_precision") -> str:
    """``value`` lower-cased if it is one of :data:`ENCODER_PRECISIONS`.

    Raises:
        ConfigError: ``"{key}='x' is not an encoder precision; allowed: auto, fp32, int8"``.
    """
    if isinstance(value, str) and value.strip().lower() in ENCODER_PRECISIONS:
        return value.strip().lower()
    raise ConfigError(f"{key}={value!r} is not an encoder precision; allowed: {', '.join(ENCODER_PRECISIONS)}")


def resolve_encoder_precision(
    precision: str, device: str | torch.device, *, has_int8: bool, encoder: str, key: str = "encoder_precision"
) -> str:
    """The concrete precision (``fp32`` or ``int8``) for ``precision`` on ``device``.

    ``auto`` -> ``int8`` on the CPU when the encoder has an int8 form, else ``fp32``
    (always ``fp32`` off the CPU).

    Raises:
        ConfigError: unknown value; ``int8`` on a non-CPU device or for an encoder
            without an int8 form (the message names the allowed values).
    """
    precision = check_encoder_precision(precision, key)
    on_cpu = torch.device(device).type == "cpu"
    if precision == "auto":
        return "int8" if on_cpu and has_int8 else "fp32"
    if precision == "int8" and not on_cpu:
        raise ConfigError(
            f"{key}=int8: dynamic int8 runs on the CPU only, the device is {torch.device(device)}; allowed there: auto, fp32"
        )
    if precision == "int8" and not has_int8:
        raise ConfigError(f"{key}=int8: encoder {encoder!r} has no int8 form; allowed for it: auto, fp32")
    return precision


class ChannelsLastConvStack(nn.Module):
    """A fairseq conv feature extractor run as windows-times-matrix on channels-last frames.

    Built from a loaded ``_ConvFeatureExtractor`` (``wav [B, T] -> [B, C, N]``), same
    output. Block 0 (``Conv1d(1 -> C, 10, 5)`` + GroupNorm/LayerNorm + GELU) runs in
    fp32 as a ``[B, N0, 10] @ [10, C]`` matmul of the waveform's windows, straight
    into channels-last frames, its GroupNorm (one group per channel: each channel
    normalised over time) folded into that matmul (see :meth:`first_block`) or its
    LayerNorm over channels applied after it, then GELU. Each further
    ``Conv1d(C -> C_out, k, s)`` becomes a matmul of the windows ``[B, N, k * C]``
    of channels-last ``[B, N, C]`` frames (a strided view: window ``n`` is frames
    ``n * s .. n * s + k - 1`` side by side) with the weight ``[C_out, C, k]``
    permuted and reshaped to ``[k * C, C_out]`` (the windows' ``(k, C)`` order),
    then its LayerNorm (``layer_norm`` extractor mode) and GELU.

    ``dtype`` is those matmuls' dtype: ``torch.bfloat16`` halves their cost on CPUs
    with AVX-512 (oneDNN bf16 kernels), with fp32 accumulation and relative
    rounding (no scale to saturate, unlike int8, so quiet frames keep their
    accuracy next to loud ones). Between blocks the frames are kept in ``dtype``
    (each matmul rounds its input to it anyway); without conv bias and norm
    (fairseq's ``default`` mode: HuBERT base, ContentVec) the GELU runs on the
    ``dtype`` matmul output, which PyTorch computes in fp32 and rounds: the same
    numbers as a fp32 GELU rounded for the next matmul. The last block's GELU
    and any bias and norm are fp32. With ``kernel == stride`` the windows need
    no copy. The result is a ``[B, C, N]`` view of channels-last memory, so the
    caller's ``transpose(1, 2)`` is free.
    """

    def __init__(self, extractor: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        blocks = list(extractor.conv_layers)
        self.dtype = dtype
        first = blocks[0]
        conv0 = first[0]
        if conv0.in_channels != 1 or conv0.padding != (0,) or conv0.dilation != (1,) or conv0.groups != 1:
            raise ValueError(f"block 0 must be an unpadded Conv1d(1 -> C), got {conv0}")
        self.first_window = (int(conv0.kernel_size[0]), int(conv0.stride[0]))
        self.register_buffer("first_weight", conv0.weight.detach()[:, 0].t().contiguous())  # [k, C]
        self.register_buffer("first_bias", conv0.bias.detach().clone() if conv0.bias is not None else None)
        norm0 = first[2] if len(first) == 4 else None
        if isinstance(norm0, nn.Sequential):  # layer_norm mode: (TransposeLast, LayerNorm, TransposeLast)
            norm0 = norm0[1]
        if isinstance(norm0, nn.GroupNorm) and norm0.num_groups != norm0.num_channels:
            raise ValueError(f"block 0's GroupNorm must have one group per channel, got {norm0}")
        self.first_norm = copy.deepcopy(norm0) if norm0 is not None else nn.Identity()
        self.windows: list[tuple[int, int]] = []
        norms = []
        for i, block in enumerate(blocks[1:]):
            conv = block[0]
            weight = conv.weight.detach()  # [C_out, C, k] -> [k * C, C_out], rows in the windows' (k, C) order
            # Buffers, not nn.Linear: dynamic quantization of the model must leave these alone.
            self.register_buffer(f"weight{i}", weight.permute(2, 1, 0).reshape(-1, weight.shape[0]).to(dtype).contiguous())
            bias = conv.bias.detach().clone() if conv.bias is not None else None
            self.register_buffer(f"bias{i}", bias)
            # fairseq's "layer_norm" mode: Sequential(TransposeLast, LayerNorm, TransposeLast) at index 2.
            norm = block[2][1] if len(block) == 4 and isinstance(block[2], nn.Sequential) else None
            norms.append(copy.deepcopy(norm) if norm is not None else nn.Identity())
            self.windows.append((int(conv.kernel_size[0]), int(conv.stride[0])))
        self.norms = nn.ModuleList(norms)

    @staticmethod
    def frame_windows(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
        """``[B, N, C] -> [B, (N - kernel) // stride + 1, kernel * C]`` windows, a view of ``x``.

        Raises:
            ValueError: fewer than ``kernel`` frames.
        """
        b, n, c = x.shape
        if n < kernel:
            raise ValueError(f"{n} frames are fewer than the kernel size {kernel}")
        x = x.contiguous()
        return x.as_strided((b, (n - kernel) // stride + 1, kernel * c), (n * c, stride * c, 1))

    def first_block(self, wav: torch.Tensor) -> torch.Tensor:
        """Block 0 in fp32, channels-last: ``wav [B, T] -> [B, N0, C]`` (before its GELU).

        A GroupNorm with one group per channel is folded into the matmul: with
        windows ``F [N0, k]`` and kernel ``W [k, C]``, channel ``c`` of ``y = F W + b``
        has mean ``mean(F) W[:, c] + b[c]`` and variance ``W[:, c]^T cov(F) W[:, c]``
        (``cov(F)`` the ``[k, k]`` covariance of the windows, in float64), so
        ``GroupNorm(y) = F (W * s) + (beta - mean(F) W * s)`` with
        ``s = gamma / sqrt(var + eps)`` (the conv bias cancels): one matmul (the
        shift a weight row against a column of ones), no pass over ``y`` for the
        statistics or the normalisation.
        """
        kernel, stride = self.first_window
        frames = self.frame_windows(wav.unsqueeze(-1), kernel, stride)  # [B, N0, k]
        weight, bias, norm = self.first_weight, self.first_bias, self.first_norm
        if not isinstance(norm, nn.GroupNorm):
            y = torch.matmul(frames, weight)
            return norm(y if bias is None else y + bias)
        f64 = frames.double()
        mean_f = f64.mean(dim=1, keepdim=True)  # [B, 1, k]
        centred = f64 - mean_f
        cov = centred.transpose(1, 2) @ centred / frames.shape[1]  # [B, k, k]
        w64 = weight.double()
        var = ((cov @ w64) * w64).sum(dim=1, keepdim=True)  # [B, 1, C]
        scale = torch.rsqrt(var + norm.eps)  # [B, 1, C]
        if norm.affine:
            scale = scale * norm.weight.double()
        shift = -(mean_f @ w64) * scale  # [B, 1, C]; y's mean less the conv bias, which cancels
        if norm.affine:
            shift = shift + norm.bias.double()
        # The shift as a last weight row against a column of ones: one matmul writes y once.
        ones = frames.new_ones(frames.shape[:2] + (1,))
        return torch.matmul(torch.cat([frames, ones], dim=-1), torch.cat([w64 * scale, shift], dim=1).float())

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.first_block(wav).to(self.dtype))  # [B, N0, C]
        last = len(self.windows) - 1
        for i, ((kernel, stride), norm) in enumerate(zip(self.windows, self.norms)):
            y = torch.matmul(self.frame_windows(x, kernel, stride), getattr(self, f"weight{i}"))
            bias = getattr(self, f"bias{i}")
            if bias is None and isinstance(norm, nn.Identity) and i < last:
                x = F.gelu(y)  # in self.dtype: fp32 GELU, rounded
            else:
                x = F.gelu(norm(y.float() if bias is None else y.float() + bias))
                x = x if i == last else x.to(self.dtype)
        return x.float().transpose(1, 2)


class FftConv1d(nn.Module):
    """A :class:`WeightNormConv1d` with its kernel frozen, run as an FFT convolution (overlap-save), for inference.

    ``x [B, C, N]`` fp32 -> fp32 ``[B, C, N + 2 * pad - k + 1]``, the same as
    ``F.conv1d(x, weight, bias, padding=pad, groups=G)`` to fp32 rounding (relative
    error ~4e-7; the bf16 convolution this replaces was ~3e-3). Cross-correlation
    is convolution with the flipped kernel; the padded input is cut into blocks of
    ``n_fft`` samples overlapping by ``k - 1`` (overlap-save: each block yields
    ``n_fft - k + 1`` valid outputs), and per group and frequency the
    ``[C/G, C/G]`` complex kernel spectrum multiplies the blocks' spectra (one
    batched complex matmul). ``n_fft`` is the smallest power of two >= ``2 k``.

    For fairseq HuBERT's positional convolution (768 channels, 16 groups, k = 128)
    that is ~2x fewer seconds than the bf16 convolution on 306 frames and ~5x on
    1,500 frames (2-core AVX-512 CPU), for a cached spectrum of
    ``C * C/G * (n_fft / 2 + 1)`` complex64 values (38 MB). Holds buffers only.
    """

    def __init__(self, conv: WeightNormConv1d) -> None:
        super().__init__()
        with torch.no_grad():
            weight = conv.weight().detach().float()  # [C_out, C_in / G, k]
        c_out, c_group, kernel = weight.shape
        if c_out != c_group * conv.groups:
            raise ValueError(f"FftConv1d needs C_in == C_out, got {c_group * conv.groups} -> {c_out}")
        self.channels, self.groups, self.kernel, self.padding = c_out, conv.groups, kernel, int(conv.padding)
        self.n_fft = 1 << (2 * kernel - 1).bit_length()
        self.hop = self.n_fft - kernel + 1
        spectrum = torch.fft.rfft(weight.flip(-1), n=self.n_fft)  # [C_out, C_in/G, F]
        bins = spectrum.shape[-1]
        spectrum = spectrum.view(self.groups, c_group, c_group, bins).permute(0, 3, 1, 2)  # [G, F, out, in]
        self.register_buffer("spectrum", spectrum.reshape(self.groups * bins, c_group, c_group).contiguous())
        self.register_buffer("bias", conv.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        g, cg, bins = self.groups, self.channels // self.groups, self.n_fft // 2 + 1
        out_len = n + 2 * self.padding - self.kernel + 1
        blocks = -(-out_len // self.hop)
        total = (blocks - 1) * self.hop + self.n_fft
        x = F.pad(x.float(), (self.padding, total - n - self.padding))  # the conv's zero padding, then to whole blocks
        spectra = torch.fft.rfft(x.unfold(-1, self.n_fft, self.hop), n=self.n_fft)  # [B, C, blocks, F]
        spectra = spectra.view(b, g, cg, blocks, bins).permute(1, 4, 2, 0, 3).reshape(g * bins, cg, b * blocks)
        y = torch.bmm(self.spectrum, spectra)  # [G * F, out, B * blocks]
        y = y.view(g, bins, cg, b, blocks).permute(3, 0, 2, 4, 1).reshape(b, c, blocks, bins)
        y = torch.fft.irfft(y, n=self.n_fft)[..., self.kernel - 1 :]  # the valid part of each block
        return y.reshape(b, c, blocks * self.hop)[..., :out_len] + self.bias[:, None]


class FusedQkvAttention(nn.Module):
    """A fairseq self-attention (``[B, N, D] -> [B, N, D]``) with q, k and v in one dynamic-int8 Linear.

    Built from a float attention module with ``q_proj``, ``k_proj``, ``v_proj``,
    ``out_proj`` (``nn.Linear(D, D)``) and ``heads``: the three projections'
    weights and biases are stacked in q, k, v order into ``Linear(D, 3 D)``,
    quantized with one int8 scale per output channel (``per_channel_dynamic_qconfig``:
    the stacked rows keep the scales they would have alone, or finer ones).
    ``out_proj`` is kept as given (the caller quantizes it with the other Linears).
    The attention itself is fairseq's (:func:`attend_heads`).
    """

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.heads = int(attention.heads)
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        dim = attention.q_proj.in_features
        stacked = nn.Linear(dim, 3 * dim)
        with torch.no_grad():
            stacked.weight.copy_(torch.cat([p.weight for p in projections]))
            stacked.bias.copy_(torch.cat([p.bias for p in projections]))
        self.qkv = _quantize_dynamic(nn.Sequential(stacked), {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig})[0]
        self.out_proj = attention.out_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # [B, N, D] each
        return self.out_proj(attend_heads(q, k, v, self.heads))


def fast_matmul_dtype() -> torch.dtype:
    """``torch.bfloat16`` where oneDNN has bf16 CPU kernels (AVX-512 / AMX / Arm bf16), else fp32."""
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def quantize_fairseq_hubert_int8(model: FairseqHubert, *, inplace: bool = False) -> FairseqHubert:
    """The CPU fast form of ``model`` (see the module doc): a copy, or ``model`` itself changed if ``inplace``.

    Transformer layers (attention and feed-forward Linears): dynamic int8, q, k and
    v fused (:class:`FusedQkvAttention`); positional convolution: :class:`FftConv1d`. Conv
    feature extractor: the
    :class:`ChannelsLastConvStack` in bf16 where the CPU has bf16 kernels, else the
    original fp32 convolutions. Same ``extract_features`` shapes; eval mode; CPU only.
    """
    fast = (model if inplace else copy.deepcopy(model)).cpu().eval()
    if fast_matmul_dtype() == torch.bfloat16:
        fast.feature_extractor = ChannelsLastConvStack(fast.feature_extractor, torch.bfloat16)
    fast.encoder.pos_conv[0] = FftConv1d(fast.encoder.pos_conv[0])
    for layer in fast.encoder.layers:
        layer.self_attn = FusedQkvAttention(layer.self_attn)
    # out_proj, fc1, fc2 (the fused qkv is quantized already, no nn.Linear any more)
    _quantize_dynamic(fast.encoder.layers, {nn.Linear})
    return fast.eval()


def _quantize_dynamic(module: nn.Module, spec) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic(module, spec, dtype=torch.qint8, inplace=True)``, quietly."""
    with warnings.catch_warnings():
        # torch.ao.quantization's eager API warns that it is deprecated in favour of
        # torchao; in torch 2.13 it is present and is what runs fbgemm's int8 kernels.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(module, spec, dtype=torch.qint8, inplace=True)
