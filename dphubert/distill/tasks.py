"""What is trained: the student with its projections/heads (and regulariser), as one module for DDP.

A task's ``forward(waveforms, targets, step)`` returns ``{"loss": differentiable total, <name>: detached
scalars to log}``; ``targets`` are the teacher states of ``task.teacher_layers`` for the same frames.

- ``LayerDistillTask``: DPHuBERT, student layer i -> projection -> teacher layer i; Step 1 adds the
  ``LagrangianRegularizer`` (``regularizer=None`` in Step 2). ``layer0`` says what state 0 is (on both sides).
- ``DistilHubertTask``: DistilHuBERT as s3prl trains it: prediction heads on the last student layer, the CNN's
  gradient scaled by ``feature_grad_mult``, weight decay on every tensor but the biases.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from dphubert.models import Wav2Vec2Model
from dphubert.models.checkpoint import checkpoint_dict

from .losses import distill_loss
from .projections import LayerProjections, PredictionHeads
from .sparsity import LagrangianRegularizer

LOSS_KEYS = ("l1_weight", "cos_weight", "l2_weight", "cos_type")


def loss_weights(cfg: Dict[str, Any]) -> Dict[str, Any]:
    return {key: cfg[key] for key in LOSS_KEYS}


class DistillTask(nn.Module):
    """Shared parts: the student, its frame count, and the model file."""

    method = "distill"
    student: Wav2Vec2Model
    layer0 = "transformer_input"  # what hidden state 0 is, for student and teacher (Wav2Vec2Model.extract_features)

    @property
    def teacher_layers(self) -> List[int]:
        raise NotImplementedError

    def num_frames(self, num_samples: int) -> int:
        return int(self.student.output_lengths(torch.tensor([num_samples]))[0])

    def param_groups(self, cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
        raise NotImplementedError

    def uses_all_parameters(self) -> bool:
        """Whether every step gives every parameter a gradient (else DDP must look for unused ones)."""
        return not self.student.config["encoder_layer_drop"] > 0

    def model_file(self) -> Dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        """What must be equal for a checkpoint to be resumed into this task."""
        return {"method": self.method, "student_config": self.student.config, "layers": self.teacher_layers}


class LayerDistillTask(DistillTask):
    def __init__(self, student: Wav2Vec2Model, projections: LayerProjections, weights: Dict[str, Any],
                 regularizer: Optional[LagrangianRegularizer] = None, method: str = "distill_prune",
                 layer0: str = "transformer_input"):
        super().__init__()
        self.student = student
        self.projections = projections
        self.weights = dict(weights)
        self.regularizer = regularizer
        self.method = method
        self.layer0 = layer0

    @property
    def teacher_layers(self) -> List[int]:
        return self.projections.layers

    def uses_all_parameters(self) -> bool:
        # Layers above the deepest distilled one get no gradient.
        return super().uses_all_parameters() and max(self.teacher_layers) == self.student.num_layers

    def describe(self) -> Dict[str, Any]:
        described = super().describe()
        if self.layer0 != DistillTask.layer0:  # (only then, so that older checkpoints still resume)
            described["layer0"] = self.layer0
        if self.regularizer is not None and self.regularizer.budget != "params":  # (the same)
            described["budget"] = self.regularizer.budget
        return described

    def forward(self, waveforms: Tensor, targets: List[Tensor], step: int) -> Dict[str, Tensor]:
        states, _ = self.student.extract_features(waveforms, layer0=self.layer0)
        distill, terms = distill_loss(self.projections(states), targets, self.teacher_layers, **self.weights)
        out = dict(terms, distill=distill.detach())
        loss = distill
        if self.regularizer is not None:
            with torch.autocast(device_type=waveforms.device.type, enabled=False):
                reg = self.regularizer(self.student, step)
            loss = loss + reg["reg"]
            out.update({key: value.detach() for key, value in reg.items()})
        out["loss"] = loss
        return out

    def param_groups(self, cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
        main = self.student.main_parameters() + list(self.projections.parameters())
        groups = [{"name": "main", "params": main, "lr": cfg["lr"], "weight_decay": cfg["weight_decay"]}]
        if self.regularizer is not None:
            groups.append({"name": "log_alpha", "params": self.student.gate_parameters(), "lr": cfg["reg_lr"],
                           "weight_decay": 0.0})
            groups.append({"name": "lambda", "params": self.regularizer.multipliers(),
                           "lr": cfg["reg_lr"], "weight_decay": 0.0, "maximize": True})
        return groups

    def model_file(self) -> Dict[str, Any]:
        meta = dict(self.projections.metadata(), method=self.method, layer0=self.layer0)
        extra = {"distill_linear_projs": self.projections.per_layer_state_dict(), "distill": meta}
        if self.regularizer is not None:
            meta.update(budget=self.regularizer.budget, target_sparsity=self.regularizer.target_sparsity,
                        targets=dict(self.regularizer.targets))
            extra["teacher_num_params"] = self.regularizer.teacher_num_params  # read by dphubert.bin.prune
            if self.regularizer.teacher_macs is not None:
                extra["teacher_macs"] = self.regularizer.teacher_macs  # (10 s of audio) read by it too
        return checkpoint_dict(self.student, extra=extra)


class DistilHubertTask(DistillTask):
    method = "distilhubert"

    def __init__(self, student: Wav2Vec2Model, heads: PredictionHeads, weights: Dict[str, Any],
                 feature_grad_mult: float = 1.0):
        super().__init__()
        self.student = student
        self.heads = heads
        self.weights = dict(weights)
        self.feature_grad_mult = feature_grad_mult

    @property
    def teacher_layers(self) -> List[int]:
        return self.heads.layers

    def describe(self) -> Dict[str, Any]:
        return dict(super().describe(), head_type=self.heads.head_type)

    def forward(self, waveforms: Tensor, targets: List[Tensor], step: int) -> Dict[str, Tensor]:
        states, _ = self.student.extract_features(waveforms, feature_grad_mult=self.feature_grad_mult)
        loss, terms = distill_loss(self.heads(states[-1]), targets, self.teacher_layers, **self.weights)
        return dict(terms, distill=loss.detach(), loss=loss)

    def param_groups(self, cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
        # s3prl decays every tensor whose name has no "bias" (its exclusion of "LayerNorm.weight" matches none of
        # the distiller's names, so LayerNorm weights are decayed too).
        named = list(self.student.named_parameters()) + list(self.heads.named_parameters(prefix="heads"))
        decayed = [p for n, p in named if "bias" not in n]
        biases = [p for n, p in named if "bias" in n]
        return [{"name": "main", "params": decayed, "lr": cfg["lr"], "weight_decay": cfg["weight_decay"]},
                {"name": "bias", "params": biases, "lr": cfg["lr"], "weight_decay": 0.0}]

    def model_file(self) -> Dict[str, Any]:
        heads = {k: v.detach().cpu().clone() for k, v in self.heads.state_dict().items()}
        distill = {"method": self.method, "pred_layers": self.heads.layers, "head_type": self.heads.head_type}
        return checkpoint_dict(self.student, extra={"distill_heads": heads, "distill": distill})
