"""The layout of the files the reference DPHuBERT code writes, read and written ("release" files).

The released ``DPHuBERT-sp0.75.pth`` / ``DPWavLM-sp0.75.pth`` and the outputs of the reference code's
``prune.py`` and ``save_final_ckpt.py`` are ``{"state_dict", "config", "distill_linear_projs"}``:

- ``state_dict``: our parameter names (both follow torchaudio) plus ``feature_extractor.dummy_weight``, the
  reference's per-channel scale of the CNN output before the feature projection's LayerNorm. It is all ones
  before pruning; the reference ``prune()`` folds the last CNN layer's soft gate values into it and slices it
  to the kept channels. It is exactly our ``encoder.feature_projection.input_scale`` (same place in the forward).
- ``config``: exactly the arguments of the reference's ``wav2vec2_model`` (``WAV2VEC2_KEYS``) or, for WavLM (a
  config with ``encoder_remaining_heads``), of its ``wavlm_model`` (``WAVLM_KEYS``). Projects that vendor the
  reference code call ``wav2vec2_model(**ckpt["config"])``: any other key (our ``model_type``,
  ``encoder_projection_input_scale``) raises TypeError there.
- ``distill_linear_projs``: the state dict of the reference's ``nn.ModuleList`` of projections, one
  ``<k>.weight`` / ``<k>.bias`` per distilled layer (the layout our model files use too).

``from_release_layout`` turns such a state dict into ours (used by ``load_model`` for every file);
``release_checkpoint`` writes one of our models in that layout (``convert --to release``).
"""

import copy
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from .checkpoint import CheckpointError
from .config import PRUNE_SWITCHES, has_projection_layer_norm, is_wavlm

DUMMY_WEIGHT = "feature_extractor.dummy_weight"
INPUT_SCALE = "encoder.feature_projection.input_scale"

_COMMON_KEYS = (
    "extractor_mode", "extractor_conv_layer_config", "extractor_conv_bias", "encoder_embed_dim",
    "encoder_projection_dropout", "encoder_pos_conv_kernel", "encoder_pos_conv_groups", "encoder_num_layers",
    "encoder_use_attention", "encoder_use_feed_forward",
)
_TAIL_KEYS = (
    "encoder_attention_dropout", "encoder_ff_interm_features", "encoder_ff_interm_dropout", "encoder_dropout",
    "encoder_layer_norm_first", "encoder_layer_drop", "aux_num_out", "normalize_waveform", *PRUNE_SWITCHES,
)
# The reference's wav2vec2_model / wavlm_model arguments (pyf98/DPHuBERT wav2vec2/model.py), in their order.
WAV2VEC2_KEYS = (*_COMMON_KEYS, "encoder_num_heads", "encoder_head_dim", *_TAIL_KEYS)
WAVLM_KEYS = (*_COMMON_KEYS, "encoder_total_num_heads", "encoder_remaining_heads", "encoder_num_buckets",
              "encoder_max_distance", *_TAIL_KEYS)


def from_release_layout(config: Dict[str, Any], state: Dict[str, Tensor], source: str
                        ) -> Tuple[Dict[str, Any], Dict[str, Tensor]]:
    """Move ``feature_extractor.dummy_weight`` to our input scale (dropped when it is all ones).

    ``config`` is a normalised config; both are returned as new dicts, unchanged when there is no dummy weight.
    """
    if DUMMY_WEIGHT not in state:
        return config, state
    state = dict(state)
    scale = state.pop(DUMMY_WEIGHT)
    channels = config["extractor_conv_layer_config"][-1][0]
    if tuple(scale.shape) != (channels,):
        raise CheckpointError(
            f"{source}: {DUMMY_WEIGHT} has shape {tuple(scale.shape)} but the last CNN layer has {channels} "
            f"channels (extractor_conv_layer_config); the file's config and weights do not belong together")
    if INPUT_SCALE in state:  # both scales multiply the same features
        scale = scale * state[INPUT_SCALE]
    elif bool((scale == 1).all()):
        return config, state
    config = dict(config, encoder_projection_input_scale=True)
    state[INPUT_SCALE] = scale.to(torch.float32)
    return config, state


def release_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """Exactly the reference factory's arguments; CNN layers as tuples, as the reference's prune() writes them."""
    keys = WAVLM_KEYS if is_wavlm(config) else WAV2VEC2_KEYS
    out = {key: copy.deepcopy(config[key]) for key in keys}
    out["extractor_conv_layer_config"] = [tuple(int(v) for v in layer) for layer in out["extractor_conv_layer_config"]]
    out["aux_num_out"] = None  # our models carry no fine-tuning head (load_model drops aux.*)
    return out


def release_checkpoint(model, distill_linear_projs: Optional[Dict[str, Tensor]] = None,
                       source: str = "model") -> Dict[str, Any]:
    """``model`` (ungated) as ``{"state_dict", "config", "distill_linear_projs"}`` in the reference layout.

    Layers whose heads (or FFN units) were all pruned by our ``prune()`` keep their block with zero heads and the
    output projection's bias (``encoder_use_attention`` True, ``encoder_num_heads`` 0): the reference code builds
    and runs such a block, so the file stays exact.
    """
    if not has_projection_layer_norm(model.config):
        raise CheckpointError(f"{source}: has no LayerNorm before the feature projection (a DistilHuBERT-style "
                              f"student), which the reference code's model cannot express; use the file as it is")
    if model.gates():
        raise CheckpointError(f"{source}: still has pruning gates, which the released layout cannot hold; prune it "
                              f"first: python -m dphubert.bin.prune --ckpt {source} --out pruned.pt")
    state: Dict[str, Tensor] = {}
    scale = model.encoder.feature_projection.input_scale
    channels = model.config["extractor_conv_layer_config"][-1][0]
    state[DUMMY_WEIGHT] = (torch.ones(channels) if scale is None else scale.detach().cpu().clone()).float()
    for key, value in model.state_dict().items():
        if key != INPUT_SCALE:
            state[key] = value.detach().cpu().clone()
    projections = {k: v.detach().cpu().clone() for k, v in (distill_linear_projs or {}).items()}
    return {"state_dict": state, "config": release_config(model.config), "distill_linear_projs": projections}
