"""The prunable encoder: one class for HuBERT, wav2vec 2.0 and WavLM (Base and Large).

``extract_features`` returns ``num_layers + 1`` hidden states, in the convention of HF
``output_hidden_states=True`` and s3prl: state 0 is the input of the first transformer layer (CNN -> feature
projection -> + positional conv, then the encoder LayerNorm for post-LN models), state i the output of layer i;
for pre-LN (Large) models the last state has the final encoder LayerNorm applied. The reference DPHuBERT code
differs in both (its state 0 is the feature-projection output before the positional conv, which
``extract_features(..., layer0="projection")`` gives; its pre-LN last state lacks the final LayerNorm).
"""

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import components as C
from .config import has_projection_layer_norm, is_wavlm, normalize_config
from .gates import HardConcrete, gate_units
from .macs import gated_macs

# What hidden state 0 is: the transformer input (HF / s3prl, our default) or the feature-projection output
# before the positional conv (the reference DPHuBERT code).
LAYER0_CHOICES = ("transformer_input", "projection")


class Wav2Vec2Model(nn.Module):
    def __init__(self, config: Dict[str, Any]):
        super().__init__()
        self.config = normalize_config(config)
        cfg = self.config
        self.normalize_waveform = cfg["normalize_waveform"]
        self.feature_extractor = _build_feature_extractor(cfg)
        embed_dim = cfg["encoder_embed_dim"]
        projection = C.FeatureProjection(cfg["extractor_conv_layer_config"][-1][0], embed_dim,
                                         cfg["encoder_projection_dropout"], cfg["encoder_projection_input_scale"],
                                         has_projection_layer_norm(cfg))
        pos_conv = C.ConvolutionalPositionalEmbedding(embed_dim, cfg["encoder_pos_conv_kernel"],
                                                      cfg["encoder_pos_conv_groups"])
        layers = [_build_layer(cfg, i) for i in range(cfg["encoder_num_layers"])]
        transformer = C.Transformer(pos_conv, embed_dim, cfg["encoder_dropout"], layers,
                                    cfg["encoder_layer_norm_first"], cfg["encoder_layer_drop"])
        self.encoder = C.Encoder(projection, transformer)

    @property
    def num_layers(self) -> int:
        return self.config["encoder_num_layers"]

    def extract_features(self, waveforms: Tensor, lengths: Optional[Tensor] = None,
                         layer0: str = "transformer_input", feature_grad_mult: float = 1.0
                         ) -> Tuple[List[Tensor], Optional[Tensor]]:
        """``waveforms``: ``(batch, samples)`` at 16 kHz; ``lengths``: valid samples per item or ``None``.

        Returns ``num_layers + 1`` tensors ``(batch, frames, embed_dim)`` and the valid frames per item. Items of
        a padded batch give the same states on their valid frames as when run alone. ``layer0="projection"``
        makes state 0 the feature-projection output before the positional conv (the reference DPHuBERT code's
        state 0 and its layer-0 distillation target; padded frames zeroed) instead of the transformer input.
        ``feature_grad_mult`` scales the gradient that reaches the CNN (fairseq's and s3prl's ``feature_grad_mult``).
        """
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must be (batch, samples), got shape {tuple(waveforms.shape)}")
        if layer0 not in LAYER0_CHOICES:
            raise ValueError(f"layer0 must be one of {LAYER0_CHOICES}, got {layer0!r}")
        input_lengths = lengths
        if lengths is not None and bool((lengths == waveforms.size(1)).all()):
            lengths = None  # nothing is padded: take the fast paths
        if self.normalize_waveform:
            waveforms = _normalize_waveforms(waveforms, lengths)
        features, out_lengths = self.feature_extractor(waveforms, lengths)
        x = self.encoder.feature_projection(C.scale_gradient(features, feature_grad_mult))
        padding_mask = None if out_lengths is None else C.lengths_to_padding_mask(out_lengths, x.size(1))
        states = self.encoder.transformer(x, padding_mask)
        if layer0 == "projection":
            states[0] = x if padding_mask is None else x.masked_fill(padding_mask[..., None], 0.0)
        if input_lengths is not None and out_lengths is None:
            out_lengths = self.output_lengths(input_lengths)
        return states, out_lengths

    def forward(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """The last hidden state and its lengths."""
        states, out_lengths = self.extract_features(waveforms, lengths)
        return states[-1], out_lengths

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for layer in self.feature_extractor.conv_layers:
            lengths = layer.output_lengths(lengths)
        return lengths

    # ----- gates and parameter counts -------------------------------------------------------------------
    def gates(self) -> Dict[str, HardConcrete]:
        return {name: m for name, m in self.named_modules() if isinstance(m, HardConcrete)}

    def gate_parameters(self) -> List[nn.Parameter]:
        return [g.log_alpha for g in self.gates().values()]

    def main_parameters(self) -> List[nn.Parameter]:
        gate_ids = {id(p) for p in self.gate_parameters()}
        return [p for p in self.parameters() if id(p) not in gate_ids]

    def expected_num_params(self) -> Tensor:
        """Expected parameter count under the gates' L0 distribution (differentiable in ``log_alpha``)."""
        return count_params(self, "expected")

    def deterministic_num_params(self) -> int:
        """Parameter count of the model that ``prune()`` would return (from the eval-mode masks)."""
        return int(round(float(count_params(self, "deterministic"))))

    def expected_macs(self, seconds: float = 10.0) -> Tensor:
        """Expected MACs of one forward on ``seconds`` of audio under the gates' L0 distribution (differentiable in
        ``log_alpha``; the counting of ``dphubert.models.macs``, attention's frames-squared terms included)."""
        total = gated_macs(self, "expected", seconds)["total"]
        return total if torch.is_tensor(total) else torch.tensor(float(total))

    def deterministic_macs(self, seconds: float = 10.0) -> int:
        """MACs of the model that ``prune()`` would return: ``count_macs(model.prune(), seconds)["total"]``."""
        return int(gated_macs(self, "deterministic", seconds)["total"])

    def num_params(self) -> int:
        """Real number of parameters, gates excluded."""
        return sum(p.numel() for p in self.main_parameters())

    def prune(self) -> "Wav2Vec2Model":
        """A physically smaller copy with the gates' deterministic masks folded in (see ``pruning.py``)."""
        from .pruning import prune_model

        return prune_model(self)


def _normalize_waveforms(waveforms: Tensor, lengths: Optional[Tensor]) -> Tensor:
    if lengths is None:
        return F.layer_norm(waveforms, waveforms.shape[-1:])
    out = torch.zeros_like(waveforms)
    for i, n in enumerate(lengths.tolist()):
        out[i, :n] = F.layer_norm(waveforms[i, :n], (n,))
    return out


def _build_feature_extractor(cfg: Dict[str, Any]) -> C.FeatureExtractor:
    blocks, in_channels = [], 1
    for i, (out_channels, kernel, stride) in enumerate(cfg["extractor_conv_layer_config"]):
        if cfg["extractor_mode"] == "layer_norm":
            norm = "layer"
        else:
            norm = "group" if i == 0 else None
        blocks.append(C.ConvLayerBlock(in_channels, out_channels, kernel, stride, cfg["extractor_conv_bias"], norm,
                                       cfg["extractor_prune_conv_channels"]))
        in_channels = out_channels
    return C.FeatureExtractor(blocks)


def _build_layer(cfg: Dict[str, Any], i: int) -> C.EncoderLayer:
    embed_dim = cfg["encoder_embed_dim"]
    attention = None
    if cfg["encoder_use_attention"][i]:
        if is_wavlm(cfg):
            # Layer 0 owns the relative-position embedding every layer uses, so its block is never dropped.
            attention = C.WavLMSelfAttention(
                embed_dim, cfg["encoder_total_num_heads"][i], cfg["encoder_remaining_heads"][i],
                cfg["encoder_attention_dropout"], has_relative_attention_bias=(i == 0),
                num_buckets=cfg["encoder_num_buckets"], max_distance=cfg["encoder_max_distance"],
                prune_heads=cfg["encoder_prune_attention_heads"],
                prune_layer=cfg["encoder_prune_attention_layer"] and i > 0)
        else:
            attention = C.SelfAttention(embed_dim, cfg["encoder_num_heads"][i], cfg["encoder_head_dim"],
                                        cfg["encoder_attention_dropout"], cfg["encoder_prune_attention_heads"],
                                        cfg["encoder_prune_attention_layer"])
        if attention.num_heads == 0 and attention.hard_concrete_for_heads is not None:
            attention.hard_concrete_for_heads = None  # nothing left to gate
    feed_forward = None
    if cfg["encoder_use_feed_forward"][i]:
        units = cfg["encoder_ff_interm_features"][i]
        feed_forward = C.FeedForward(embed_dim, units, cfg["encoder_ff_interm_dropout"], cfg["encoder_dropout"],
                                     cfg["encoder_prune_feed_forward_intermediate"] and units > 0,
                                     cfg["encoder_prune_feed_forward_layer"])
    return C.EncoderLayer(attention, feed_forward, embed_dim, cfg["encoder_dropout"], cfg["encoder_layer_norm_first"])


# ----- parameter counting (docs/method.md) ---------------------------------------------------------------------
_units = gate_units


def count_params(model: Wav2Vec2Model, mode: str):
    """Parameter count with every gated size replaced by its ``expected`` or ``deterministic`` value."""
    assert mode in ("expected", "deterministic")
    total = 0
    in_channels = 1
    for block in model.feature_extractor.conv_layers:
        conv = block.conv
        c = _units(block.hard_concrete, conv.out_channels, mode)
        total = total + in_channels * c * block.kernel_size
        if conv.bias is not None:
            total = total + c
        if block.layer_norm is not None:
            total = total + 2 * c
        in_channels = c
    embed_dim = model.config["encoder_embed_dim"]
    total = total + (in_channels + 1) * embed_dim  # feature projection
    if has_projection_layer_norm(model.config):
        total = total + 2 * in_channels
    transformer = model.encoder.transformer
    total = total + sum(p.numel() for p in transformer.pos_conv_embed.parameters())
    total = total + sum(p.numel() for p in transformer.layer_norm.parameters())
    for layer in transformer.layers:
        total = total + 4 * embed_dim
        attn = layer.attention
        if attn is not None:
            h = _units(attn.hard_concrete_for_heads, attn.num_heads, mode)
            inner = h * attn.head_dim
            block = (embed_dim + 1) * inner * 3 + (inner + 1) * embed_dim
            if isinstance(attn, C.WavLMSelfAttention):
                block = block + sum(p.numel() for p in attn.gru_rel_pos_linear.parameters())
                block = block + attn.gru_rel_pos_const.numel()
                if attn.rel_attn_embed is not None:
                    block = block + attn.rel_attn_embed.weight.numel()
            total = total + block * _units(attn.hard_concrete_for_layer, 1, mode)
        ffn = layer.feed_forward
        if ffn is not None:
            f = _units(ffn.hard_concrete_for_intermediate, ffn.intermediate_dense.out_features, mode)
            block = (embed_dim + 1) * f + (f + 1) * embed_dim
            total = total + block * _units(ffn.hard_concrete_for_layer, 1, mode)
    if mode == "expected" and not torch.is_tensor(total):
        total = torch.tensor(float(total))
    return total
