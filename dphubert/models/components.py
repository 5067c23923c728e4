"""Building blocks of the prunable wav2vec 2.0 / HuBERT / WavLM encoder.

Module and parameter names follow torchaudio's ``models.wav2vec2`` (and the released DPHuBERT files), so those
state dicts load as they are. Every prunable structure may carry a HardConcrete gate:

- ``ConvLayerBlock.hard_concrete``: output channels of a CNN layer (after conv -> norm -> GELU);
- ``SelfAttention.hard_concrete_for_heads`` / ``hard_concrete_for_layer``: heads (before ``out_proj``) / block;
- ``FeedForward.hard_concrete_for_intermediate`` / ``hard_concrete_for_layer``: FFN units / block.

A physically pruned model may have any number of heads or FFN units per layer, including zero (then only the
output projection's bias remains, which keeps pruning exact), and absent blocks (``None``).
"""

import math
import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gates import HardConcrete


def lengths_to_padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``True`` at padded positions, shape ``(batch, max_len)``."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def conv_output_lengths(lengths: Tensor, kernel: int, stride: int) -> Tensor:
    """Frames a conv (or a chain of convs: ``kernel`` its receptive field, ``stride`` its strides' product) gives
    ``lengths`` samples: floor((L - kernel) / stride) + 1, at least 0. Written as a truncating division of a
    dividend clamped at 0 (a floor there), which the ONNX exporter writes as three nodes instead of ten."""
    return torch.div((lengths + (stride - kernel)).clamp(min=0), stride, rounding_mode="trunc")


def _linear(in_features: int, out_features: int) -> nn.Linear:
    """``nn.Linear`` that also allows a zero-size side (a pruned block keeping only its bias) without a warning."""
    if in_features and out_features:
        return nn.Linear(in_features, out_features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return nn.Linear(in_features, out_features)


class ConvLayerBlock(nn.Module):
    """conv -> norm -> GELU (-> channel gate) with optional per-item lengths.

    ``norm`` is ``"group"`` (one group per channel, i.e. instance norm over time; computed over each item's own
    valid frames so a padded batch gives the same result as items alone), ``"layer"`` (LayerNorm over channels)
    or ``None``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool,
                 norm: Optional[str], prune_channels: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.norm = norm
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, bias=bias)
        if norm == "group":
            self.layer_norm = nn.GroupNorm(out_channels, out_channels, affine=True)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(out_channels, elementwise_affine=True)
        else:
            self.layer_norm = None
        self.hard_concrete = HardConcrete(out_channels, init_mean=0.01) if prune_channels else None

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return conv_output_lengths(lengths, self.kernel_size, self.stride)

    def _conv(self, x: Tensor) -> Tensor:
        if self.conv.in_channels == 1:
            # On a 1-channel waveform the strided conv is one batched matmul over unfolded frames, exact. Weight
            # first, it writes (batch, channels, frames) directly: 2x faster than conv1d on CPU, 6x faster than
            # frames-first with a transposing copy (that copy cost 5x the matmul). bmm, not matmul: matmul folds
            # a weight that requires grad into that same transposed layout, even under no_grad.
            frames = x.squeeze(1).unfold(1, self.kernel_size, self.stride).transpose(1, 2)
            weight = self.conv.weight.view(1, self.conv.out_channels, self.kernel_size)
            out = torch.bmm(weight.expand(x.size(0), -1, -1), frames)
            return out if self.conv.bias is None else out + self.conv.bias[:, None]
        return self.conv(x)

    def forward(self, x: Tensor, lengths: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        x = self._conv(x)
        if lengths is not None:
            lengths = self.output_lengths(lengths)
        if self.norm == "group":
            x = self._group_norm(x, lengths)
        elif self.norm == "layer":
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        x = F.gelu(x)
        if self.hard_concrete is not None:
            x = x * self.hard_concrete()[None, :, None]
        return x, lengths

    def _group_norm(self, x: Tensor, lengths: Optional[Tensor]) -> Tensor:
        norm = self.layer_norm

        def normed(item: Tensor) -> Tensor:
            return F.group_norm(item, norm.num_groups, norm.weight, norm.bias, norm.eps)

        frames = x.size(-1)
        valid = None if lengths is None else lengths.tolist()  # the one host sync
        if valid is None or all(n == frames for n in valid):
            return normed(x)
        # Statistics over each item's valid frames only (HF and fairseq include the padding here): the fused kernel
        # on each item's valid frames (3-6x faster on CPU than masked sums over the batch), zeros in the padding,
        # which no later layer reads for a valid frame.
        if not torch.is_grad_enabled():  # written in place: one copy less
            out = x.new_zeros(x.shape)
            for i, n in enumerate(valid):
                if n > 0:
                    out[i:i + 1, :, :n] = normed(x[i:i + 1, :, :n])
            return out
        # With gradients, slice assignments would clone the whole gradient once per item: padded items, one cat.
        items = [normed(x[i:i + 1, :, :n]) if n > 0 else x[i:i + 1, :, :0] for i, n in enumerate(valid)]
        return torch.cat([F.pad(item, (0, frames - item.size(-1))) for item in items])


class FeatureExtractor(nn.Module):
    """The CNN front-end: waveform ``(batch, samples)`` -> features ``(batch, frames, channels)``."""

    def __init__(self, conv_layers: List[ConvLayerBlock]):
        super().__init__()
        self.conv_layers = nn.ModuleList(conv_layers)

    def forward(self, waveforms: Tensor, lengths: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        x = waveforms.unsqueeze(1)
        for layer in self.conv_layers:
            x, lengths = layer(x, lengths)
        return x.transpose(1, 2), lengths


def scale_gradient(x: Tensor, factor: float) -> Tensor:
    """``x`` in the forward, its gradient multiplied by ``factor`` in the backward (fairseq's GradMultiply)."""
    if factor == 1.0:
        return x
    return x * factor + x.detach() * (1.0 - factor)


class FeatureProjection(nn.Module):
    """LayerNorm + Linear from CNN channels to the transformer width (``layer_norm=False``: the Linear alone, as in
    s3prl's DistilHuBERT).

    ``input_scale`` (a buffer, only in physically pruned models) holds the soft gate values of the last CNN
    layer's kept channels: the gate sat before this LayerNorm, so it cannot be folded into a weight.
    """

    def __init__(self, in_features: int, out_features: int, dropout: float, input_scale: bool = False,
                 layer_norm: bool = True):
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_features) if layer_norm else nn.Identity()
        self.projection = nn.Linear(in_features, out_features)
        self.dropout = nn.Dropout(dropout)
        if input_scale:
            self.register_buffer("input_scale", torch.ones(in_features))
        else:
            self.input_scale = None

    def forward(self, x: Tensor) -> Tensor:
        if self.input_scale is not None:
            x = x * self.input_scale
        return self.dropout(self.projection(self.layer_norm(x)))


class WeightNormConv1d(nn.Module):
    """Conv1d with weight normalisation over all dims but the kernel axis (``weight_norm(dim=2)``).

    Stores ``weight_g`` / ``weight_v`` as fairseq, torchaudio and the released DPHuBERT files do.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int):
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        weight = torch.empty(channels, channels // groups, kernel_size)
        nn.init.normal_(weight, mean=0.0, std=math.sqrt(4.0 / (kernel_size * channels)))
        self.weight_v = nn.Parameter(weight)
        self.weight_g = nn.Parameter(weight.norm(dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(channels))

    def weight(self) -> Tensor:
        # g * v / ||v|| with the norm over dims (0, 1); torch's fused kernel, as torch's own weight_norm uses.
        return torch._weight_norm(self.weight_v, self.weight_g, 2)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and (x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")):
            # oneDNN's bf16 grouped conv1d is wrong on AVX512-BF16 CPUs at some group widths (torch 2.14.1: 4, 6, 8
            # or 12 channels per group off by up to 130%; 3, 15, 16, 24, 48 right), so on CPU it runs in float32.
            with torch.autocast("cpu", enabled=False):
                out = F.conv1d(x.float(), self.weight().float(), self.bias.float(), padding=self.padding,
                               groups=self.groups)
            return out.to(x.dtype)
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


class ConvolutionalPositionalEmbedding(nn.Module):
    """Grouped, weight-normalised convolution over time whose output is added to the input."""

    def __init__(self, embed_dim: int, kernel_size: int, groups: int):
        super().__init__()
        self.conv = WeightNormConv1d(embed_dim, kernel_size, groups)
        # An even kernel with padding k // 2 yields one extra frame, which is dropped.
        self.num_remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x.transpose(1, 2))
        if self.num_remove:
            x = x[..., : -self.num_remove]
        return F.gelu(x).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``num_heads`` heads of ``head_dim`` each (``num_heads`` may be 0)."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0,
                 prune_heads: bool = False, prune_layer: bool = False):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        inner = num_heads * head_dim
        self.k_proj = _linear(embed_dim, inner)
        self.v_proj = _linear(embed_dim, inner)
        self.q_proj = _linear(embed_dim, inner)
        self.out_proj = _linear(inner, embed_dim)
        self.hard_concrete_for_heads = HardConcrete(num_heads, init_mean=0.01) if prune_heads else None
        self.hard_concrete_for_layer = HardConcrete(1, init_mean=0.01) if prune_layer else None

    def _attend(self, x: Tensor, attn_mask: Optional[Tensor]) -> Tensor:
        batch, frames, _ = x.shape
        if self.num_heads == 0:
            return self.out_proj.bias.expand(batch, frames, self.embed_dim)
        shape = (batch, frames, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        if self.hard_concrete_for_heads is not None:
            out = out * self.hard_concrete_for_heads()[None, :, None, None]
        return self.out_proj(out.transpose(1, 2).reshape(batch, frames, -1))

    def _gate_layer(self, out: Tensor) -> Tensor:
        if self.hard_concrete_for_layer is not None:
            out = out * self.hard_concrete_for_layer()
        return out

    def forward(self, x: Tensor, padding_bias: Optional[Tensor] = None,
                position_bias: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """``padding_bias``: additive ``(batch, 1, 1, frames)`` with ``-inf`` on padded keys, or ``None``."""
        return self._gate_layer(self._attend(x, padding_bias)), position_bias


class WavLMSelfAttention(SelfAttention):
    """WavLM attention: a gated relative-position bias added to the attention logits.

    The bucketed bias is computed once, for all original heads, by the layer owning ``rel_attn_embed`` (layer
    0) and passed on; each layer gates it with its own input and keeps the rows of its ``remaining_heads``.
    ``head_dim = embed_dim / total_num_heads`` as the gate splits the layer input into the original heads.
    """

    def __init__(self, embed_dim: int, total_num_heads: int, remaining_heads: List[int], dropout: float = 0.0,
                 has_relative_attention_bias: bool = False, num_buckets: int = 320, max_distance: int = 800,
                 prune_heads: bool = False, prune_layer: bool = False):
        super().__init__(embed_dim, len(remaining_heads), embed_dim // total_num_heads, dropout,
                         prune_heads, prune_layer)
        self.total_num_heads = total_num_heads
        self.remaining_heads = list(remaining_heads)
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.rel_attn_embed = nn.Embedding(num_buckets, total_num_heads) if has_relative_attention_bias else None
        self.gru_rel_pos_linear = nn.Linear(self.head_dim, 8)
        self.gru_rel_pos_const = nn.Parameter(torch.ones(1, total_num_heads, 1, 1))

    def _bucket(self, relative: Tensor) -> Tensor:
        half = self.num_buckets // 2
        buckets = (relative > 0).long() * half
        distance = relative.abs()
        exact = half // 2
        log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(self.max_distance / exact)
        far = (exact + (log_ratio * (half - exact)).long()).clamp(max=half - 1)
        return buckets + torch.where(distance < exact, distance, far)

    def compute_position_bias(self, frames: int) -> Tensor:
        """``(total_num_heads, frames, frames)`` bias for key position minus query position."""
        positions = torch.arange(frames, device=self.rel_attn_embed.weight.device)
        relative = positions[None, :] - positions[:, None]
        return self.rel_attn_embed(self._bucket(relative)).permute(2, 0, 1)

    def forward(self, x: Tensor, padding_bias: Optional[Tensor] = None,
                position_bias: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        batch, frames, _ = x.shape
        if self.rel_attn_embed is not None and position_bias is None:
            position_bias = self.compute_position_bias(frames)
        attn_mask = padding_bias
        if position_bias is not None and self.num_heads > 0:
            heads = self.remaining_heads
            per_head = x.view(batch, frames, self.total_num_heads, self.head_dim)[:, :, heads].transpose(1, 2)
            gate = torch.sigmoid(self.gru_rel_pos_linear(per_head).view(batch, len(heads), frames, 2, 4).sum(-1))
            gate_a, gate_b = gate[..., :1], gate[..., 1:]
            gate = gate_a * (gate_b * self.gru_rel_pos_const[:, heads] - 1.0) + 2.0
            attn_mask = gate * position_bias[heads][None]
            if padding_bias is not None:
                attn_mask = attn_mask + padding_bias
        return self._gate_layer(self._attend(x, attn_mask)), position_bias


class FeedForward(nn.Module):
    """Linear -> GELU (-> unit gate) -> Linear (-> block gate); ``intermediate_features`` may be 0."""

    def __init__(self, io_features: int, intermediate_features: int, intermediate_dropout: float,
                 output_dropout: float, prune_intermediate: bool = False, prune_layer: bool = False):
        super().__init__()
        self.intermediate_dense = _linear(io_features, intermediate_features)
        self.intermediate_dropout = nn.Dropout(intermediate_dropout)
        self.output_dense = _linear(intermediate_features, io_features)
        self.output_dropout = nn.Dropout(output_dropout)
        self.hard_concrete_for_intermediate = (
            HardConcrete(intermediate_features, init_mean=0.5) if prune_intermediate else None)
        self.hard_concrete_for_layer = HardConcrete(1, init_mean=0.01) if prune_layer else None

    def forward(self, x: Tensor) -> Tensor:
        if self.intermediate_dense.out_features == 0:
            x = self.output_dense.bias.expand(x.shape)
        else:
            x = self.intermediate_dropout(F.gelu(self.intermediate_dense(x)))
            if self.hard_concrete_for_intermediate is not None:
                x = x * self.hard_concrete_for_intermediate()
            x = self.output_dropout(self.output_dense(x))
        if self.hard_concrete_for_layer is not None:
            x = x * self.hard_concrete_for_layer()
        return x


class EncoderLayer(nn.Module):
    """Attention and FFN sub-blocks with residuals; post-LN (Base) or pre-LN (Large, ``layer_norm_first``)."""

    def __init__(self, attention: Optional[SelfAttention], feed_forward: Optional[FeedForward], embed_dim: int,
                 dropout: float, layer_norm_first: bool):
        super().__init__()
        self.attention = attention
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(embed_dim)
        self.layer_norm_first = layer_norm_first
        self.feed_forward = feed_forward
        self.final_layer_norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor, padding_bias: Optional[Tensor],
                position_bias: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        if self.layer_norm_first:
            if self.attention is not None:
                out, position_bias = self.attention(self.layer_norm(x), padding_bias, position_bias)
                x = x + self.dropout(out)
            if self.feed_forward is not None:
                x = x + self.feed_forward(self.final_layer_norm(x))
            return x, position_bias
        if self.attention is not None:
            out, position_bias = self.attention(x, padding_bias, position_bias)
            x = x + self.dropout(out)
        x = self.layer_norm(x)
        if self.feed_forward is not None:
            x = x + self.feed_forward(x)
        return self.final_layer_norm(x), position_bias


class Transformer(nn.Module):
    def __init__(self, pos_conv_embed: ConvolutionalPositionalEmbedding, embed_dim: int, dropout: float,
                 layers: List[EncoderLayer], layer_norm_first: bool, layer_drop: float):
        super().__init__()
        self.pos_conv_embed = pos_conv_embed
        self.layer_norm = nn.LayerNorm(embed_dim)
        self.layer_norm_first = layer_norm_first
        self.layer_drop = layer_drop
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, padding_mask: Optional[Tensor]) -> List[Tensor]:
        """Returns ``len(layers) + 1`` hidden states (see ``Wav2Vec2Model.extract_features``)."""
        padding_bias = None
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
            padding_bias = torch.zeros(padding_mask.shape, dtype=x.dtype, device=x.device)
            padding_bias = padding_bias.masked_fill(padding_mask, float("-inf"))[:, None, None, :]
        x = x + self.pos_conv_embed(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        states = [x]
        position_bias = None
        for layer in self.layers:
            if self.training and self.layer_drop > 0 and torch.rand(()).item() < self.layer_drop:
                states.append(x)
                continue
            x, position_bias = layer(x, padding_bias, position_bias)
            states.append(x)
        if self.layer_norm_first:
            states[-1] = self.layer_norm(x)
        return states


class Encoder(nn.Module):
    def __init__(self, feature_projection: FeatureProjection, transformer: Transformer):
        super().__init__()
        self.feature_projection = feature_projection
        self.transformer = transformer
