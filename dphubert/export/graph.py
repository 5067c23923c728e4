"""The encoder's forward written for tracing: the same weights, no Python branch on the data.

``torch.onnx.export`` cannot take ``Wav2Vec2Model.extract_features`` as it is (the first conv's ``unfold`` on a
dynamic length; ``if`` on ``lengths`` that picks the unpadded fast paths; a Python loop over items for waveform
normalisation). ``TraceableEncoder`` computes the same states with one path for every input:

- every mask comes from ``lengths`` arithmetically (an ``arange`` compared with the lengths, never ``.tolist()``;
  an int8 conv's output mask is a strided slice of its input's), and reshapes take constant targets
  (``onnx_shapes``: no shape arithmetic per reshape);
- the first conv and its group norm are one matrix product over the conv's input windows, frames-major
  (``_first_block_group_norm``: the norm's statistics follow from the windows' mean and covariance, so no pass
  over the CNN's largest tensor is spent on them); with ``int8_cnn_convs`` (the int8 file) that many convs after
  it are int8 matrix products (``quantized_conv``, one activation scale per chunk of frames; the waveform is
  zero-padded so that the frames fill whole chunks), frames-major; the others are plain ``conv1d``;
- waveform normalisation is per-item statistics over the valid samples (masked sums);
- the positional conv's weight norm is folded into a constant weight, and the conv runs as block DFTs written as
  matrix products (``block_dft_conv``: 3x faster than onnxruntime's grouped ``Conv``);
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

from .block_dft_conv import BlockDFTConv
from .onnx_shapes import reshape
from .quantized_conv import INT8_ROWS_PER_SCALE, QuantizedConv


def im2col_columns(x: Tensor, kernel: int, stride: int, channels: int) -> List[Tensor]:
    """``(B, T, C)`` -> the pieces of ``im2col`` (``(B, T', n * C)`` each), to concatenate with more columns.
    ``channels``: C, a constant (not the traced size).

    With ``kernel = q * stride + r``, output frame t reads stride-long chunks t .. t + q - 1 (one reshape of the
    input gives every chunk) and, for r > 0, r more frames (strided slices).
    """
    q, r = divmod(kernel, stride)
    count = x[:, kernel - 1:: stride].shape[1]  # the last tap's strided slice has exactly the output frames
    chunks = reshape(x[:, : (count + q - 1) * stride], 0, -1, stride * channels)
    columns = [chunks] if q == 1 else [chunks[:, i: i + count] for i in range(q)]  # (each slice is a copy in ONNX)
    return columns + [x[:, q * stride + j: q * stride + j + (count - 1) * stride + 1: stride] for j in range(r)]


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

    def __init__(self, model: Wav2Vec2Model, layers: Optional[Sequence[int]] = None, source: str = "model",
                 int8_cnn_convs: int = 0):
        super().__init__()
        check_ungated(model, source)
        self.model = model
        self.layers = check_layers(model, layers, source)
        self.depth = max(self.layers)
        pos_conv = model.encoder.transformer.pos_conv_embed.conv
        with torch.no_grad():
            self.pos_conv = BlockDFTConv(pos_conv.weight(), pos_conv.bias, pos_conv.groups)
        blocks = model.feature_extractor.conv_layers
        if blocks[0].norm == "group":  # the first conv's weight as a (kernel, channels) matrix
            self.register_buffer("first_conv_matrix", blocks[0].conv.weight.detach()[:, 0].t().clone())
        if not 0 <= int8_cnn_convs < len(blocks):
            raise ExportError(f"--int8-cnn-convs {int8_cnn_convs}: this CNN has {len(blocks) - 1} convs after the "
                              f"first; choose 0..{len(blocks) - 1}")
        odd = [(i, b.kernel_size, b.stride) for i, b in enumerate(blocks[1: 1 + int8_cnn_convs], 1)
               if not QuantizedConv.supports(b.kernel_size, b.stride)]
        if odd:
            raise ExportError(f"--int8-cnn-convs {int8_cnn_convs}: CNN conv {odd[0][0]} (kernel {odd[0][1]}, stride "
                              f"{odd[0][2]}) has no int8 form (it needs stride <= kernel <= 2 * stride); choose "
                              f"--int8-cnn-convs {odd[0][0] - 1} or fewer")
        self.quantized_convs = nn.ModuleList([QuantizedConv(b.conv, INT8_ROWS_PER_SCALE)
                                              for b in blocks[1: 1 + int8_cnn_convs]])
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

    @staticmethod
    def _conv_block(block: C.ConvLayerBlock, x: Tensor, lengths: Tensor):
        """A block without group norm, channels-major (the group-norm block is ``_first_block_group_norm``)."""
        x = F.conv1d(x, block.conv.weight, block.conv.bias, stride=block.stride)
        if block.norm == "layer":
            x = block.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(x), block.output_lengths(lengths)

    def _first_block_group_norm(self, block: C.ConvLayerBlock, waveforms: Tensor, lengths: Tensor,
                                channels_first: bool):
        """The first conv (one input channel) with its per-item group norm and GELU: ``(B, S) -> (B, T, C)``, or
        ``(B, C, T)`` with ``channels_first`` (for the fp32 convs after it: a transpose of the output costs more
        than the norm saved).

        For an item's windows w_t (kernel samples each; mean m and covariance S over its valid frames) the conv
        output is w_t W + b, so its per-channel mean is m W + b and its variance diag(W^T S W): the normalised
        output is w_t A + c with A = W * gamma / sigma and c = beta - m A (the conv bias cancels), one batched
        product [w_t, 1] [A; c] over windows given a column of ones. Folding c into the product saves a pass over
        the CNN's largest tensor (onnxruntime's fused bias + GELU ran at half the speed of its GELU alone). The
        ones column also gives m: the windows' weighted Gram matrix sum_t v_t [w_t, 1]^T [w_t, 1] (v: 1/frames on
        valid frames, 0 on padding) holds m in its last row and the second moments, S = E[w w^T] - m^T m, in the
        rest. That subtraction cancels digits when m is large against the signal (a DC offset of 0.5 under a
        signal of 0.01: 5e-3 off), so the waveform is first shifted by its mean over the valid samples, which
        changes nothing else (a constant shift of the input shifts each channel of the conv by a constant, and
        the norm takes it out). Only (B, T, kernel + 1)-sized tensors are touched before the product writes
        the output.
        """
        kernel = block.kernel_size
        valid_samples = self._valid(lengths, waveforms.shape[1], waveforms.dtype)
        offset = (waveforms * valid_samples).sum(1, keepdim=True) / lengths.clamp(min=1).to(waveforms.dtype)[:, None]
        columns = im2col_columns((waveforms - offset).unsqueeze(2), kernel, block.stride, 1)
        windows = torch.cat(columns + [torch.ones_like(columns[0][..., :1])], dim=2)  # (B, T, kernel + 1)
        lengths = block.output_lengths(lengths)
        count = lengths.clamp(min=1).to(windows.dtype)[:, None, None]
        weights = self._valid(lengths, windows.shape[1], windows.dtype).unsqueeze(1) / count  # (B, 1, T)
        windows_t = windows.transpose(1, 2)  # (B, kernel + 1, T): the weights broadcast along its rows
        gram = torch.matmul(windows_t * weights, windows)  # (B, kernel + 1, kernel + 1)
        mean = gram[:, kernel:, :kernel]  # (B, 1, kernel)
        covariance = gram[:, :kernel, :kernel] - mean.transpose(1, 2) * mean
        matrix = self.first_conv_matrix  # (kernel, C)
        # Weight first: a MatMul whose second input is a constant is what the int8 pass quantises, and int8
        # variances are wrong (negative ones even: NaN after rsqrt).
        variance = (torch.matmul(matrix.t(), covariance) * matrix.t()).sum(2).unsqueeze(1)  # (B, 1, C)
        norm = block.layer_norm
        scaled = matrix * (torch.rsqrt(variance.clamp(min=0.0) + norm.eps) * norm.weight)  # (B, kernel, C)
        product = torch.cat([scaled, norm.bias - torch.matmul(mean, scaled)], dim=1)  # (B, kernel + 1, C)
        if channels_first:
            return F.gelu(torch.matmul(product.transpose(1, 2), windows_t)), lengths
        return F.gelu(torch.matmul(windows, product)), lengths

    def _pad_for_chunks(self, waveforms: Tensor, frames) -> Tensor:
        """Zeros after the batch's end, so that the first block's ``frames`` become a whole number of the int8
        convs' chunks at every int8 conv (``rows`` times the product of their strides); the extra are padding."""
        first = self.model.feature_extractor.conv_layers[0]
        multiple = INT8_ROWS_PER_SCALE * math.prod(conv.stride for conv in self.quantized_convs)
        return F.pad(waveforms, (0, (multiple - frames % multiple) % multiple * first.stride))

    @staticmethod
    def _receptive_field(blocks: Sequence[C.ConvLayerBlock]):
        """Receptive field (in input frames) and stride product of consecutive conv blocks: the chain's lengths
        are one ``conv_output_lengths`` step (floor(floor(a / s) / t) = floor(a / (s t)))."""
        field, stride = 1, 1
        for block in blocks:
            field, stride = field + (block.kernel_size - 1) * stride, stride * block.stride
        return field, stride

    def _cnn(self, waveforms: Tensor, lengths: Tensor):
        """``(B, S) -> (B, T, C)`` features for the projection, and the valid frames."""
        blocks = self.model.feature_extractor.conv_layers
        int8 = len(self.quantized_convs)
        samples = waveforms.shape[1]  # before _pad_for_chunks

        def frames_after(chain):  # (from the traced shape, whose arithmetic the exporter writes as ops; its integer
            # division truncates, a floor here: the dividend is >= 0 for an input of one frame or more)
            field, stride = self._receptive_field(chain)
            return (samples - field + stride) // stride

        if int8:
            waveforms = self._pad_for_chunks(waveforms, frames_after(blocks[:1]))
        if blocks[0].norm == "group":
            x, lengths = self._first_block_group_norm(blocks[0], waveforms, lengths, channels_first=int8 == 0)
        else:
            x, lengths = self._conv_block(blocks[0], waveforms.unsqueeze(1), lengths)
            x = x.transpose(1, 2) if int8 else x
        valid = self._valid(lengths, x.shape[1], x.dtype) if int8 else None
        for block, conv in zip(blocks[1:], self.quantized_convs):  # frames-major int8 convs
            x = conv(x, valid)
            # Output frame t is valid when its last input frame t * stride + kernel - 1 is; the conv's extra row
            # (its output has frames / stride rows, one past the last full window when kernel > stride) is not.
            valid = F.pad(valid[:, block.kernel_size - 1:: block.stride], (0, int(block.kernel_size > block.stride)))
            if block.norm == "layer":
                x = block.layer_norm(x)
            x = F.gelu(x)  # (group norm comes only in the first block: _build_feature_extractor)
        if int8:  # the chunks' extra frames dropped; the int8 blocks' lengths in one step
            x = x[:, : frames_after(blocks[: 1 + int8])].transpose(1, 2)
            lengths = C.conv_output_lengths(lengths, *self._receptive_field(blocks[1: 1 + int8]))
        for block in blocks[1 + int8:]:  # channels-major fp32 convs
            x, lengths = self._conv_block(block, x, lengths)
        return x.transpose(1, 2), lengths

    @staticmethod
    def _attention(attn: C.SelfAttention, x: Tensor, bias: Tensor) -> Tensor:
        """``bias``: additive ``(B or 1, heads or 1, T, T)`` logits bias (padding, WavLM positions)."""
        if attn.num_heads == 0:
            return attn.out_proj.bias.expand_as(x)
        heads, head_dim = attn.num_heads, attn.head_dim
        q = reshape(attn.q_proj(x), 0, -1, heads, head_dim).transpose(1, 2)
        k = reshape(attn.k_proj(x), 0, -1, heads, head_dim).transpose(1, 2)
        v = reshape(attn.v_proj(x), 0, -1, heads, head_dim).transpose(1, 2)
        logits = torch.matmul(q * (1.0 / math.sqrt(head_dim)), k.transpose(2, 3)) + bias
        out = torch.matmul(torch.softmax(logits, dim=-1), v)
        return attn.out_proj(reshape(out.transpose(1, 2), 0, -1, heads * head_dim))

    @staticmethod
    def _wavlm_bias(attn: C.WavLMSelfAttention, x: Tensor, position_bias: Tensor, padding_bias: Tensor) -> Tensor:
        heads = attn.remaining_heads
        per_head = reshape(x, 0, -1, attn.total_num_heads, attn.head_dim)[:, :, heads]
        per_head = per_head.transpose(1, 2)
        gate = attn.gru_rel_pos_linear(per_head)
        gate = torch.sigmoid(reshape(gate, 0, 0, -1, 2, 4).sum(-1))
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
        x, frames = self._cnn(waveforms, lengths)
        x = model.encoder.feature_projection(x)

        transformer = model.encoder.transformer
        valid = self._valid(frames, x.shape[1], x.dtype)
        x = x * valid[..., None]
        # -inf on padded keys, as the training path; every item has >= 1 valid frame, so no row is all -inf.
        padding_bias = torch.where(valid > 0, 0.0, float("-inf")).to(x.dtype)[:, None, None, :]
        x = x + F.gelu(self.pos_conv(x))
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
