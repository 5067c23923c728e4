"""Multiply-accumulate operations (MACs) of one encoder forward, counted analytically from the config.

Usage::

    from dphubert.models.macs import count_macs
    macs = count_macs(model_or_config, seconds=10.0)   # {"cnn", "projection", "pos_conv", "attention", "ffn",
    print(f"{macs['total']:.3g} MACs")                  #  "total", "frames", "seconds"}

What is counted (one utterance of ``seconds`` of 16 kHz audio, batch 1): every convolution and matrix product
of the forward pass: CNN layers (``frames_out * in_channels * out_channels * kernel``), the feature projection,
the grouped positional convolution, per layer the q/k/v/out projections, the attention scores and the weighted
sum (``T^2 * heads * head_dim`` each; WavLM adds its small per-head relative-position gate) and the two FFN
matrices. Normalisations, activations, softmax, biases and gate products are not counted.
A model's gates are not applied: a gated (unpruned) model is counted at its full size, as it runs.
"""

from typing import Any, Dict, Union

from .config import is_wavlm, normalize_config

SAMPLE_RATE = 16000
# WavLM's relative-position gate: a Linear(head_dim, 8) applied to every head of every frame.
WAVLM_GATE_OUTPUTS = 8


def conv_output_frames(frames: int, kernel: int, stride: int) -> int:
    """Output length of an unpadded 1-D convolution (0 when the input is shorter than the kernel)."""
    return max((frames - kernel) // stride + 1, 0)


def count_macs(model_or_config: Union[Dict[str, Any], Any], seconds: float = 10.0) -> Dict[str, float]:
    """MACs of one forward on ``seconds`` of audio, with a breakdown by part (values are ints)."""
    config = model_or_config if isinstance(model_or_config, dict) else model_or_config.config
    cfg = normalize_config(config)
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    samples = int(round(seconds * SAMPLE_RATE))

    cnn, frames, in_channels = 0, samples, 1
    for out_channels, kernel, stride in cfg["extractor_conv_layer_config"]:
        frames = conv_output_frames(frames, kernel, stride)
        cnn += frames * in_channels * out_channels * kernel
        in_channels = out_channels

    embed_dim = cfg["encoder_embed_dim"]
    projection = frames * in_channels * embed_dim

    # Padding kernel // 2 on both sides: an even kernel gives one extra output frame (dropped afterwards).
    pos_kernel, groups = cfg["encoder_pos_conv_kernel"], cfg["encoder_pos_conv_groups"]
    pos_frames = frames + 2 * (pos_kernel // 2) - pos_kernel + 1
    pos_conv = pos_frames * embed_dim * (embed_dim // groups) * pos_kernel

    attention, ffn = 0, 0
    for i in range(cfg["encoder_num_layers"]):
        if cfg["encoder_use_attention"][i]:
            heads, head_dim = _heads_and_dim(cfg, i)
            inner = heads * head_dim
            attention += 4 * frames * embed_dim * inner  # q, k, v and out projections
            attention += 2 * frames * frames * inner  # scores (q k^T) and the weighted sum of v
            if is_wavlm(cfg):
                attention += frames * inner * WAVLM_GATE_OUTPUTS
        if cfg["encoder_use_feed_forward"][i]:
            ffn += 2 * frames * embed_dim * cfg["encoder_ff_interm_features"][i]

    parts = dict(cnn=cnn, projection=projection, pos_conv=pos_conv, attention=attention, ffn=ffn)
    return {**parts, "total": sum(parts.values()), "frames": frames, "seconds": seconds}


def _heads_and_dim(cfg: Dict[str, Any], layer: int):
    if is_wavlm(cfg):  # WavLM splits the embedding into the original heads, however many remain
        head_dim = cfg["encoder_embed_dim"] // cfg["encoder_total_num_heads"][layer]
        return len(cfg["encoder_remaining_heads"][layer]), head_dim
    return cfg["encoder_num_heads"][layer], cfg["encoder_head_dim"]
