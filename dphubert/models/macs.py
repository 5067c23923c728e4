"""Multiply-accumulate operations (MACs) of one encoder forward, counted analytically from the config.

Usage::

    from dphubert.models.macs import count_macs
    macs = count_macs(model_or_config, seconds=10.0)   # {"cnn", "projection", "pos_conv", "attention", "ffn",
    print(f"{macs['total']:.3g} MACs")                  #  "total", "frames", "seconds"}
    model.expected_macs(10.0)        # a gated model: differentiable in every gate's log_alpha
    model.deterministic_macs(10.0)   # == count_macs(model.prune(), 10.0)["total"]

What is counted (one utterance of ``seconds`` of 16 kHz audio, batch 1): every convolution and matrix product
of the forward pass: CNN layers (``frames_out * in_channels * out_channels * kernel``), the feature projection,
the grouped positional convolution, per layer the q/k/v/out projections, the attention scores and the weighted
sum (``T^2 * heads * head_dim`` each; WavLM adds its small per-head relative-position gate) and the two FFN
matrices. Normalisations, activations, softmax, biases and gate products are not counted.
``count_macs`` does not apply a model's gates: a gated (unpruned) model is counted at its full size, as it runs.
``gated_macs`` counts the same terms with every gated size replaced by its expected L0 value (``expected``) or
by what pruning keeps (``deterministic``); the frames do not depend on the gates.
"""

from typing import Any, Dict, List, Union

from .config import is_wavlm, normalize_config
from .gates import gate_units

SAMPLE_RATE = 16000
# WavLM's relative-position gate: a Linear(head_dim, 8) applied to every head of every frame.
WAVLM_GATE_OUTPUTS = 8


def conv_output_frames(frames: int, kernel: int, stride: int) -> int:
    """Output length of an unpadded 1-D convolution (0 when the input is shorter than the kernel)."""
    return max((frames - kernel) // stride + 1, 0)


def _sizes_from_config(cfg: Dict[str, Any]) -> Dict[str, List[Any]]:
    """Per-structure sizes of a config: CNN channels, and per layer (heads, attention on, FFN units, FFN on)."""
    heads, attention_on, units, ffn_on = [], [], [], []
    for i in range(cfg["encoder_num_layers"]):
        heads.append(_heads_and_dim(cfg, i)[0])
        attention_on.append(1 if cfg["encoder_use_attention"][i] else 0)
        units.append(cfg["encoder_ff_interm_features"][i])
        ffn_on.append(1 if cfg["encoder_use_feed_forward"][i] else 0)
    return {"channels": [c[0] for c in cfg["extractor_conv_layer_config"]], "heads": heads,
            "attention_on": attention_on, "units": units, "ffn_on": ffn_on}


def _sizes_from_gates(model, mode: str) -> Dict[str, List[Any]]:
    """The same sizes of a gated model: each gated one as ``gate_units(gate, full, mode)``."""
    channels = [gate_units(block.hard_concrete, block.conv.out_channels, mode)
                for block in model.feature_extractor.conv_layers]
    heads, attention_on, units, ffn_on = [], [], [], []
    for i, layer in enumerate(model.encoder.transformer.layers):
        attn, ffn = layer.attention, layer.feed_forward
        if attn is None:
            heads.append(0)
            attention_on.append(0)
        else:
            heads.append(gate_units(attn.hard_concrete_for_heads, attn.num_heads, mode))
            attention_on.append(gate_units(attn.hard_concrete_for_layer, 1, mode))
        if ffn is None:
            units.append(0)
            ffn_on.append(0)
        else:
            units.append(gate_units(ffn.hard_concrete_for_intermediate, ffn.intermediate_dense.out_features, mode))
            ffn_on.append(gate_units(ffn.hard_concrete_for_layer, 1, mode))
    return {"channels": channels, "heads": heads, "attention_on": attention_on, "units": units, "ffn_on": ffn_on}


def _macs(cfg: Dict[str, Any], sizes: Dict[str, List[Any]], seconds: float) -> Dict[str, Any]:
    """The MACs formula over sizes that are ints or (differentiable) tensors."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    samples = int(round(seconds * SAMPLE_RATE))

    cnn, frames, in_channels = 0, samples, 1
    for (_, kernel, stride), out_channels in zip(cfg["extractor_conv_layer_config"], sizes["channels"]):
        frames = conv_output_frames(frames, kernel, stride)
        cnn = cnn + frames * kernel * in_channels * out_channels
        in_channels = out_channels

    embed_dim = cfg["encoder_embed_dim"]
    projection = frames * embed_dim * in_channels

    # Padding kernel // 2 on both sides: an even kernel gives one extra output frame (dropped afterwards).
    pos_kernel, groups = cfg["encoder_pos_conv_kernel"], cfg["encoder_pos_conv_groups"]
    pos_frames = frames + 2 * (pos_kernel // 2) - pos_kernel + 1
    pos_conv = pos_frames * embed_dim * (embed_dim // groups) * pos_kernel

    attention, ffn = 0, 0
    for i in range(cfg["encoder_num_layers"]):
        head_dim = _heads_and_dim(cfg, i)[1]
        # q, k, v and out projections; the scores (q k^T) and the weighted sum of v; WavLM's gate
        per_head = 4 * frames * embed_dim * head_dim + 2 * frames * frames * head_dim
        if is_wavlm(cfg):
            per_head += frames * head_dim * WAVLM_GATE_OUTPUTS
        attention = attention + per_head * sizes["heads"][i] * sizes["attention_on"][i]
        ffn = ffn + 2 * frames * embed_dim * sizes["units"][i] * sizes["ffn_on"][i]

    parts = dict(cnn=cnn, projection=projection, pos_conv=pos_conv, attention=attention, ffn=ffn)
    return {**parts, "total": sum(parts.values()), "frames": frames, "seconds": seconds}


def count_macs(model_or_config: Union[Dict[str, Any], Any], seconds: float = 10.0) -> Dict[str, float]:
    """MACs of one forward on ``seconds`` of audio, with a breakdown by part (values are ints)."""
    config = model_or_config if isinstance(model_or_config, dict) else model_or_config.config
    cfg = normalize_config(config)
    return _macs(cfg, _sizes_from_config(cfg), seconds)


def gated_macs(model, mode: str, seconds: float = 10.0) -> Dict[str, Any]:
    """MACs of a gated model with its gated sizes at their ``expected`` (tensors) or ``deterministic`` values."""
    assert mode in ("expected", "deterministic")
    return _macs(model.config, _sizes_from_gates(model, mode), seconds)


def _heads_and_dim(cfg: Dict[str, Any], layer: int):
    if is_wavlm(cfg):  # WavLM splits the embedding into the original heads, however many remain
        head_dim = cfg["encoder_embed_dim"] // cfg["encoder_total_num_heads"][layer]
        return len(cfg["encoder_remaining_heads"][layer]), head_dim
    return cfg["encoder_num_heads"][layer], cfg["encoder_head_dim"]
