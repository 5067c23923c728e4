"""Files as the paper's reference code (github.com/pyf98/DPHuBERT) writes them, and hidden states as it computes
them, written from reading that code (it is not a dependency; nothing here is copied from it).

Files (``write_reference_file``), as ``prune.py`` (``prune_from_ckpt``) writes ``pruned_hubert_base.pth`` and
``save_final_ckpt.py`` writes the final file; the released DPHuBERT-sp0.75.pth / DPWavLM-sp0.75.pth are such files:

- ``{"state_dict", "config", "distill_linear_projs"}``, nothing else (prune.py ``ret``; save_final_ckpt.py).
- config: the teacher's config dict (``convert_hubert_from_hf.py``, ``convert_wavlm_from_hf.py``,
  ``convert_hubert_large_from_fairseq.py``: exactly the arguments of ``wav2vec2/model.py``'s
  ``wav2vec2_model_original`` / ``wavlm_model``), updated by prune.py: ``extractor_conv_layer_config`` (a list of
  tuples ``(kept channels, kernel, stride)``), ``encoder_use_attention``, ``encoder_use_feed_forward``,
  ``encoder_ff_interm_features`` (per layer), ``encoder_num_heads`` (per layer; WavLM: ``encoder_remaining_heads``,
  ``encoder_total_num_heads`` unchanged) and the five prune switches set to False.
- state_dict: ``model.state_dict()`` of the pruned reference model. Names follow ``wav2vec2/components.py``:
  ``feature_extractor.dummy_weight`` is an ``nn.Parameter`` (requires_grad False) of the last CNN layer's
  channels, so it is in the state dict; the gates (``hard_concrete*.log_alpha``) are set to None by prune(), so
  they are not. The positional conv uses ``nn.utils.weight_norm(dim=2)``: ``weight_g`` (1, 1, K), ``weight_v``.
- What ``prune()`` stores where (components.py ``FeatureExtractor.prune``, ``SelfAttention.prune``,
  ``WavLMSelfAttention.prune``, ``FeedForward.prune``, ``Encoder.prune``, ``Transformer.prune``):
  CNN layer i keeps the channels of nonzero mask; its soft mask multiplies the next layer's input channels
  (``conv.weight *= mask.unsqueeze(-1)``, then sliced) or, for the last layer, ``dummy_weight`` (``*= mask``,
  then sliced); the feature projection's LayerNorm and input columns are sliced. Heads: q/k/v rows of kept heads;
  ``out_proj.weight *= head_mask.repeat_interleave(head_dim)``, then its columns sliced (its bias untouched).
  FFN units: ``intermediate_dense`` rows; ``output_dense.weight *= mask``, then columns sliced. A layer left with
  no heads (no units) gets ``use_attention`` (``use_feed_forward``) False and its block is deleted
  (``layer.attention = None``), with ``num_heads`` 0 / ``remaining_heads`` [] (``ff_interm_features`` 0).
- distill_linear_projs: the state dict of distill.py's ``nn.ModuleList`` in which the layers of one group of
  ``--distill_layers`` (run.sh: ``0.4,8,12``) share one ``nn.Linear``: keys ``<k>.weight`` / ``<k>.bias`` for
  every distilled layer k, shared entries being the same tensor.

Hidden states (``reference_states``): ``Wav2Vec2Model.extract_features`` of wav2vec2/model.py for one unpadded
batch: waveform LayerNorm if ``normalize_waveform``; CNN (conv -> GroupNorm in layer 0 for ``group_norm`` /
LayerNorm over channels in every layer for ``layer_norm`` -> GELU); ``x * dummy_weight``; feature projection
(LayerNorm, Linear) = state 0 (``Encoder.extract_features`` returns ``[x] + interm``); ``x + pos_conv(x)``
(``Transformer._preprocess``) then the encoder LayerNorm for post-LN models only (the reference flips the flag:
``Transformer(layer_norm_first=not layer_norm_first)``); one state per layer from ``get_intermediate_outputs``,
which never applies the final encoder LayerNorm (pre-LN models apply it only in ``forward``).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PRUNE_SWITCHES = ("extractor_prune_conv_channels", "encoder_prune_attention_heads", "encoder_prune_attention_layer",
                  "encoder_prune_feed_forward_intermediate", "encoder_prune_feed_forward_layer")
LAYERS = "encoder.transformer.layers."


# ----- teacher configs, in the style of the reference's convert_*.py ------------------------------------------------
def teacher_config(kind: str, num_layers: int = 3, dim: int = 48, heads: int = 4, ffn: int = 96) -> dict:
    """A tiny teacher config with exactly the keys the reference's converters write. ``kind``: hubert (Base,
    convert_hubert_from_hf.py), wavlm (Base+, convert_wavlm_from_hf.py) or hubert_large (pre-LN,
    convert_hubert_large_from_fairseq.py: layer_norm CNN without conv bias, normalize_waveform True)."""
    large = kind == "hubert_large"
    config = dict(
        extractor_mode="layer_norm" if large else "group_norm",
        extractor_conv_layer_config=[(32, 10, 5), (32, 3, 2), (32, 3, 2), (32, 2, 2)],
        extractor_conv_bias=False,
        encoder_embed_dim=dim,
        encoder_projection_dropout=0.1,
        encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=4,
        encoder_num_layers=num_layers,
        encoder_use_attention=[True] * num_layers,
        encoder_use_feed_forward=[True] * num_layers,
    )
    if kind == "wavlm":
        config.update(encoder_total_num_heads=[heads] * num_layers,
                      encoder_remaining_heads=[list(range(heads)) for _ in range(num_layers)],
                      encoder_num_buckets=32, encoder_max_distance=64)
    else:
        config.update(encoder_num_heads=[heads] * num_layers, encoder_head_dim=dim // heads)
    config.update(
        encoder_attention_dropout=0.1,
        encoder_ff_interm_features=[ffn] * num_layers,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.1,
        encoder_layer_norm_first=large,
        encoder_layer_drop=0.05,
        aux_num_out=None,
        normalize_waveform=large,
        **{name: False for name in PRUNE_SWITCHES},
    )
    return config


def _heads_and_dim(config: dict, i: int):
    if "encoder_remaining_heads" in config:
        total = config["encoder_total_num_heads"][i]
        return len(config["encoder_remaining_heads"][i]), config["encoder_embed_dim"] // total
    return config["encoder_num_heads"][i], config["encoder_head_dim"]


def state_shapes(config: dict) -> Dict[str, tuple]:
    """Names and shapes of ``wav2vec2_model(**config).state_dict()`` (an ungated reference model)."""
    shapes: Dict[str, tuple] = {}

    def linear(prefix: str, out_features: int, in_features: int) -> None:
        shapes[prefix + "weight"], shapes[prefix + "bias"] = (out_features, in_features), (out_features,)

    def norm(prefix: str, features: int) -> None:
        shapes[prefix + "weight"] = shapes[prefix + "bias"] = (features,)

    conv = config["extractor_conv_layer_config"]
    shapes["feature_extractor.dummy_weight"] = (conv[-1][0],)
    in_channels = 1
    for i, (out_channels, kernel, _) in enumerate(conv):
        p = f"feature_extractor.conv_layers.{i}."
        if config["extractor_mode"] == "layer_norm" or i == 0:
            norm(p + "layer_norm.", out_channels)
        shapes[p + "conv.weight"] = (out_channels, in_channels, kernel)
        if config["extractor_conv_bias"]:
            shapes[p + "conv.bias"] = (out_channels,)
        in_channels = out_channels
    dim = config["encoder_embed_dim"]
    norm("encoder.feature_projection.layer_norm.", in_channels)
    linear("encoder.feature_projection.projection.", dim, in_channels)
    p = "encoder.transformer.pos_conv_embed.conv."
    kernel, groups = config["encoder_pos_conv_kernel"], config["encoder_pos_conv_groups"]
    shapes[p + "bias"], shapes[p + "weight_g"], shapes[p + "weight_v"] = (dim,), (1, 1, kernel), (dim, dim // groups,
                                                                                                   kernel)
    norm("encoder.transformer.layer_norm.", dim)
    wavlm = "encoder_remaining_heads" in config
    for i in range(config["encoder_num_layers"]):
        p = f"{LAYERS}{i}."
        if config["encoder_use_attention"][i]:
            heads, head_dim = _heads_and_dim(config, i)
            for name in ("k_proj", "v_proj", "q_proj"):
                linear(f"{p}attention.{name}.", heads * head_dim, dim)
            linear(p + "attention.out_proj.", dim, heads * head_dim)
            if wavlm:
                total = config["encoder_total_num_heads"][i]
                if i == 0:
                    shapes[p + "attention.rel_attn_embed.weight"] = (config["encoder_num_buckets"], total)
                linear(p + "attention.gru_rel_pos_linear.", 8, head_dim)
                shapes[p + "attention.gru_rel_pos_const"] = (1, total, 1, 1)
        norm(p + "layer_norm.", dim)
        norm(p + "final_layer_norm.", dim)
        if config["encoder_use_feed_forward"][i]:
            units = config["encoder_ff_interm_features"][i]
            linear(p + "feed_forward.intermediate_dense.", units, dim)
            linear(p + "feed_forward.output_dense.", dim, units)
    return shapes


def random_state(config: dict, generator: torch.Generator) -> Dict[str, Tensor]:
    """A trained-looking Step-1 student state dict: LayerNorm/GroupNorm affines near 1/0, dummy_weight all ones
    (the Step-1 student is built by wav2vec2_model(**config), which initialises it to ones; the teacher files of
    convert_*.py have no dummy_weight, so load_state_dict(strict=False) leaves it so)."""
    state = {}
    for name, shape in state_shapes(config).items():
        if name == "feature_extractor.dummy_weight":
            state[name] = torch.ones(shape)
        elif "norm.weight" in name or name.endswith("gru_rel_pos_const"):
            state[name] = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        elif name.endswith("weight_g"):
            state[name] = 1.0 + 0.2 * torch.rand(shape, generator=generator)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 10
            state[name] = torch.randn(shape, generator=generator) / math.sqrt(fan_in) + (0.02 if len(shape) == 1 else 0)
    return state


def soft_mask(size: int, keep: Sequence[int], generator: torch.Generator, values: Sequence[float] = ()) -> Tensor:
    """A deterministic HardConcrete mask as the reference's eval-mode gate gives it: zeros except at ``keep``,
    whose entries hold soft values in (0, 1] (the first ones set to ``values``)."""
    mask = torch.zeros(size)
    soft = 0.2 + 0.8 * torch.rand(len(keep), generator=generator)
    soft[: len(values)] = torch.tensor(list(values), dtype=torch.float32)
    mask[list(keep)] = soft
    return mask


# ----- prune(), as the reference applies it to the Step-1 student ---------------------------------------------------
def reference_prune(config: dict, state: Dict[str, Tensor], conv_masks: Sequence[Tensor], head_masks: Sequence[Tensor],
                    unit_masks: Sequence[Tensor]):
    """``(pruned config, pruned state dict)`` with every CNN layer, head and FFN unit gated (the paper's
    ``--pruning_units conv,head,interm``), following components.py's prune methods and prune.py's config update."""
    state = {k: v.clone() for k, v in state.items()}
    conv = [tuple(c) for c in config["extractor_conv_layer_config"]]
    new_conv = []
    index = None
    for i, mask in enumerate(conv_masks):
        p = f"feature_extractor.conv_layers.{i}."
        index = mask.nonzero().squeeze(-1)
        new_conv.append((len(index), conv[i][1], conv[i][2]))
        for name in ("conv.weight", "conv.bias", "layer_norm.weight", "layer_norm.bias"):
            if p + name in state:
                state[p + name] = state[p + name].index_select(0, index)
        if i == len(conv) - 1:
            dummy = state["feature_extractor.dummy_weight"] * mask
            state["feature_extractor.dummy_weight"] = dummy.index_select(0, index)
        else:
            nxt = f"feature_extractor.conv_layers.{i + 1}.conv.weight"
            state[nxt] = (state[nxt] * mask.unsqueeze(-1)).index_select(1, index)
    p = "encoder.feature_projection."
    for name in ("layer_norm.weight", "layer_norm.bias"):
        state[p + name] = state[p + name].index_select(0, index)
    state[p + "projection.weight"] = state[p + "projection.weight"].index_select(1, index)

    wavlm = "encoder_remaining_heads" in config
    use_attention, use_feed_forward, heads_out, units_out = [], [], [], []
    for i, (head_mask, unit_mask) in enumerate(zip(head_masks, unit_masks)):
        p = f"{LAYERS}{i}."
        _, head_dim = _heads_and_dim(config, i)
        kept_heads = head_mask.nonzero().squeeze(-1)
        heads_out.append(kept_heads.tolist() if wavlm else len(kept_heads))
        use_attention.append(len(kept_heads) > 0)
        if len(kept_heads) == 0:
            for key in [k for k in state if k.startswith(p + "attention.")]:
                del state[key]
        else:
            full_mask = head_mask.repeat_interleave(head_dim)
            full_index = full_mask.nonzero().squeeze(-1)
            for name in ("k_proj", "v_proj", "q_proj"):
                for kind in ("weight", "bias"):
                    key = f"{p}attention.{name}.{kind}"
                    state[key] = state[key].index_select(0, full_index)
            key = p + "attention.out_proj.weight"
            state[key] = (state[key] * full_mask).index_select(1, full_index)
        kept_units = unit_mask.nonzero().squeeze(-1)
        units_out.append(len(kept_units))
        use_feed_forward.append(len(kept_units) > 0)
        if len(kept_units) == 0:
            for key in [k for k in state if k.startswith(p + "feed_forward.")]:
                del state[key]
        else:
            for kind in ("weight", "bias"):
                key = f"{p}feed_forward.intermediate_dense.{kind}"
                state[key] = state[key].index_select(0, kept_units)
            key = p + "feed_forward.output_dense.weight"
            state[key] = (state[key] * unit_mask).index_select(1, kept_units)

    pruned = dict(config)
    pruned["encoder_remaining_heads" if wavlm else "encoder_num_heads"] = heads_out
    pruned.update(extractor_conv_layer_config=new_conv, encoder_use_attention=use_attention,
                  encoder_use_feed_forward=use_feed_forward, encoder_ff_interm_features=units_out,
                  **{name: False for name in PRUNE_SWITCHES})
    return pruned, state


def distill_linear_projs(groups: Sequence[Sequence[int]], dim: int, generator: torch.Generator) -> Dict[str, Tensor]:
    """The state dict of distill.py's ModuleList: one Linear per group (identity-initialised, then trained),
    repeated for each layer of the group (same tensors)."""
    state = {}
    k = 0
    for group in groups:
        weight = torch.eye(dim) + 0.05 * torch.randn(dim, dim, generator=generator)
        bias = 0.05 * torch.randn(dim, generator=generator)
        for _ in group:
            state[f"{k}.weight"], state[f"{k}.bias"] = weight, bias
            k += 1
    return state


# The pruned structures of the fixtures: kept heads / FFN units per layer (some layers keep none) and, for the last
# CNN layer, the soft gate values that end up in dummy_weight.
PLANS = {
    "hubert": dict(heads=[[0, 2, 3], [], [1]], units=[40, 17, 0]),
    "wavlm": dict(heads=[[0, 1, 3], [], [2]], units=[0, 50, 20]),
    "hubert_large": dict(heads=[[2], [0, 1, 2, 3], []], units=[30, 0, 96]),
}
LAST_CONV_VALUES = (0.3, 0.98, 0.21)


def reference_checkpoint(kind: str, seed: int = 0, plan: Optional[dict] = None,
                         conv_keep: Sequence[int] = (29, 32, 27, 30),
                         dummy_values: Sequence[float] = LAST_CONV_VALUES) -> dict:
    """The dict prune.py / save_final_ckpt.py save for a tiny ``kind`` model pruned as ``plan`` (default PLANS)."""
    generator = torch.Generator().manual_seed(seed)
    config = teacher_config(kind)
    plan = plan or PLANS[kind]
    state = random_state(config, generator)
    conv_masks = []
    conv = config["extractor_conv_layer_config"]
    for i, ((channels, _, _), keep) in enumerate(zip(conv, conv_keep)):
        kept = torch.randperm(channels, generator=generator)[:keep].sort().values.tolist()
        last = i == len(conv) - 1  # its soft values end up in dummy_weight
        conv_masks.append(soft_mask(channels, kept, generator, dummy_values if last else ()))
    heads = config.get("encoder_num_heads") or config["encoder_total_num_heads"]
    head_masks = [soft_mask(heads[i], keep, generator) for i, keep in enumerate(plan["heads"])]
    ffn = config["encoder_ff_interm_features"]
    unit_masks = [soft_mask(ffn[i], torch.randperm(ffn[i], generator=generator)[:n].tolist(), generator)
                  for i, n in enumerate(plan["units"])]
    pruned_config, pruned_state = reference_prune(config, state, conv_masks, head_masks, unit_masks)
    groups = [[0], list(range(1, config["encoder_num_layers"] + 1))]  # run.sh's "0.4,8,12" for 3 layers: "0.1,2,3"
    return {"state_dict": pruned_state, "config": pruned_config,
            "distill_linear_projs": distill_linear_projs(groups, config["encoder_embed_dim"], generator)}


def write_reference_file(path, kind: str, **kw) -> dict:
    ckpt = reference_checkpoint(kind, **kw)
    torch.save(ckpt, path)
    return ckpt


# ----- the reference's forward (wav2vec2/model.py extract_features, one unpadded batch) -----------------------------
def _relative_buckets(frames: int, num_buckets: int, max_distance: int) -> Tensor:
    """WavLMSelfAttention._relative_positions_bucket (bidirectional) for key position minus query position."""
    positions = torch.arange(frames)
    relative = positions[None, :] - positions[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).long() * half
    relative = relative.abs()
    max_exact = half // 2
    large = max_exact + (torch.log(relative.float() / max_exact) / math.log(max_distance / max_exact)
                         * (half - max_exact)).long()
    large = torch.minimum(large, torch.full_like(large, half - 1))
    return buckets + torch.where(relative < max_exact, relative, large)


def _attention(x: Tensor, sd: Dict[str, Tensor], config: dict, i: int, position_bias: Optional[Tensor]):
    p = f"{LAYERS}{i}.attention."
    batch, frames, _ = x.shape
    heads, head_dim = _heads_and_dim(config, i)
    bias = None
    if "encoder_remaining_heads" in config:
        total = config["encoder_total_num_heads"][i]
        if p + "rel_attn_embed.weight" in sd and position_bias is None:
            buckets = _relative_buckets(frames, config["encoder_num_buckets"], config["encoder_max_distance"])
            position_bias = sd[p + "rel_attn_embed.weight"][buckets].permute(2, 0, 1)  # (total, T, T)
        if position_bias is not None:
            per_head = x.view(batch, frames, total, head_dim).permute(0, 2, 1, 3)
            gru = F.linear(per_head, sd[p + "gru_rel_pos_linear.weight"], sd[p + "gru_rel_pos_linear.bias"])
            gates = torch.sigmoid(gru.view(batch, total, frames, 2, 4).sum(-1))
            gate_a, gate_b = gates[..., :1], gates[..., 1:]
            gate = gate_a * (gate_b * sd[p + "gru_rel_pos_const"] - 1.0) + 2.0
            bias = (gate * position_bias[None])[:, config["encoder_remaining_heads"][i]]
    shape = (batch, frames, heads, head_dim)
    q = F.linear(x, sd[p + "q_proj.weight"], sd[p + "q_proj.bias"]).view(shape).transpose(1, 2)
    k = F.linear(x, sd[p + "k_proj.weight"], sd[p + "k_proj.bias"]).view(shape).transpose(1, 2)
    v = F.linear(x, sd[p + "v_proj.weight"], sd[p + "v_proj.bias"]).view(shape).transpose(1, 2)
    weights = (q * head_dim ** -0.5) @ k.transpose(-1, -2)
    if bias is not None:
        weights = weights + bias
    out = (weights.softmax(-1) @ v).transpose(1, 2).reshape(batch, frames, heads * head_dim)
    return F.linear(out, sd[p + "out_proj.weight"], sd[p + "out_proj.bias"]), position_bias


def _layer_norm(x: Tensor, sd: Dict[str, Tensor], prefix: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[prefix + "weight"], sd[prefix + "bias"])


@torch.no_grad()
def reference_states(ckpt: dict, waveforms: Tensor) -> dict:
    """``{"states": the reference's extract_features list, "transformer_input": x after pos conv (+ LN)}``."""
    sd, config = ckpt["state_dict"], ckpt["config"]
    x = F.layer_norm(waveforms, waveforms.shape[-1:]) if config["normalize_waveform"] else waveforms
    x = x[:, None]
    for i, (channels, _, stride) in enumerate(config["extractor_conv_layer_config"]):
        p = f"feature_extractor.conv_layers.{i}."
        x = F.conv1d(x, sd[p + "conv.weight"], sd.get(p + "conv.bias"), stride=stride)
        if config["extractor_mode"] == "layer_norm":
            x = _layer_norm(x.transpose(1, 2), sd, p + "layer_norm.").transpose(1, 2)
        elif i == 0:
            x = F.group_norm(x, channels, sd[p + "layer_norm.weight"], sd[p + "layer_norm.bias"])
        x = F.gelu(x)
    x = x.transpose(1, 2) * sd["feature_extractor.dummy_weight"]
    x = _layer_norm(x, sd, "encoder.feature_projection.layer_norm.")
    p = "encoder.feature_projection.projection."
    x = F.linear(x, sd[p + "weight"], sd[p + "bias"])
    states = [x]
    p = "encoder.transformer.pos_conv_embed.conv."
    v, g = sd.get(p + "weight_v", sd.get(p + "parametrizations.weight.original1")), sd.get(
        p + "weight_g", sd.get(p + "parametrizations.weight.original0"))
    weight = g * v / v.norm(dim=(0, 1), keepdim=True)  # weight_norm(dim=2): a norm per kernel position
    kernel = config["encoder_pos_conv_kernel"]
    pos = F.conv1d(x.transpose(1, 2), weight, sd[p + "bias"], padding=kernel // 2,
                   groups=config["encoder_pos_conv_groups"])
    if kernel % 2 == 0:
        pos = pos[..., :-1]
    x = x + F.gelu(pos).transpose(1, 2)
    pre_ln = config["encoder_layer_norm_first"]
    if not pre_ln:
        x = _layer_norm(x, sd, "encoder.transformer.layer_norm.")
    transformer_input = x
    position_bias = None
    for i in range(config["encoder_num_layers"]):
        p = f"{LAYERS}{i}."
        if config["encoder_use_attention"][i]:
            attn_in = _layer_norm(x, sd, p + "layer_norm.") if pre_ln else x
            out, position_bias = _attention(attn_in, sd, config, i, position_bias)
            x = x + out
        ffn = config["encoder_use_feed_forward"][i]
        if pre_ln:
            if ffn:
                x = x + _feed_forward(_layer_norm(x, sd, p + "final_layer_norm."), sd, p)
        else:
            x = _layer_norm(x, sd, p + "layer_norm.")
            if ffn:
                x = x + _feed_forward(x, sd, p)
            x = _layer_norm(x, sd, p + "final_layer_norm.")
        states.append(x)
    return {"states": states, "transformer_input": transformer_input}


def _feed_forward(x: Tensor, sd: Dict[str, Tensor], p: str) -> Tensor:
    p += "feed_forward."
    h = F.gelu(F.linear(x, sd[p + "intermediate_dense.weight"], sd[p + "intermediate_dense.bias"]))
    return F.linear(h, sd[p + "output_dense.weight"], sd[p + "output_dense.bias"])


def final_layer_norm(ckpt: dict, state: Tensor) -> Tensor:
    """The encoder LayerNorm that pre-LN models apply to the last layer (the reference only in ``forward``)."""
    return _layer_norm(state, ckpt["state_dict"], "encoder.transformer.layer_norm.")
