"""HuBERT masked prediction as a task of the shared trainer (``dphubert.distill.trainer``).

The model: ``Wav2Vec2Model(base_config("hubert", <sizes>))`` plus what only pretraining needs, a learned mask
embedding and a plain linear classifier over the clusters (HuBERT uses cosine similarity with label embeddings;
one linear layer is the simpler equivalent for a single target set). Span masking (``mask_prob * frames /
mask_span`` spans of ``mask_span`` frames at random starts, overlaps allowed, as in HuBERT) replaces
feature-projection outputs by the mask embedding; the loss is the cross-entropy on the masked frames plus
``unmasked_weight`` times the one on the unmasked frames (HuBERT's ``pred_nomask_weight``). The CNN gradient is
scaled by ``feature_grad_mult``. Masks are drawn from torch's generator, which the trainer re-seeds per batch.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dphubert.distill.tasks import DistillTask
from dphubert.models import Wav2Vec2Model, base_config
from dphubert.models.checkpoint import checkpoint_dict
from dphubert.models.components import scale_gradient

MODEL_KEYS = ("num_layers", "embed_dim", "num_heads", "ffn_dim", "cnn_channels", "pos_conv_kernel", "pos_conv_groups",
              "dropout")


def model_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    c = cfg["cnn_channels"]
    return base_config(
        "hubert", extractor_conv_layer_config=[[c, 10, 5]] + [[c, 3, 2]] * 4 + [[c, 2, 2]] * 2,
        encoder_embed_dim=cfg["embed_dim"], encoder_num_layers=cfg["num_layers"],
        encoder_num_heads=cfg["num_heads"], encoder_ff_interm_features=cfg["ffn_dim"],
        encoder_pos_conv_kernel=cfg["pos_conv_kernel"], encoder_pos_conv_groups=cfg["pos_conv_groups"],
        encoder_projection_dropout=cfg["dropout"], encoder_attention_dropout=cfg["dropout"],
        encoder_dropout=cfg["dropout"], encoder_layer_drop=0.0)


def span_mask(batch: int, frames: int, mask_prob: float, span: int) -> Tensor:
    """HuBERT/wav2vec 2.0 masking: ``mask_prob * frames / span`` random span starts per item (spans may overlap)."""
    span = min(span, frames)
    num_spans = max(1, int(mask_prob * frames / span + torch.rand(()).item()))
    mask = torch.zeros(batch, frames, dtype=torch.bool)
    for row in range(batch):
        starts = torch.randperm(frames - span + 1)[:num_spans]
        positions = (starts[:, None] + torch.arange(span)).reshape(-1)
        mask[row, positions] = True
    return mask


class MaskedPredictionTask(DistillTask):
    """The encoder (``student``, the trainer's name for the model it trains), mask embedding and classifier."""

    method = "pretrain_hubert"

    def __init__(self, cfg: Dict[str, Any], info: Dict[str, Any]):
        super().__init__()
        config = model_config(cfg)
        self.student = Wav2Vec2Model(config)
        dim = config["encoder_embed_dim"]
        self.mask_emb = nn.Parameter(torch.empty(dim).uniform_())
        self.classifier = nn.Linear(dim, cfg["num_clusters"])
        self.cfg = {k: cfg[k] for k in ("feature_grad_mult", "mask_prob", "mask_span", "unmasked_weight",
                                        "num_clusters", "weight_decay", "lr")}
        self.info = dict(info)  # what the model file says about its pretraining (data, chance accuracy, ...)

    @property
    def teacher_layers(self) -> List[int]:
        return []

    def logits(self, waveforms: Tensor) -> tuple:
        """Cluster logits ``(batch, frames, clusters)`` and the mask ``(batch, frames)`` that was applied."""
        encoder = self.student
        features, _ = encoder.feature_extractor(waveforms, None)
        x = encoder.encoder.feature_projection(scale_gradient(features, self.cfg["feature_grad_mult"]))
        mask = span_mask(x.size(0), x.size(1), self.cfg["mask_prob"], self.cfg["mask_span"]).to(x.device)
        x = torch.where(mask[..., None], self.mask_emb.to(x.dtype), x)
        states = encoder.encoder.transformer(x, None)
        return self.classifier(states[-1]), mask

    def forward(self, waveforms: Tensor, targets: Tensor, step: int) -> Dict[str, Tensor]:
        logits, mask = self.logits(waveforms)
        logits, mask = logits[:, :targets.size(1)].float(), mask[:, :targets.size(1)]
        masked = F.cross_entropy(logits[mask], targets[mask])
        loss = masked
        out = {"masked_loss": masked.detach()}
        if (~mask).any():
            unmasked = F.cross_entropy(logits[~mask], targets[~mask])
            out["unmasked_loss"] = unmasked.detach()
            if self.cfg["unmasked_weight"] > 0:
                loss = loss + self.cfg["unmasked_weight"] * unmasked
        with torch.no_grad():
            correct = logits.argmax(-1) == targets
            out["masked_accuracy"] = correct[mask].float().mean()
            if (~mask).any():
                out["unmasked_accuracy"] = correct[~mask].float().mean()
        out["loss"] = loss
        return out

    def param_groups(self, cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
        # HuBERT's Adam: betas (0.9, 0.98), eps 1e-6
        return [{"name": "main", "params": list(self.parameters()), "lr": cfg["lr"],
                 "weight_decay": cfg["weight_decay"], "betas": (0.9, 0.98), "eps": 1e-6}]

    def describe(self) -> Dict[str, Any]:
        return {"method": self.method, "student_config": self.student.config, "num_clusters": self.cfg["num_clusters"]}

    def model_file(self) -> Dict[str, Any]:
        """A plain model file of the encoder (mask embedding and classifier left out)."""
        return checkpoint_dict(self.student, extra={"pretrain": self.info})
