"""Linear maps from student hidden states to teacher hidden states.

``LayerProjections`` (DPHuBERT): student layer ``i`` regresses teacher layer ``i`` through a linear projection
initialised to the identity with zero bias; layers of one group share a projection (the reference shares one for
layer 0 and one for {4, 8, 12}). In model files the projections are stored like the released DPHuBERT files:
``distill_linear_projs = {"<k>.weight", "<k>.bias"}`` with one entry per distilled layer ``k`` (in the order of
``layers``; shared entries repeated), plus ``distill = {"layers": [...], "groups": [[...], ...]}``.

``PredictionHeads`` (DistilHuBERT): one head per predicted teacher layer, all fed the last student layer.

Layer 0 is what the task's ``layer0`` says (``Wav2Vec2Model.extract_features``): the feature-projection output
before the positional conv (``projection``, distill_prune's default, the paper's code) or the transformer input
(``transformer_input``, HF ``output_hidden_states``'s state 0).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import DistillConfigError, TeacherMismatchError


def default_distill_layers(num_layers: int) -> List[int]:
    """Layer 0 and every third of the depth: [0, 4, 8, 12] for 12 layers, [0, 8, 16, 24] for 24."""
    return sorted({round(k * num_layers / 3) for k in range(4)})


def default_pred_layers(num_layers: int) -> List[int]:
    """DistilHuBERT's targets: every third of the depth, [4, 8, 12] for 12 layers."""
    return [layer for layer in default_distill_layers(num_layers) if layer > 0]


def resolve_layers_and_groups(layers: Optional[Sequence[int]], groups: Optional[Sequence[Sequence[int]]],
                              num_layers: int, source: str = "config"):
    """Fill defaults and check that ``groups`` partition ``layers`` and that every layer exists."""
    if groups is not None:
        groups = [list(g) if isinstance(g, (list, tuple)) else [g] for g in groups]
    if layers is None:
        layers = sorted({x for g in groups for x in g}) if groups else default_distill_layers(num_layers)
    layers = list(layers)
    if not layers or any(not isinstance(x, int) or isinstance(x, bool) for x in layers):
        raise DistillConfigError(f"{source}: distill_layers must be a non-empty list of integers, got {layers}")
    if len(set(layers)) != len(layers):
        raise DistillConfigError(f"{source}: distill_layers has duplicates: {layers}")
    bad = [x for x in layers if not 0 <= x <= num_layers]
    if bad:
        raise DistillConfigError(f"{source}: distill_layers {bad} outside 0..{num_layers} (the teacher has "
                                 f"{num_layers} transformer layers; 0 is the transformer input)")
    if groups is None:
        rest = [x for x in layers if x != 0]
        groups = [[0], rest] if 0 in layers and rest else [layers]
    flat = [x for g in groups for x in g]
    if sorted(flat) != sorted(layers) or any(not g for g in groups):
        raise DistillConfigError(f"{source}: projection_groups {groups} must split distill_layers {layers} into "
                                 f"non-empty groups, each layer in exactly one group")
    return layers, groups


class LayerProjections(nn.Module):
    def __init__(self, layers: Sequence[int], groups: Sequence[Sequence[int]], in_dim: int, out_dim: int):
        super().__init__()
        self.layers = list(layers)
        self.groups = [list(g) for g in groups]
        self.in_dim, self.out_dim = in_dim, out_dim
        self.group_of = {layer: index for index, group in enumerate(self.groups) for layer in group}
        self.projs = nn.ModuleList(nn.Linear(in_dim, out_dim) for _ in self.groups)
        with torch.no_grad():
            for proj in self.projs:
                proj.weight.copy_(torch.eye(out_dim, in_dim))
                proj.bias.zero_()

    def forward(self, states: Sequence[Tensor]) -> List[Tensor]:
        """``states``: all hidden states of the student; returns the projected ones of ``self.layers``."""
        return [self.projs[self.group_of[layer]](states[layer]) for layer in self.layers]

    def metadata(self) -> Dict[str, list]:
        return {"layers": list(self.layers), "groups": [list(g) for g in self.groups]}

    def per_layer_state_dict(self) -> Dict[str, Tensor]:
        """The model-file form: one ``<k>.weight`` / ``<k>.bias`` per distilled layer (shared ones repeated)."""
        state = {}
        for k, layer in enumerate(self.layers):
            proj = self.projs[self.group_of[layer]]
            state[f"{k}.weight"] = proj.weight.detach().cpu().clone()
            state[f"{k}.bias"] = proj.bias.detach().cpu().clone()
        return state

    @classmethod
    def from_per_layer_state(cls, state: Dict[str, Tensor], layers: Optional[Sequence[int]] = None,
                             groups: Optional[Sequence[Sequence[int]]] = None, num_layers: Optional[int] = None,
                             source: str = "model file") -> "LayerProjections":
        """Rebuild from ``distill_linear_projs``; without ``groups``, layers with equal weights share one."""
        count = len([k for k in state if k.endswith(".weight")])
        if any(f"{k}.weight" not in state or f"{k}.bias" not in state for k in range(count)) or count == 0:
            raise TeacherMismatchError(f"{source}: distill_linear_projs must hold '<k>.weight' and '<k>.bias' "
                                       f"for k = 0..n-1, got keys {sorted(state)[:8]}")
        if layers is None:
            if num_layers is None or len(default_distill_layers(num_layers)) != count:
                raise TeacherMismatchError(f"{source}: {count} projections but no 'distill' layer list; "
                                           f"re-run distill_prune to get a complete file")
            layers = default_distill_layers(num_layers)
        layers = list(layers)
        if len(layers) != count:
            raise TeacherMismatchError(f"{source}: {count} projections for {len(layers)} layers {layers}")
        if groups is None:
            groups = []
            for k, layer in enumerate(layers):
                for group in groups:
                    first = layers.index(group[0])
                    if all(torch.equal(state[f"{k}.{p}"], state[f"{first}.{p}"]) for p in ("weight", "bias")):
                        group.append(layer)
                        break
                else:
                    groups.append([layer])
        out_dim, in_dim = state["0.weight"].shape
        projections = cls(layers, groups, in_dim, out_dim)
        with torch.no_grad():
            for index, group in enumerate(projections.groups):
                k = layers.index(group[0])
                projections.projs[index].weight.copy_(state[f"{k}.weight"])
                projections.projs[index].bias.copy_(state[f"{k}.bias"])
        return projections


HEAD_TYPES = ("mlp", "linear")


class PredictionHeads(nn.Module):
    """DistilHuBERT heads on the last student layer, one per teacher layer of ``pred_layers``.

    ``mlp`` (s3prl's DistilHuBERT, ``out_layer_type: expand-last``): ``Linear(dim, dim x N)`` -> GELU, whose k-th
    slice of ``dim`` features feeds head k's ``Linear(dim, teacher_dim)`` (s3prl's ``SplitLinear``); ``linear``: one
    ``Linear(dim, teacher_dim)`` per head on the last layer itself.
    """

    def __init__(self, pred_layers: Sequence[int], in_dim: int, out_dim: int, head_type: str = "mlp"):
        super().__init__()
        if head_type not in HEAD_TYPES:
            raise DistillConfigError(f"head_type must be one of {list(HEAD_TYPES)}, got {head_type!r}")
        self.layers = list(pred_layers)
        self.head_type = head_type
        self.in_dim = in_dim
        self.expand = nn.Linear(in_dim, in_dim * len(self.layers)) if head_type == "mlp" else None
        self.heads = nn.ModuleList(nn.Linear(in_dim, out_dim) for _ in self.layers)

    def forward(self, last_state: Tensor) -> List[Tensor]:
        if self.expand is None:
            return [head(last_state) for head in self.heads]
        hidden = F.gelu(self.expand(last_state)).split(self.in_dim, dim=-1)
        return [head(part) for head, part in zip(self.heads, hidden)]
