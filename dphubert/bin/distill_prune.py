"""Step 1 of DPHuBERT: joint distillation and structured pruning of a speech SSL teacher.

The student starts as a copy of the teacher with HardConcrete gates on the unit kinds of ``prune_units``
(conv channels, attention heads, FFN units, ...). Loss: layer-to-layer distillation (student layer i, through a
linear projection initialised to the identity, regresses teacher layer i with L1 - cosine) plus the Lagrangian
regulariser that drives the expected sparsity to ``target_sparsity`` (docs/method.md). ``budget``
says of what: parameters (``params``, the paper), MACs for 10 s of audio (``macs``) or both (``params+macs``,
the MACs target in ``macs_target_sparsity``); both sparsities are logged whatever the budget.

Usage::

    python -m dphubert.bin.distill_prune --config conf/distill_prune.yaml --teacher teacher.pt \\
        --data data/train --valid data/dev --exp exp/dphubert [--teacher-feats dump/teacher/train] \\
        [--resume] [--skip-bad-audio] [--max-steps 1000 --target-sparsity 0.5 ...] [--budget macs]
    torchrun --nproc_per_node 4 -m dphubert.bin.distill_prune ...        # DDP, one process per GPU

Every config key is also an option (``--target-sparsity 0.6``). Output: ``exp/<tag>/last.pt``, a model file of
the gated student (``dphubert.models.load_model`` reads it) with ``distill_linear_projs``, ``distill`` (layers,
groups) and ``teacher_num_params``; next step:
``python -m dphubert.bin.prune --ckpt exp/<tag>/last.pt --out exp/<tag>/pruned.pt``. Also ``config.yaml``,
``train.log``, ``tensorboard/``, ``training.png``, ``checkpoints/``. A target sparsity above what the unprunable
parts allow (for parameters or MACs) is refused at start with the maximum.
"""

from __future__ import annotations

import logging
import sys
from typing import List, Optional

from dphubert.distill.cli import check_teacher_student, run_cli, run_training, training_parser
from dphubert.distill.projections import LayerProjections, resolve_layers_and_groups
from dphubert.distill.sparsity import MACS_SECONDS, LagrangianRegularizer, budget_quantities, check_budget
from dphubert.distill.students import gated_student
from dphubert.distill.tasks import LayerDistillTask, loss_weights
from dphubert.models.macs import count_macs

METHOD = "distill_prune"
logger = logging.getLogger("dphubert.distill_prune")


def get_parser():
    return training_parser(METHOD, __doc__)


def build_task(cfg, teacher, args) -> LayerDistillTask:
    layers, groups = resolve_layers_and_groups(cfg["distill_layers"], cfg["projection_groups"], teacher.num_layers,
                                               str(args.config or "config"))
    student = gated_student(teacher, cfg["prune_units"], cfg["student_overrides"])
    check_teacher_student(teacher, student, layers)
    teacher_params = teacher.num_params()
    teacher_macs = int(count_macs(teacher, MACS_SECONDS)["total"])
    budget = cfg["budget"]
    quantities = budget_quantities(budget)
    targets = {quantities[0]: cfg["target_sparsity"]}
    if len(quantities) == 2:
        targets["macs"] = cfg["macs_target_sparsity"]
    maxima = check_budget(student, budget, targets, teacher_params, teacher_macs)
    logger.info("budget %s: target %s (maximum reachable: params sparsity %.4f, MACs sparsity %.4f with prune_units "
                "%s; teacher %s params, %.3g GMACs per %g s); distilling layers %s (layer 0: %s), projection groups "
                "%s", budget, ", ".join(f"{q} sparsity {t:.4f}" for q, t in targets.items()), maxima["params"],
                maxima["macs"], cfg["prune_units"], f"{teacher_params:,}", teacher_macs / 1e9, MACS_SECONDS, layers,
                cfg["layer0"], groups)
    dim_s, dim_t = student.config["encoder_embed_dim"], teacher.config["encoder_embed_dim"]
    projections = LayerProjections(layers, groups, dim_s, dim_t)
    regularizer = LagrangianRegularizer(teacher_params, cfg["target_sparsity"], cfg["sparsity_warmup_steps"],
                                        budget=budget, teacher_macs=teacher_macs,
                                        macs_target_sparsity=cfg["macs_target_sparsity"],
                                        multiplier_reset=cfg["multiplier_reset"])
    return LayerDistillTask(student, projections, loss_weights(cfg), regularizer, method=METHOD, layer0=cfg["layer0"])


def _main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    path, task = run_training(args, METHOD, build_task, argv)
    if path is not None:
        student, reg = task.student, task.regularizer
        logger.info("gated student: expected %.0f params, %d after pruning (teacher %d); expected %.4g GMACs per %g s, "
                    "%.4g after pruning (teacher %.4g); next: python -m dphubert.bin.prune --ckpt %s --out %s",
                    float(student.expected_num_params().detach()), student.deterministic_num_params(),
                    reg.teacher_num_params, float(student.expected_macs(MACS_SECONDS).detach()) / 1e9, MACS_SECONDS,
                    student.deterministic_macs(MACS_SECONDS) / 1e9, reg.teacher_macs / 1e9, path,
                    path.with_name("pruned.pt"))


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli(_main, argv, f"python -m dphubert.bin.{METHOD}")


if __name__ == "__main__":
    sys.exit(main())
