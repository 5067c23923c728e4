"""Lagrangian sparsity control (CoFi style) and the limits of what a gated student can reach.

With ``s_hat = 1 - E[params] / N_teacher`` (differentiable in the gates' log_alpha) and the target
``t(step) = T * min(1, step / sparsity_warmup_steps)``, the regulariser is
``L_reg = lambda1 * (s_hat - t) + lambda2 * (s_hat - t)^2``. The multipliers start at 0 and are *maximised*
(their optimizer group has ``maximize=True``) while the model and log_alpha minimise, so any gap to the target
grows the pressure until the expected sparsity follows the target.

Short runs wind up: while the expected sparsity lags the ramp, lambda1 grows (in magnitude) at the regulariser's
learning rate every step, and once the target is reached it takes as many steps to unwind, during which it still
pushes the sparsity past the target (a 400-step demo: 0.72 asked, 0.794 expected at the end). ``multiplier_reset``
(off by default: the paper's dynamics) is the classic anti-windup of an integral controller: whenever lambda1 pushes
the expected sparsity away from the target (its sign against the gap's), it is set to 0 before it is used.

``min_num_params`` is the student's size with every gated unit at zero (conv layers keep one channel: a CNN
without channels cannot be pruned into a model), hence ``max_sparsity``; ``check_target_sparsity`` refuses a
target above it before training starts.

The budget (``budget: params | macs | params+macs``) chooses what is constrained: with ``macs`` the same
Lagrangian acts on ``1 - E[MACs] / MACs_teacher`` (``Wav2Vec2Model.expected_macs``, 10 s of audio), with
``params+macs`` on both, each with its own target and multipliers. ``check_budget`` refuses a target above what
the unprunable parts allow, for either quantity.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from dphubert.models import Wav2Vec2Model
from dphubert.models.config import PRUNE_SWITCHES, is_wavlm
from dphubert.models.macs import count_macs

from .errors import SparsityError


def target_at(step: int, target: float, warmup_steps: int) -> float:
    if warmup_steps <= 0:
        return target
    return target * min(1.0, step / warmup_steps)


BUDGETS = ("params", "macs", "params+macs")
# MACs are counted for one utterance of this length (the attention's frames-squared terms depend on it).
MACS_SECONDS = 10.0


def budget_quantities(budget: str) -> List[str]:
    """``"params+macs"`` -> ``["params", "macs"]``: the quantities a budget constrains."""
    if budget not in BUDGETS:
        raise SparsityError(f"budget {budget!r} is unknown; choose one of {', '.join(BUDGETS)}")
    return budget.split("+")


class LagrangianRegularizer(nn.Module):
    """One Lagrangian term per constrained quantity (``budget``): parameters, MACs or both.

    ``targets``: the final target sparsity of each constrained quantity, e.g. ``{"macs": 0.6}``. The multipliers
    of parameters are ``lambda1`` / ``lambda2`` (as before MACs existed, so older checkpoints resume), those of
    MACs ``lambda1_macs`` / ``lambda2_macs``. Both sparsities are reported whatever is constrained (MACs when
    ``teacher_macs`` is given).
    """

    def __init__(self, teacher_num_params: int, target_sparsity: float, warmup_steps: int, budget: str = "params",
                 teacher_macs: Optional[int] = None, macs_target_sparsity: Optional[float] = None,
                 multiplier_reset: bool = False):
        super().__init__()
        self.budget = budget
        self.multiplier_reset = multiplier_reset
        quantities = budget_quantities(budget)
        self.teacher_num_params = int(teacher_num_params)
        self.teacher_macs = None if teacher_macs is None else int(teacher_macs)
        if "macs" in quantities and self.teacher_macs is None:
            raise ValueError("a MACs budget needs teacher_macs")
        # target_sparsity is the target of the budget's (first) quantity; params+macs adds the MACs target.
        self.targets = {quantities[0]: float(target_sparsity)}
        if len(quantities) == 2:
            self.targets["macs"] = float(macs_target_sparsity)
        self.target_sparsity = float(target_sparsity)
        self.warmup_steps = int(warmup_steps)
        for quantity in quantities:
            suffix = _SUFFIX[quantity]
            self.register_parameter(f"lambda1{suffix}", nn.Parameter(torch.zeros(())))
            self.register_parameter(f"lambda2{suffix}", nn.Parameter(torch.zeros(())))

    def multipliers(self) -> List[nn.Parameter]:
        return [getattr(self, f"lambda{k}{_SUFFIX[q]}") for q in self.targets for k in (1, 2)]

    def forward(self, student: Wav2Vec2Model, step: int) -> Dict[str, Tensor]:
        """``{"reg": loss, "expected_sparsity", "expected_params", "expected_macs_sparsity", "expected_gmacs",
        "target_sparsity" (params budget) / "target_macs_sparsity" (MACs budget), "lambda1", "lambda2", ...}``."""
        expected = {"params": student.expected_num_params().float()}
        if self.teacher_macs is not None:
            expected["macs"] = student.expected_macs(MACS_SECONDS).float()
        teacher = {"params": self.teacher_num_params, "macs": self.teacher_macs}
        sparsity = {q: 1.0 - value / teacher[q] for q, value in expected.items()}
        out: Dict[str, Tensor] = {"expected_sparsity": sparsity["params"].detach(),
                                  "expected_params": expected["params"].detach()}
        if "macs" in expected:
            out["expected_macs_sparsity"] = sparsity["macs"].detach()
            out["expected_gmacs"] = expected["macs"].detach() / 1e9
        reg = 0.0
        for quantity, final in self.targets.items():
            suffix = _SUFFIX[quantity]
            target = target_at(step, final, self.warmup_steps)
            gap = sparsity[quantity] - target
            lambda1, lambda2 = getattr(self, f"lambda1{suffix}"), getattr(self, f"lambda2{suffix}")
            if self.multiplier_reset:
                with torch.no_grad():  # pushing away from the target: wound up (see the module docstring)
                    lambda1.copy_(torch.where(lambda1 * gap < 0, torch.zeros_like(lambda1), lambda1))
            reg = reg + lambda1 * gap + lambda2 * gap * gap
            out[f"target{suffix}_sparsity"] = torch.tensor(target)
            out[f"lambda1{suffix}"] = lambda1.detach().clone()
            out[f"lambda2{suffix}"] = lambda2.detach().clone()
        out["reg"] = reg
        return out


_SUFFIX = {"params": "", "macs": "_macs"}


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


def min_macs(student: Wav2Vec2Model, seconds: float = MACS_SECONDS) -> int:
    """MACs left with every gated unit removed (conv layers keep one channel)."""
    return int(count_macs(_minimal_config(student), seconds)["total"])


def check_budget(student: Wav2Vec2Model, budget: str, targets: Dict[str, float], teacher_num_params: int,
                 teacher_macs: int) -> Dict[str, float]:
    """Raise SparsityError when a target is above its reachable maximum; return the maxima of both quantities.

    ``targets`` maps each constrained quantity to its final target, e.g. ``{"macs": 0.6}``.
    """
    quantities = budget_quantities(budget)
    if not student.gates():
        raise SparsityError("the student has no gates: prune_units enables none of the gated structures")
    maxima = {"params": check_target_sparsity(student, teacher_num_params, targets["params"])
              if "params" in quantities else max_sparsity(student, teacher_num_params)}
    smallest = min_macs(student)
    maxima["macs"] = 1.0 - smallest / teacher_macs
    if "macs" in quantities and targets["macs"] > maxima["macs"]:
        key = "macs_target_sparsity" if len(quantities) == 2 else "target_sparsity"
        raise SparsityError(
            f"{key} {targets['macs']} (budget {budget}) is above the maximum {maxima['macs']:.4f} MACs sparsity that "
            f"the unprunable parts allow (with every gated unit removed the student keeps {smallest / 1e9:.3g} of "
            f"the teacher's {teacher_macs / 1e9:.3g} GMACs per {MACS_SECONDS:g} s); lower {key} or add prune_units")
    return maxima
