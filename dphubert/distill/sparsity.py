"""Lagrangian sparsity control (CoFi style) and the limits of what a gated student can reach.

With ``s_hat = 1 - E[params] / N_teacher`` (differentiable in the gates' log_alpha) and the target
``t(step) = T * min(1, step / sparsity_warmup_steps)``, the regulariser is
``L_reg = lambda1 * (s_hat - t) + lambda2 * (s_hat - t)^2``. The multipliers start at 0 and are *maximised*
(their optimizer group has ``maximize=True``) while the model and log_alpha minimise, so any gap to the target
grows the pressure until the expected sparsity follows the target.

``min_num_params`` is the student's size with every gated unit at zero (conv layers keep one channel: a CNN
without channels cannot be pruned into a model), hence ``max_sparsity``; ``check_target_sparsity`` refuses a
target above it before training starts.
"""

from __future__ import annotations

import copy
from typing import Dict

import torch
from torch import Tensor, nn

from dphubert.models import Wav2Vec2Model
from dphubert.models.config import PRUNE_SWITCHES, is_wavlm

from .errors import SparsityError


def target_at(step: int, target: float, warmup_steps: int) -> float:
    if warmup_steps <= 0:
        return target
    return target * min(1.0, step / warmup_steps)


class LagrangianRegularizer(nn.Module):
    def __init__(self, teacher_num_params: int, target_sparsity: float, warmup_steps: int):
        super().__init__()
        self.teacher_num_params = int(teacher_num_params)
        self.target_sparsity = float(target_sparsity)
        self.warmup_steps = int(warmup_steps)
        self.lambda1 = nn.Parameter(torch.zeros(()))
        self.lambda2 = nn.Parameter(torch.zeros(()))

    def forward(self, student: Wav2Vec2Model, step: int) -> Dict[str, Tensor]:
        """``{"reg": loss, "expected_sparsity", "target_sparsity", "expected_params", "lambda1", "lambda2"}``."""
        expected = student.expected_num_params().float()
        sparsity = 1.0 - expected / self.teacher_num_params
        target = target_at(step, self.target_sparsity, self.warmup_steps)
        gap = sparsity - target
        reg = self.lambda1 * gap + self.lambda2 * gap * gap
        return {"reg": reg, "expected_sparsity": sparsity.detach(), "target_sparsity": torch.tensor(target),
                "expected_params": expected.detach(), "lambda1": self.lambda1.detach().clone(),
                "lambda2": self.lambda2.detach().clone()}


def _minimal_config(student: Wav2Vec2Model) -> dict:
    cfg = copy.deepcopy(student.config)
    for i, block in enumerate(student.feature_extractor.conv_layers):
        if block.hard_concrete is not None:
            cfg["extractor_conv_layer_config"][i][0] = 1
    for i, layer in enumerate(student.encoder.transformer.layers):
        attn, ffn = layer.attention, layer.feed_forward
        if attn is not None:
            drop_block = attn.hard_concrete_for_layer is not None
            if drop_block:
                cfg["encoder_use_attention"][i] = False
            if drop_block or attn.hard_concrete_for_heads is not None:
                if is_wavlm(cfg):
                    cfg["encoder_remaining_heads"][i] = []
                else:
                    cfg["encoder_num_heads"][i] = 0
        if ffn is not None:
            if ffn.hard_concrete_for_layer is not None:
                cfg["encoder_use_feed_forward"][i] = False
                cfg["encoder_ff_interm_features"][i] = 0
            elif ffn.hard_concrete_for_intermediate is not None:
                cfg["encoder_ff_interm_features"][i] = 0
    for name in PRUNE_SWITCHES:
        cfg[name] = False
    return cfg


def min_num_params(student: Wav2Vec2Model) -> int:
    """Parameters left with every gated unit removed (conv layers keep one channel)."""
    with torch.device("meta"):
        return Wav2Vec2Model(_minimal_config(student)).num_params()


def max_sparsity(student: Wav2Vec2Model, teacher_num_params: int) -> float:
    return 1.0 - min_num_params(student) / teacher_num_params


def check_target_sparsity(student: Wav2Vec2Model, teacher_num_params: int, target: float) -> float:
    """Raise SparsityError when ``target`` is above the reachable maximum; return that maximum."""
    if not student.gates():
        raise SparsityError("the student has no gates: prune_units enables none of the gated structures")
    smallest = min_num_params(student)
    maximum = 1.0 - smallest / teacher_num_params
    if target > maximum:
        raise SparsityError(
            f"target_sparsity {target} is above the maximum {maximum:.4f} that the unprunable parts allow "
            f"(with every gated unit removed the student keeps {smallest:,} of the teacher's "
            f"{teacher_num_params:,} parameters); lower target_sparsity or add prune_units")
    return maximum
