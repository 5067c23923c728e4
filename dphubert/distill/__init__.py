"""Distillation (and joint pruning) of speech SSL models: DPHuBERT Step 1 and 2, and the DistilHuBERT baseline.

Modules:
- ``config``: training configs (defaults, YAML, command-line overrides; ``conf/*.yaml`` are the packaged ones);
- ``losses``: layer-wise L1 / cosine (/ MSE) distillation losses;
- ``projections``: student -> teacher projections (DPHuBERT) and prediction heads (DistilHuBERT);
- ``sparsity``: the Lagrangian sparsity regulariser and the maximum reachable sparsity;
- ``students``: building the students (gated copy, pruned file, truncated DistilHuBERT student);
- ``teacher``: online teacher targets, the teacher-feature dump (kaldiio) and its reader;
- ``tasks``: the trained module of each method; ``trainer``: the shared training loop (DDP, AMP, resume);
- ``cli``: plumbing of ``python -m dphubert.bin.{distill_prune,final_distill,distilhubert,dump_teacher}``.
"""

from .config import METHOD_DEFAULTS, load_config, write_config
from .errors import (DistillConfigError, DistillError, NonFiniteLossError, ResumeError, SparsityError,
                     TeacherMismatchError)
from .losses import distill_loss, layer_loss
from .projections import LayerProjections, PredictionHeads, default_distill_layers, default_pred_layers
from .sparsity import LagrangianRegularizer, check_target_sparsity, max_sparsity, min_num_params
from .students import distilhubert_student, gated_student, load_pruned_student, load_teacher, plan_distilhubert
from .tasks import DistilHubertTask, LayerDistillTask
from .teacher import DumpedTeacher, OnlineTeacher, TeacherFeatureReader, dump_teacher_features
from .trainer import Trainer

__all__ = [
    "DistilHubertTask", "DistillConfigError", "DistillError", "DumpedTeacher", "LagrangianRegularizer",
    "LayerDistillTask", "LayerProjections", "METHOD_DEFAULTS", "NonFiniteLossError", "OnlineTeacher",
    "PredictionHeads", "ResumeError", "SparsityError", "TeacherFeatureReader", "TeacherMismatchError", "Trainer",
    "check_target_sparsity", "default_distill_layers", "default_pred_layers", "distill_loss",
    "distilhubert_student", "dump_teacher_features", "gated_student", "layer_loss", "load_config",
    "load_pruned_student", "load_teacher", "max_sparsity", "min_num_params", "plan_distilhubert", "write_config",
]
