"""Physical pruning: gates -> deterministic masks -> a smaller model with the soft mask values folded in.

Exact except where a normalisation sits between a gate and the next weight (docs/method.md, "Physical pruning"):
- the last CNN layer's gate precedes the feature projection's LayerNorm: its soft values are kept as the
  ``input_scale`` buffer (exact), but removing channels changes that LayerNorm's statistics (the zeros were
  counted before); the same holds for every CNN layer of a layer-norm CNN (Large models). Step 2 repairs this.
Heads and FFN units reduced to zero keep the output projection's bias, so pruning stays exact there.
"""

import copy
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from .config import PRUNE_SWITCHES, is_wavlm


class PruningError(ValueError):
    pass


def _mask(gate) -> Optional[Tensor]:
    return None if gate is None else gate.deterministic_mask().detach()


def prune_model(model):
    """Return ``(pruned_model)`` in eval mode; ``model`` itself is left untouched."""
    from .model import Wav2Vec2Model

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            config, state = _pruned_config_and_state(model)
    finally:
        model.train(was_training)
    pruned = Wav2Vec2Model(config)
    pruned.load_state_dict(state, strict=True)
    return pruned.eval()


def _pruned_config_and_state(model):
    cfg: Dict[str, Any] = copy.deepcopy(model.config)
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("log_alpha")}
    _prune_cnn(model, cfg, state)
    for i, layer in enumerate(model.encoder.transformer.layers):
        prefix = f"encoder.transformer.layers.{i}."
        _prune_attention(layer.attention, i, cfg, state, prefix + "attention.")
        _prune_feed_forward(layer.feed_forward, i, cfg, state, prefix + "feed_forward.")
    for name in PRUNE_SWITCHES:
        cfg[name] = False
    return cfg, state


def _prune_cnn(model, cfg, state) -> None:
    blocks = model.feature_extractor.conv_layers
    scale_in: Optional[Tensor] = None  # soft values of the previous layer's kept channels
    for i, block in enumerate(blocks):
        prefix = f"feature_extractor.conv_layers.{i}."
        if scale_in is not None:
            state[prefix + "conv.weight"] = state[prefix + "conv.weight"] * scale_in[None, :, None]
        mask = _mask(block.hard_concrete)
        if mask is None:
            scale_in = None
            continue
        keep = mask.nonzero().squeeze(-1)
        if keep.numel() == 0:
            raise PruningError(f"CNN layer {i} lost all its channels: the target sparsity is too high for the CNN "
                               f"(lower it or disable extractor_prune_conv_channels)")
        for name in ("conv.weight", "conv.bias", "layer_norm.weight", "layer_norm.bias"):
            if prefix + name in state:
                state[prefix + name] = state[prefix + name][keep]
        if i + 1 < len(blocks):
            nxt = f"feature_extractor.conv_layers.{i + 1}.conv.weight"
            state[nxt] = state[nxt][:, keep]
        cfg["extractor_conv_layer_config"][i][0] = int(keep.numel())
        scale_in = mask[keep]
    if scale_in is not None:  # the last CNN layer was gated: its soft values go before the projection's LayerNorm
        proj = "encoder.feature_projection."
        keep = _mask(blocks[-1].hard_concrete).nonzero().squeeze(-1)
        for name in ("layer_norm.weight", "layer_norm.bias"):
            if proj + name in state:
                state[proj + name] = state[proj + name][keep]
        state[proj + "projection.weight"] = state[proj + "projection.weight"][:, keep]
        previous = state.get(proj + "input_scale")
        state[proj + "input_scale"] = scale_in if previous is None else scale_in * previous[keep]
        cfg["encoder_projection_input_scale"] = True


def _drop(state, prefix: str) -> None:
    for key in [k for k in state if k.startswith(prefix)]:
        del state[key]


def _prune_attention(attn, i: int, cfg, state, prefix: str) -> None:
    if attn is None:
        return
    layer_mask = _mask(attn.hard_concrete_for_layer)
    if layer_mask is not None and float(layer_mask) == 0.0:
        _drop(state, prefix)
        cfg["encoder_use_attention"][i] = False
        if not is_wavlm(cfg):
            cfg["encoder_num_heads"][i] = 0
        return
    head_mask = _mask(attn.hard_concrete_for_heads)
    if head_mask is None:
        head_mask = torch.ones(attn.num_heads)
    keep_heads = head_mask.nonzero().squeeze(-1)
    rows = (keep_heads[:, None] * attn.head_dim + torch.arange(attn.head_dim)).reshape(-1)
    for proj in ("q_proj", "k_proj", "v_proj"):
        state[f"{prefix}{proj}.weight"] = state[f"{prefix}{proj}.weight"][rows]
        state[f"{prefix}{proj}.bias"] = state[f"{prefix}{proj}.bias"][rows]
    column_scale = head_mask[keep_heads].repeat_interleave(attn.head_dim)
    out_w, out_b = f"{prefix}out_proj.weight", f"{prefix}out_proj.bias"
    state[out_w] = state[out_w][:, rows] * column_scale[None, :]
    if layer_mask is not None:
        state[out_w] = state[out_w] * layer_mask
        state[out_b] = state[out_b] * layer_mask
    if is_wavlm(cfg):
        cfg["encoder_remaining_heads"][i] = [attn.remaining_heads[h] for h in keep_heads.tolist()]
    else:
        cfg["encoder_num_heads"][i] = int(keep_heads.numel())


def _prune_feed_forward(ffn, i: int, cfg, state, prefix: str) -> None:
    if ffn is None:
        return
    layer_mask = _mask(ffn.hard_concrete_for_layer)
    if layer_mask is not None and float(layer_mask) == 0.0:
        _drop(state, prefix)
        cfg["encoder_use_feed_forward"][i] = False
        cfg["encoder_ff_interm_features"][i] = 0
        return
    unit_mask = _mask(ffn.hard_concrete_for_intermediate)
    if unit_mask is None:
        unit_mask = torch.ones(ffn.intermediate_dense.out_features)
    keep = unit_mask.nonzero().squeeze(-1)
    state[prefix + "intermediate_dense.weight"] = state[prefix + "intermediate_dense.weight"][keep]
    state[prefix + "intermediate_dense.bias"] = state[prefix + "intermediate_dense.bias"][keep]
    out_w, out_b = prefix + "output_dense.weight", prefix + "output_dense.bias"
    state[out_w] = state[out_w][:, keep] * unit_mask[keep][None, :]
    if layer_mask is not None:
        state[out_w] = state[out_w] * layer_mask
        state[out_b] = state[out_b] * layer_mask
    cfg["encoder_ff_interm_features"][i] = int(keep.numel())
