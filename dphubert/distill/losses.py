"""Layer-wise distillation losses (DPHuBERT and DistilHuBERT forms).

Per layer (prediction and target ``(batch, frames, dim)``):
``l1_weight * L1 + l2_weight * MSE + cos_weight * C`` where L1/MSE are means over frames and dims, and
``C = -mean(cos)`` (``cos_type="raw"``, DPHuBERT) or ``-mean(log sigmoid(cos))`` (``"log_sig"``, DistilHuBERT),
the cosine being taken over ``dim`` for every frame. Layers are averaged with equal weights. The loss is computed
in float32 whatever the autocast dtype of the inputs.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def layer_loss(pred: Tensor, target: Tensor, l1_weight: float = 1.0, cos_weight: float = 1.0,
               l2_weight: float = 0.0, cos_type: str = "raw") -> Tuple[Tensor, Dict[str, Tensor]]:
    """The loss of one layer and its detached terms ``{"l1", "cos", "l2"?}`` (``cos`` is the mean similarity)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred, target = pred.float(), target.float()
    cos = F.cosine_similarity(pred, target, dim=-1)
    if cos_type == "raw":
        cos_loss = -cos.mean()
    elif cos_type == "log_sig":
        cos_loss = -F.logsigmoid(cos).mean()
    else:
        raise ValueError(f"cos_type must be 'raw' or 'log_sig', got {cos_type!r}")
    l1 = F.l1_loss(pred, target)
    loss = l1_weight * l1 + cos_weight * cos_loss
    terms = {"l1": l1.detach(), "cos": cos.mean().detach()}
    if l2_weight:
        l2 = F.mse_loss(pred, target)
        loss = loss + l2_weight * l2
        terms["l2"] = l2.detach()
    return loss, terms


def distill_loss(preds: Sequence[Tensor], targets: Sequence[Tensor], layers: Sequence[int],
                 **weights) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Average of ``layer_loss`` over layers; terms: ``l1``, ``cos`` (layer means) and ``layer<i>`` losses."""
    if not (len(preds) == len(targets) == len(layers)) or not layers:
        raise ValueError(f"{len(preds)} predictions, {len(targets)} targets and {len(layers)} layers")
    losses: List[Tensor] = []
    sums: Dict[str, Tensor] = {}
    per_layer: Dict[str, Tensor] = {}
    for layer, pred, target in zip(layers, preds, targets):
        loss, terms = layer_loss(pred, target, **weights)
        losses.append(loss)
        per_layer[f"layer{layer}"] = loss.detach()
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value
    total = torch.stack(losses).mean()
    terms = {name: value / len(layers) for name, value in sums.items()}
    terms.update(per_layer)
    return total, terms
