"""Students of the three methods, built from the teacher (or a pruned file), and the teacher itself.

- ``gated_student``: Step 1 of DPHuBERT, a full copy of the teacher with HardConcrete gates on ``prune_units``.
- ``load_pruned_student``: Step 2, a physically pruned model file with its ``distill_linear_projs``.
- ``distilhubert_student``: the baseline as s3prl builds DistilHuBERT (``upstream/distiller/model.py``,
  ``pretrain/distiller/pretrain_expert.py``): no LayerNorm before the feature projection; the teacher's CNN,
  feature projection, positional conv and first ``N`` transformer layers copied, the encoder LayerNorm fresh;
  dropouts 0.1 (attention, FFN activation, residual), none after the projection, no LayerDrop. ``N`` (and, if
  needed, one FFN width for all layers) is chosen here to match a parameter budget: that sizing is ours.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from dphubert.models import Wav2Vec2Model, model_from_checkpoint, read_checkpoint
from dphubert.models.config import PRUNE_SWITCHES

from .config import PRUNE_UNITS
from .errors import DistillConfigError, DistillError

# Student config keys that may differ from the teacher's (the weights are copied, so shapes must not change).
_OVERRIDABLE = ("encoder_projection_dropout", "encoder_attention_dropout", "encoder_ff_interm_dropout",
                "encoder_dropout", "encoder_layer_drop")


def load_teacher(path: str | Path, trust_checkpoint: bool = False) -> Wav2Vec2Model:
    ckpt = read_checkpoint(path, trust_checkpoint)
    teacher = model_from_checkpoint(ckpt, str(path))
    if teacher.gates():
        raise DistillError(f"{path}: the teacher has HardConcrete gates (a distill_prune student); pass an "
                           f"ungated model, e.g. the converted original or a pruned file")
    return teacher


def apply_overrides(config: Dict[str, Any], overrides: Dict[str, Any], source: str = "student_overrides") -> dict:
    bad = sorted(set(overrides) - set(_OVERRIDABLE))
    if bad:
        raise DistillConfigError(f"{source}: cannot override {bad} in the student (the teacher's weights are "
                                 f"copied); allowed keys: {list(_OVERRIDABLE)}")
    config = copy.deepcopy(config)
    config.update(overrides)
    return config


def without_layer_drop(overrides: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The student overrides of Steps 1 and 2: no LayerDrop unless they set ``encoder_layer_drop`` (the paper's
    distillation forward runs every layer; the teacher's rate, 0.05 for fairseq Base models, is not copied)."""
    return {"encoder_layer_drop": 0.0, **(overrides or {})}


def gated_student(teacher: Wav2Vec2Model, prune_units, overrides: Optional[Dict[str, Any]] = None) -> Wav2Vec2Model:
    """A copy of ``teacher`` with gates on ``prune_units`` (``conv``, ``head``, ``attlayer``, ``interm``,
    ``ffnlayer``); LayerDrop off unless ``overrides`` sets ``encoder_layer_drop``."""
    config = apply_overrides(teacher.config, without_layer_drop(overrides))
    for unit, switch in PRUNE_UNITS.items():
        config[switch] = unit in prune_units
    student = Wav2Vec2Model(config)
    result = student.load_state_dict(teacher.state_dict(), strict=False)
    stray = [k for k in result.missing_keys if not k.endswith("log_alpha")] + list(result.unexpected_keys)
    if stray:
        raise DistillError(f"teacher weights do not fit the gated student: {stray[:6]}")
    return student.train()


def load_pruned_student(path: str | Path, trust_checkpoint: bool = False) -> Tuple[Wav2Vec2Model, dict, dict]:
    """``(student, distill_linear_projs, distill metadata)`` from a physically pruned model file."""
    ckpt = read_checkpoint(path, trust_checkpoint)
    student = model_from_checkpoint(ckpt, str(path))
    if student.gates():
        raise DistillError(f"{path}: the student still has HardConcrete gates; prune it first: "
                           f"python -m dphubert.bin.prune --ckpt {path} --out pruned.pt")
    projections = ckpt.get("distill_linear_projs")
    if not projections:
        raise DistillError(f"{path}: no 'distill_linear_projs' in the file; Step 2 continues from the projections "
                           f"of Step 1 (distill_prune's last.pt, pruned with python -m dphubert.bin.prune)")
    return student.train(), projections, dict(ckpt.get("distill") or {})


# ----- DistilHuBERT --------------------------------------------------------------------------------------------
_PER_LAYER = ("encoder_use_attention", "encoder_use_feed_forward", "encoder_ff_interm_features",
              "encoder_num_heads", "encoder_total_num_heads", "encoder_remaining_heads")


# s3prl's distiller config (dropout, attention_dropout, activation_dropout 0.1, encoder_layerdrop 0; no dropout after
# its post_extract_proj); student_overrides apply on top.
DISTILLER_DROPOUTS = {"encoder_projection_dropout": 0.0, "encoder_attention_dropout": 0.1,
                      "encoder_ff_interm_dropout": 0.1, "encoder_dropout": 0.1, "encoder_layer_drop": 0.0}


def truncated_config(teacher_config: Dict[str, Any], num_layers: int, ffn_width: Optional[int]) -> Dict[str, Any]:
    """The baseline's config: the teacher's first ``num_layers`` layers (FFN width ``ffn_width`` if given), no
    LayerNorm before the feature projection (s3prl's distiller has none), no gates."""
    config = copy.deepcopy(teacher_config)
    config["encoder_projection_layer_norm"] = False
    config["encoder_num_layers"] = num_layers
    for key in _PER_LAYER:
        if key in config:
            config[key] = config[key][:num_layers]
    if ffn_width is not None:
        config["encoder_ff_interm_features"] = [ffn_width] * num_layers
        config["encoder_use_feed_forward"] = [True] * num_layers
    for switch in PRUNE_SWITCHES:
        config[switch] = False
    return config


def count_params(config: Dict[str, Any]) -> int:
    with torch.device("meta"):
        return Wav2Vec2Model(config).num_params()


def plan_distilhubert(teacher: Wav2Vec2Model, target_params: Optional[int] = None, num_layers: Optional[int] = None,
                      ffn_width: Optional[int] = None) -> Tuple[int, Optional[int]]:
    """Choose ``(num_layers, ffn_width)`` (``ffn_width=None``: the teacher's widths).

    Without a target: ``num_layers`` (default 2, DistilHuBERT's). With ``target_params``: the most full-width
    layers that fit; if that leaves more than 1% of the budget unused, one layer more with the FFN width of all
    layers reduced to fill the budget. ``num_layers`` / ``ffn_width`` given explicitly are kept.
    """
    depth = teacher.num_layers
    if num_layers is not None and not 1 <= num_layers <= depth:
        raise DistillConfigError(f"num_layers must be in 1..{depth} (the teacher's depth), got {num_layers}")
    if target_params is None:
        return (num_layers or 2), ffn_width
    if ffn_width is not None:
        return (num_layers or 2), ffn_width
    cfg = teacher.config
    dim = cfg["encoder_embed_dim"]
    if num_layers is None:
        fits = [n for n in range(1, depth + 1) if count_params(truncated_config(cfg, n, None)) <= target_params]
        num_layers = max(fits) if fits else 1
        full = count_params(truncated_config(cfg, num_layers, None))
        if full <= target_params and (target_params - full <= 0.01 * target_params or num_layers == depth):
            return num_layers, None
        if full <= target_params:
            num_layers += 1
    base = count_params(truncated_config(cfg, num_layers, 0))
    per_unit = num_layers * (2 * dim + 1)  # one FFN unit in every layer: a row, a column and a bias
    widest = max(cfg["encoder_ff_interm_features"][:num_layers])
    width = math.floor((target_params - base) / per_unit)
    if width < 1:
        raise DistillConfigError(f"target_params {target_params:,} is below the smallest {num_layers}-layer "
                                 f"student ({base + per_unit:,} parameters with one FFN unit per layer); "
                                 f"raise it or lower num_layers")
    return num_layers, min(width, widest)


def distilhubert_student(teacher: Wav2Vec2Model, num_layers: int, ffn_width: Optional[int],
                         overrides: Optional[Dict[str, Any]] = None) -> Wav2Vec2Model:
    """The teacher's CNN, feature projection, positional conv and first ``num_layers`` layers (FFNs cut to their
    first ``ffn_width`` units); the encoder LayerNorm as initialised (s3prl copies every part but that one)."""
    config = apply_overrides(truncated_config(teacher.config, num_layers, ffn_width),
                             {**DISTILLER_DROPOUTS, **(overrides or {})})
    student = Wav2Vec2Model(config)
    source = teacher.state_dict()
    state = {}
    for key, target in student.state_dict().items():
        if key.startswith("encoder.transformer.layer_norm."):
            state[key] = target.clone()
            continue
        value = source.get(key)
        if value is None:
            raise DistillError(f"cannot initialise student {key}: the teacher has no such weight")
        if value.shape != target.shape:  # an FFN cut to its first units
            if key.endswith("intermediate_dense.weight") or key.endswith("intermediate_dense.bias"):
                value = value[: target.shape[0]]
            elif key.endswith("output_dense.weight"):
                value = value[:, : target.shape[1]]
            else:
                raise DistillError(f"cannot initialise student {key} {tuple(target.shape)} from the teacher's "
                                   f"{tuple(value.shape)}")
        state[key] = value.clone()
    student.load_state_dict(state, strict=True)
    return student.train()
