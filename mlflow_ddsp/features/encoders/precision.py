"""Numeric precision of a content encoder at inference: fp32, or dynamic int8 on the CPU.

``encoder_precision`` takes one of :data:`ENCODER_PRECISIONS`:

- ``fp32``: the network as loaded (the reference; what preprocessing always uses,
  so that training features are exact).
- ``int8``: dynamic int8 quantization (``torch.ao.quantization.quantize_dynamic``,
  PyTorch's "dynamic quantization" recipe: weights int8 per tensor ahead of time,
  activations quantized per call with one scale per tensor, int32 accumulation
  in fbgemm's VNNI kernels, fp32 in and out) of the attention and feed-forward
  Linears of every transformer layer of a fairseq HuBERT / ContentVec: ~95% of
  the transformer's multiply-adds. The conv feature extractor after its first
  block is rewritten exactly as ``unfold + matmul`` on channels-last frames (a
  ``Conv1d`` with kernel ``k`` and stride ``s`` over ``[B, C, T]`` is a matmul of
  the ``[B, N, C * k]`` windows with the ``[C * k, C_out]`` weight), run in bf16
  where the CPU has bf16 kernels (AVX-512; fp32 convolutions otherwise). Not
  int8 there: with one activation scale per tensor, the quiet frames of a clip
  with loud singing lose most of their resolution (mean units cosine 0.95 on
  singing with pauses, measured). ``post_extract_proj`` stays fp32 for the
  same reason (0.986 when quantized), and so do ``final_proj``, the first conv
  block, the positional convolution, LayerNorms, softmax and GELUs. CPU only.
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
from mlflow_ddsp.features.encoders.fairseq_hubert import FairseqHubert

__all__ = [
    "ENCODER_PRECISIONS",
    "check_encoder_precision",
    "resolve_encoder_precision",
    "ChannelsLastConvStack",
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
    """A fairseq conv feature extractor run as ``unfold + matmul`` after its first block.

    Built from a loaded ``_ConvFeatureExtractor`` (``wav [B, T] -> [B, C, N]``), same
    output: block 0 runs as before (``Conv1d(1 -> C, 10, 5)`` + GroupNorm/LayerNorm +
    GELU), then each further ``Conv1d(C -> C_out, k, s)`` becomes a matmul of the
    ``x.unfold(1, k, s)`` windows ``[B, N, C * k]`` of channels-last ``[B, N, C]``
    frames with the weight ``[C_out, C, k]`` reshaped to ``[C_out, C * k]`` (the
    windows' ``(C, k)`` order), then its LayerNorm (``layer_norm`` extractor mode)
    and GELU, in fp32. ``dtype`` is the matmuls' dtype: ``torch.bfloat16`` halves
    their cost on CPUs with AVX-512 (oneDNN bf16 kernels), with fp32 accumulation
    and relative rounding (no scale to saturate, unlike int8, so quiet frames keep
    their accuracy next to loud ones). The result is a ``[B, C, N]`` view of
    channels-last memory, so the caller's ``transpose(1, 2)`` is free.
    """

    def __init__(self, extractor: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        blocks = list(extractor.conv_layers)
        self.first = copy.deepcopy(blocks[0])
        self.dtype = dtype
        self.windows: list[tuple[int, int]] = []
        norms = []
        for i, block in enumerate(blocks[1:]):
            conv = block[0]
            weight = conv.weight.detach()
            # Buffers, not nn.Linear: dynamic quantization of the model must leave these alone.
            self.register_buffer(f"weight{i}", weight.reshape(weight.shape[0], -1).t().to(dtype).contiguous())
            bias = conv.bias.detach().clone() if conv.bias is not None else None
            self.register_buffer(f"bias{i}", bias)
            # fairseq's "layer_norm" mode: Sequential(TransposeLast, LayerNorm, TransposeLast) at index 2.
            norm = block[2][1] if len(block) == 4 and isinstance(block[2], nn.Sequential) else None
            norms.append(copy.deepcopy(norm) if norm is not None else nn.Identity())
            self.windows.append((int(conv.kernel_size[0]), int(conv.stride[0])))
        self.norms = nn.ModuleList(norms)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = self.first(wav.unsqueeze(1)).transpose(1, 2)  # [B, N0, C]
        for i, ((kernel, stride), norm) in enumerate(zip(self.windows, self.norms)):
            frames = x.to(self.dtype).unfold(1, kernel, stride)  # [B, N, C, k]
            y = torch.matmul(frames.reshape(frames.shape[0], frames.shape[1], -1), getattr(self, f"weight{i}")).float()
            bias = getattr(self, f"bias{i}")
            x = F.gelu(norm(y if bias is None else y + bias))
        return x.transpose(1, 2)


def fast_matmul_dtype() -> torch.dtype:
    """``torch.bfloat16`` where oneDNN has bf16 CPU kernels (AVX-512 / AMX / Arm bf16), else fp32."""
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def quantize_fairseq_hubert_int8(model: FairseqHubert, *, inplace: bool = False) -> FairseqHubert:
    """The CPU fast form of ``model`` (see the module doc): a copy, or ``model`` itself changed if ``inplace``.

    Transformer layers (attention and feed-forward Linears): dynamic int8. Conv
    feature extractor: the
    :class:`ChannelsLastConvStack` in bf16 where the CPU has bf16 kernels, else the
    original fp32 convolutions. Same ``extract_features`` shapes; eval mode; CPU only.
    """
    fast = (model if inplace else copy.deepcopy(model)).cpu().eval()
    if fast_matmul_dtype() == torch.bfloat16:
        fast.feature_extractor = ChannelsLastConvStack(fast.feature_extractor, torch.bfloat16)
    with warnings.catch_warnings():
        # torch.ao.quantization's eager API warns that it is deprecated in favour of
        # torchao; in torch 2.13 it is present and is what runs fbgemm's int8 kernels.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.ao.quantization.quantize_dynamic(fast.encoder.layers, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return fast.eval()
