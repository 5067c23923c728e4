"""The encoder's forward written for tracing: the same weights, no Python branch on the data.

``torch.onnx.export`` cannot take ``Wav2Vec2Model.extract_features`` as it is (the first conv's ``unfold`` on a
dynamic length; ``if`` on ``lengths`` that picks the unpadded fast paths; a Python loop over items for waveform
normalisation). ``TraceableEncoder`` computes the same states with one path for every input:

- every mask comes from ``lengths`` arithmetically (an ``arange`` compared with the lengths, never ``.tolist()``);
- the first conv is a plain ``conv1d`` (the training path's unfold+matmul is its faster, equal twin);
- group norm and waveform normalisation are per-item statistics over the valid samples (masked sums;
  for group norm as mask-by-features matrix products, one pass over the CNN's largest tensor each);
- the positional conv's weight norm is folded into a constant weight;
- attention is written out (matmul, softmax, matmul; what the exporter makes of SDPA anyway).

Branches that remain are on the architecture (a block with zero heads, an absent FFN), fixed at export time.
Only ungated (physically pruned or never gated) models are accepted. The PyTorch training path is untouched.
"""

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dphubert.models import Wav2Vec2Model
from dphubert.models import components as C


class ExportError(ValueError):
    """A model or option that cannot be exported; the message names the file/value and the fix."""


def check_layers(model: Wav2Vec2Model, layers: Optional[Sequence[int]], source: str = "model") -> List[int]:
    """The hidden-state indices to output (all ``num_layers + 1`` by default), validated."""
    count = model.num_layers + 1
    if layers is None or len(layers) == 0:
        return list(range(count))
    bad = [layer for layer in layers if not 0 <= int(layer) < count]
    if bad:
        raise ExportError(f"{source}: unknown layer(s) {bad}; this model has hidden states 0..{count - 1} "
                          f"(0 = transformer input, {count - 1} = last layer); fix --layers")
    return [int(layer) for layer in layers]


def check_ungated(model: Wav2Vec2Model, source: str = "model") -> None:
    if model.gates():
        raise ExportError(f"{source}: the model still has pruning gates (a Step-1 checkpoint); prune it first: "
                          f"python -m dphubert.bin.prune --ckpt {source} --out pruned.pt")


class TraceableEncoder(nn.Module):
    """``forward(waveforms (B, S) float32, lengths (B,) int64) -> (states (len(layers), B, T, D), frames (B,))``.

    Equal (up to float rounding) to ``model.extract_features(waveforms, lengths)`` stacked at ``layers``;
    transformer layers past the deepest requested state are not computed.
    """

    def __init__(self, model: Wav2Vec2Model, layers: Optional[Sequence[int]] = None, source: str = "model"):
        super().__init__()
        check_ungated(model, source)
        self.model = model
        self.layers = check_layers(model, layers, source)
        self.depth = max(self.layers)
        pos_conv = model.encoder.transformer.pos_conv_embed.conv
        with torch.no_grad():
            self.register_buffer("pos_conv_weight", pos_conv.weight().detach().clone(), persistent=False)
        # Eval mode for the wrapper too: torch.onnx.export restores the mode it found, recursively, so a
        # wrapper left in training mode would switch the wrapped model's dropout on after the export.
        self.eval()

    # ----- pieces ---------------------------------------------------------------------------------------
    @staticmethod
    def _valid(lengths: Tensor, size: Tensor, dtype: torch.dtype) -> Tensor:
        """``(B, size)`` 1.0 on valid positions, 0.0 on padding."""
        positions = torch.arange(size, device=lengths.device)
        return (positions[None, :] < lengths[:, None]).to(dtype)

    def _normalize_waveforms(self, x: Tensor, lengths: Tensor) -> Tensor:
        valid = self._valid(lengths, x.shape[1], x.dtype)
        count = lengths.clamp(min=1).to(x.dtype)[:, None]
        mean = (x * valid).sum(1, keepdim=True) / count
        var = ((x - mean).square() * valid).sum(1, keepdim=True) / count
        return (x - mean) * torch.rsqrt(var + 1e-5) * valid

    def _conv_block(self, block: C.ConvLayerBlock, x: Tensor, lengths: Tensor):
        x = F.conv1d(x, block.conv.weight, block.conv.bias, stride=block.stride)
        lengths = torch.div(lengths - block.kernel_size, block.stride, rounding_mode="floor").add(1).clamp(min=0)
        norm = block.layer_norm
        if block.norm == "group":  # one group per channel: statistics over each item's valid frames
            # Masked means over time as (B, C, T) @ (B, T, 1) products: one pass each, no masked copy of x.
            count = lengths.clamp(min=1).to(x.dtype)[:, None, None]
            weights = self._valid(lengths, x.shape[2], x.dtype).unsqueeze(-1) / count
            centered = x - torch.matmul(x, weights)
            scale = torch.rsqrt(torch.matmul(centered.square(), weights) + norm.eps) * norm.weight[None, :, None]
            x = centered * scale + norm.bias[None, :, None]
        elif block.norm == "layer":
            x = norm(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(x), lengths

    @staticmethod
    def _attention(attn: C.SelfAttention, x: Tensor, bias: Tensor) -> Tensor:
        """``bias``: additive ``(B or 1, heads or 1, T, T)`` logits bias (padding, WavLM positions)."""
        if attn.num_heads == 0:
            return attn.out_proj.bias.expand_as(x)
        heads, head_dim = attn.num_heads, attn.head_dim
        q = attn.q_proj(x).reshape(x.shape[0], -1, heads, head_dim).transpose(1, 2)
        k = attn.k_proj(x).reshape(x.shape[0], -1, heads, head_dim).transpose(1, 2)
        v = attn.v_proj(x).reshape(x.shape[0], -1, heads, head_dim).transpose(1, 2)
        logits = torch.matmul(q * (1.0 / math.sqrt(head_dim)), k.transpose(2, 3)) + bias
        out = torch.matmul(torch.softmax(logits, dim=-1), v)
        return attn.out_proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], heads * head_dim))

    @staticmethod
    def _wavlm_bias(attn: C.WavLMSelfAttention, x: Tensor, position_bias: Tensor, padding_bias: Tensor) -> Tensor:
        heads = attn.remaining_heads
        per_head = x.reshape(x.shape[0], x.shape[1], attn.total_num_heads, attn.head_dim)[:, :, heads]
        per_head = per_head.transpose(1, 2)
        gate = attn.gru_rel_pos_linear(per_head)
        gate = torch.sigmoid(gate.reshape(x.shape[0], len(heads), x.shape[1], 2, 4).sum(-1))
        gate_a, gate_b = gate[..., :1], gate[..., 1:]
        gate = gate_a * (gate_b * attn.gru_rel_pos_const[:, heads] - 1.0) + 2.0
        return gate * position_bias[heads][None] + padding_bias

    def _feed_forward(self, ffn: C.FeedForward, x: Tensor) -> Tensor:
        if ffn.intermediate_dense.out_features == 0:
            return ffn.output_dense.bias.expand_as(x)
        return ffn.output_dense(F.gelu(ffn.intermediate_dense(x)))

    def _layer(self, layer: C.EncoderLayer, x: Tensor, padding_bias: Tensor, position_bias: Optional[Tensor]):
        attn = layer.attention

        def attend(h: Tensor) -> Tensor:
            bias = padding_bias
            if isinstance(attn, C.WavLMSelfAttention) and attn.num_heads > 0:
                bias = self._wavlm_bias(attn, h, position_bias, padding_bias)
            return self._attention(attn, h, bias)

        if layer.layer_norm_first:
            if attn is not None:
                x = x + attend(layer.layer_norm(x))
            if layer.feed_forward is not None:
                x = x + self._feed_forward(layer.feed_forward, layer.final_layer_norm(x))
            return x
        if attn is not None:
            x = x + attend(x)
        x = layer.layer_norm(x)
        if layer.feed_forward is not None:
            x = x + self._feed_forward(layer.feed_forward, x)
        return layer.final_layer_norm(x)

    # ----- forward --------------------------------------------------------------------------------------
    def forward(self, waveforms: Tensor, lengths: Tensor):
        model = self.model
        if model.normalize_waveform:
            waveforms = self._normalize_waveforms(waveforms, lengths)
        x = waveforms.unsqueeze(1)
        frames = lengths
        for block in model.feature_extractor.conv_layers:
            x, frames = self._conv_block(block, x, frames)
        x = model.encoder.feature_projection(x.transpose(1, 2))

        transformer = model.encoder.transformer
        valid = self._valid(frames, x.shape[1], x.dtype)
        x = x * valid[..., None]
        # -inf on padded keys, as the training path; every item has >= 1 valid frame, so no row is all -inf.
        padding_bias = torch.where(valid > 0, 0.0, float("-inf")).to(x.dtype)[:, None, None, :]
        pos = transformer.pos_conv_embed
        conv = pos.conv
        y = F.conv1d(x.transpose(1, 2), self.pos_conv_weight, conv.bias, padding=conv.padding, groups=conv.groups)
        if pos.num_remove:
            y = y[..., : -pos.num_remove]
        x = x + F.gelu(y).transpose(1, 2)
        if not transformer.layer_norm_first:
            x = transformer.layer_norm(x)
        states = [x]
        position_bias = None
        for layer in transformer.layers[: self.depth]:
            attn = layer.attention
            if isinstance(attn, C.WavLMSelfAttention) and attn.rel_attn_embed is not None:
                position_bias = attn.compute_position_bias(x.shape[1])
            x = self._layer(layer, x, padding_bias, position_bias)
            states.append(x)
        if transformer.layer_norm_first and self.depth == model.num_layers:
            states[-1] = transformer.layer_norm(x)
        return torch.stack([states[i] for i in self.layers]), frames
