"""Step 2 of DPHuBERT: distil the physically pruned student again, without the regulariser.

The projections of Step 1 are carried over from the pruned file's ``distill_linear_projs`` (layers and sharing
groups from its ``distill`` entry; released DPHuBERT files without it use the default layers and share the
projections whose weights are equal). Layer 0 is what Step 1 used (``distill.layer0``; ``transformer_input`` for
files without it), unless ``layer0`` is set: the released files were trained with ``--layer0 projection``.
The student trains without LayerDrop (as in the paper) unless ``student_overrides`` sets ``encoder_layer_drop``.

Usage::

    python -m dphubert.bin.final_distill --config conf/final_distill.yaml --student exp/dphubert/pruned.pt \\
        --teacher teacher.pt --data data/train --valid data/dev --exp exp/dphubert/final [--resume]
    torchrun --nproc_per_node 4 -m dphubert.bin.final_distill ...

Output: ``exp/<tag>/final/last.pt``, the final model file (with ``distill_linear_projs``), ready for SUPERB; plus
the logs and checkpoints of every training CLI.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

from dphubert.distill.cli import check_teacher_student, run_cli, run_training, training_parser
from dphubert.distill.errors import TeacherMismatchError
from dphubert.distill.projections import LayerProjections
from dphubert.distill.students import apply_overrides, load_pruned_student, without_layer_drop
from dphubert.distill.tasks import LayerDistillTask, loss_weights
from dphubert.models import Wav2Vec2Model

METHOD = "final_distill"


def get_parser():
    parser = training_parser(METHOD, __doc__)
    parser.add_argument("--student", type=Path, required=True,
                        help="the pruned Step 1 student (output of python -m dphubert.bin.prune)")
    return parser


def build_task(cfg, teacher, args) -> LayerDistillTask:
    student, projs_state, meta = load_pruned_student(args.student, args.trust_checkpoint)
    config = apply_overrides(student.config, without_layer_drop(cfg["student_overrides"]))
    if config != student.config:
        rebuilt = Wav2Vec2Model(config)
        rebuilt.load_state_dict(student.state_dict())
        student = rebuilt.train()
    projections = LayerProjections.from_per_layer_state(projs_state, meta.get("layers"), meta.get("groups"),
                                                        teacher.num_layers, str(args.student))
    dim_s, dim_t = student.config["encoder_embed_dim"], teacher.config["encoder_embed_dim"]
    if (projections.in_dim, projections.out_dim) != (dim_s, dim_t):
        raise TeacherMismatchError(
            f"{args.student}: projections map (frames, {projections.in_dim}) -> (frames, {projections.out_dim}) but "
            f"the student gives (frames, {dim_s}) and the teacher {args.teacher} (frames, {dim_t})")
    check_teacher_student(teacher, student, projections.layers)
    layer0 = cfg["layer0"] or meta.get("layer0", "transformer_input")  # null: what Step 1 distilled
    return LayerDistillTask(student, projections, loss_weights(cfg), None, method=METHOD, layer0=layer0)


def _main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    run_training(args, METHOD, build_task, argv)


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli(_main, argv, f"python -m dphubert.bin.{METHOD}")


if __name__ == "__main__":
    sys.exit(main())
