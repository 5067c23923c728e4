"""Import a torchaudio ``Wav2Vec2Model`` state dict (HuBERT, wav2vec 2.0 or WavLM), inferring its config.

Typical sources: ``torch.save(torchaudio.models.hubert_base().state_dict(), "x.pt")`` or
``torchaudio.pipelines.HUBERT_BASE.get_model().state_dict()``. The names are ours already except the
positional conv's weight-norm parametrisation, torchaudio's fine-tuning head ``aux.*`` (dropped) and, for WavLM,
``attention.attention.in_proj_weight`` (``nn.MultiheadAttention``; split into q/k/v).

What the tensor shapes tell: CNN channels and kernels, CNN norm layout (group norm on conv 0 only, or a layer
norm on every conv), conv bias, embedding dim, number of layers, FFN widths, positional conv kernel and groups,
and for WavLM the heads and relative-position buckets. What they cannot tell, and the assumption made (each one
logged; override with ``config={...}`` / ``--config``, or ``num_heads`` / ``--num-heads``):

* CNN strides: the standard ones for the kernel (10 -> 5, 3 -> 2, 2 -> 2);
* attention heads (non-WavLM): ``embed_dim / 64``;
* ``encoder_layer_norm_first`` (pre-LN) and ``normalize_waveform``: true exactly for a layer-norm CNN, as in
  every torchaudio factory and bundle (Large models);
* WavLM ``encoder_max_distance``: 800; ``model_type`` of a non-WavLM model: ``hubert`` (informational only).
"""

from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from ..models.checkpoint import normalize_state_dict, read_checkpoint
from ..models.model import Wav2Vec2Model
from .common import ConvertError, StateDict, build_model, head_fields, log, num_layers_in, tensor_dict

_STRIDE_BY_KERNEL = {10: 5, 3: 2, 2: 2}
_CONV = "feature_extractor.conv_layers."
_LAYERS = "encoder.transformer.layers."
_POS_V = "encoder.transformer.pos_conv_embed.conv.weight_v"


def from_torchaudio(path_or_state_dict: Union[str, Path, StateDict], config: Optional[Dict[str, Any]] = None,
                    num_heads: Optional[int] = None, trust_checkpoint: bool = False,
                    normalize_waveform: Optional[bool] = None) -> Wav2Vec2Model:
    """Our model (eval mode) from a torchaudio state dict or a file holding one.

    ``config``: our config keys that replace inferred values; ``num_heads``: heads per layer (non-WavLM).
    """
    if isinstance(path_or_state_dict, dict):
        source, obj = "state_dict", path_or_state_dict
    else:
        source = str(path_or_state_dict)
        obj = read_checkpoint(path_or_state_dict, trust_checkpoint)
    state = _unwrap(obj, source)
    state = split_in_proj(normalize_state_dict(state))
    if _CONV + "0.conv.weight" not in state or not any(k.startswith(_LAYERS) for k in state):
        first = sorted(state)[:4]
        raise ConvertError(f"{source}: not a torchaudio wav2vec2/HuBERT/WavLM state dict (no {_CONV}0.conv.weight "
                           f"or {_LAYERS}N.*; first keys {first})")
    inferred = infer_config(state, num_heads, source, overridden=set(config or {}))
    inferred.update(config or {})
    if normalize_waveform is not None:
        inferred["normalize_waveform"] = bool(normalize_waveform)
    return build_model(inferred, state, source)


def _unwrap(obj: Any, source: str) -> StateDict:
    if isinstance(obj, torch.nn.Module):  # a whole pickled model (only readable with trust_checkpoint)
        return obj.state_dict()
    if tensor_dict(obj):
        return obj
    if isinstance(obj, dict) and "config" in obj and "state_dict" in obj:
        raise ConvertError(f"{source}: a model file with its own config; use --from dphubert")
    if isinstance(obj, dict) and "model" in obj and ("cfg" in obj or "args" in obj):
        raise ConvertError(f"{source}: a fairseq checkpoint; use --from fairseq")
    keys = sorted(map(str, obj))[:6] if isinstance(obj, dict) else []
    raise ConvertError(f"{source}: not a state dict of tensors (a {type(obj).__name__} with keys {keys}); save "
                       f"model.state_dict() of a torchaudio Wav2Vec2Model")


def split_in_proj(state: StateDict) -> StateDict:
    """torchaudio WavLM keeps ``nn.MultiheadAttention`` (packed q, k, v); ours has separate projections."""
    out = {}
    for key, value in state.items():
        if ".attention.attention." not in key:
            out[key] = value
            continue
        stem, name = key.split(".attention.attention.")
        if name.startswith("in_proj_"):
            kind = name[len("in_proj_"):]
            for proj, part in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                out[f"{stem}.attention.{proj}_proj.{kind}"] = part.clone()
        else:  # out_proj.weight / out_proj.bias
            out[f"{stem}.attention.{name}"] = value
    return out


def infer_config(state: StateDict, num_heads: Optional[int] = None, source: str = "state_dict",
                 overridden: frozenset = frozenset()) -> Dict[str, Any]:
    """Our config from tensor shapes (see the module docstring for what is assumed)."""
    def note(key: str, message: str, *args) -> None:
        if key not in overridden:
            log.info(message, *args)

    conv = []
    for i in range(num_layers_in(state, _CONV)):
        out_channels, _, kernel = state[f"{_CONV}{i}.conv.weight"].shape
        stride = _STRIDE_BY_KERNEL.get(kernel)
        if stride is None and "extractor_conv_layer_config" not in overridden:
            raise ConvertError(f"{source}: cannot infer the stride of conv {i} (kernel {kernel}); give "
                               f"extractor_conv_layer_config in --config")
        conv.append([out_channels, kernel, stride or 1])
    layer_norm_cnn = f"{_CONV}1.layer_norm.weight" in state
    mode = "layer_norm" if layer_norm_cnn else "group_norm"
    note("extractor_conv_layer_config", "assuming the standard CNN strides %s", [c[2] for c in conv])

    projection = state.get("encoder.feature_projection.projection.weight")
    if projection is None:
        raise ConvertError(f"{source}: missing encoder.feature_projection.projection.weight; not a torchaudio "
                           f"wav2vec2/HuBERT/WavLM state dict")
    embed_dim = projection.shape[0]
    n = num_layers_in(state, _LAYERS)
    ffn = [state[f"{_LAYERS}{i}.feed_forward.intermediate_dense.weight"].shape[0]
           if f"{_LAYERS}{i}.feed_forward.intermediate_dense.weight" in state else 0 for i in range(n)]
    pos_v = state.get(_POS_V)
    if pos_v is None:
        raise ConvertError(f"{source}: missing {_POS_V} (or its parametrizations.weight.original1 form)")
    config: Dict[str, Any] = dict(
        extractor_mode=mode,
        extractor_conv_layer_config=conv,
        extractor_conv_bias=f"{_CONV}0.conv.bias" in state,
        encoder_embed_dim=embed_dim,
        encoder_pos_conv_kernel=pos_v.shape[2],
        encoder_pos_conv_groups=embed_dim // pos_v.shape[1],
        encoder_num_layers=n,
        encoder_ff_interm_features=ffn[0] if len(set(ffn)) == 1 else ffn,
        encoder_layer_norm_first=layer_norm_cnn,
        normalize_waveform=layer_norm_cnn,
    )
    note("encoder_layer_norm_first", "assuming a %s transformer and normalize_waveform=%s for a %s CNN (as in "
         "torchaudio's factories)", "pre-LN" if layer_norm_cnn else "post-LN", layer_norm_cnn, mode)

    rel_embed = state.get(f"{_LAYERS}0.attention.rel_attn_embed.weight")
    if rel_embed is not None:
        buckets, heads = rel_embed.shape
        config.update(model_type="wavlm", **head_fields("wavlm", heads, n, buckets, 800))
        note("encoder_max_distance", "assuming WavLM max_distance=800 (torchaudio's default)")
        return config
    if num_heads is None:
        num_heads = max(embed_dim // 64, 1)
        note("encoder_num_heads", "assuming %d attention heads (embed_dim / 64); pass --num-heads if different",
             num_heads)
    if embed_dim % num_heads and "encoder_num_heads" not in overridden:
        raise ConvertError(f"{source}: embed dim {embed_dim} is not divisible by {num_heads} heads; pass --num-heads")
    config.update(model_type="hubert", **head_fields("hubert", num_heads, n))
    note("model_type", "calling the model 'hubert' (HuBERT and wav2vec 2.0 look alike; informational only)")
    return config
