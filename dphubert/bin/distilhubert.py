"""The DistilHuBERT baseline: pure distillation into a shallow student of a given size, trained as s3prl trains
DistilHuBERT (``s3prl/pretrain/distiller``, ``s3prl/upstream/distiller``).

Student: s3prl's distiller: the teacher's CNN, feature projection (without the LayerNorm before it), positional
conv and first N transformer layers copied, the encoder LayerNorm fresh, dropout 0.1, no LayerDrop. Prediction
heads on the last student layer for the teacher layers ``pred_layers`` (default every third: 4, 8, 12 for Base):
``head_type: mlp`` is s3prl's Linear(dim, dim x heads) -> GELU -> a Linear per head. Loss per head L1 - log
sigmoid(cos), heads averaged. The CNN's gradient is scaled by ``feature_grad_mult`` (0.1); AdamW with betas
(0.9, 0.98), eps 1e-6, weight decay 0.01 on every tensor but the biases, gradient clipping at 5, a 7% warmup then
linear decay (the defaults of this method). Ours, not s3prl's: the student is sized to a parameter budget (heads
excluded): ``--target-params N`` or ``--match exp/<tag>/pruned.pt`` (the DPHuBERT student's count). N is the
largest number of full layers that fits; if more than 1% of the budget is left, one more layer and an FFN width
(the same for every layer, its first units copied from the teacher) that fills it. ``num_layers`` /
``ffn_width`` in the config fix them instead; without a budget the student has 2 layers (DistilHuBERT's).
SUPERB evaluates the student's encoder states (its transformer input and every layer); s3prl's distiller upstream
also appends the heads' predictions to its hidden states, which would make the baseline larger than the size it
is matched to.

Usage::

    python -m dphubert.bin.distilhubert --config conf/distilhubert.yaml --teacher teacher.pt \\
        --data data/train --valid data/dev --exp exp/distilhubert --match exp/dphubert/pruned.pt [--resume]
    torchrun --nproc_per_node 4 -m dphubert.bin.distilhubert ...

Output: ``exp/<tag>/last.pt``, a normal model file of the student (SUPERB evaluates it like any other), with the
heads stored separately under ``distill_heads``. With ``--if-possible`` (the recipe's ``--baseline auto``, e.g.
in a target sweep) a ``--match`` size below the smallest baseline this teacher allows is not an error: the reason
goes to ``exp/<tag>/NOT_BUILT.txt`` and the log, nothing is trained, and the exit status is 0.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

from dphubert.distill.cli import check_teacher_student, run_cli, run_training, training_parser
from dphubert.distill.errors import DistillConfigError
from dphubert.distill.projections import PredictionHeads, default_pred_layers
from dphubert.distill.students import distilhubert_student, plan_distilhubert
from dphubert.distill.tasks import DistilHubertTask, loss_weights
from dphubert.models import load_model

METHOD = "distilhubert"
logger = logging.getLogger("dphubert.distilhubert")


def get_parser():
    parser = training_parser(METHOD, __doc__)
    parser.add_argument("--match", type=Path, default=None,
                        help="size the student like this model file (e.g. the pruned DPHuBERT student)")
    parser.add_argument("--if-possible", action="store_true",
                        help="with --match: when no baseline can be that small, write NOT_BUILT.txt in --exp and "
                             "exit 0 instead of failing")
    return parser


class BaselineTooSmall(DistillConfigError):
    """No DistilHuBERT-style student of this teacher can be as small as the --match model; ``reason`` without the
    advice (what --if-possible records, where the advice would be moot)."""

    def __init__(self, reason: str, advice: str):
        super().__init__(f"{reason}; {advice}")
        self.reason = reason


NOT_BUILT = "NOT_BUILT.txt"


def target_from(args, cfg) -> Optional[int]:
    if args.match is None:
        return cfg["target_params"]
    if cfg["target_params"] is not None:
        raise DistillConfigError("give either --match or --target-params (target_params), not both")
    model = load_model(args.match, args.trust_checkpoint)
    return model.deterministic_num_params() if model.gates() else model.num_params()


def build_task(cfg, teacher, args) -> DistilHubertTask:
    target = target_from(args, cfg)
    try:
        num_layers, ffn_width = plan_distilhubert(teacher, target, cfg["num_layers"], cfg["ffn_width"])
    except DistillConfigError as e:
        if args.match is None:
            raise
        # The usual cause in a recipe: Step 1 pruned the CNN, which this baseline keeps whole.
        raise BaselineTooSmall(f"the baseline cannot be as small as {args.match} ({e})",
                               "this teacher's CNN and positional conv alone leave no room: lower target_sparsity "
                               "of Step 1, or run the recipe with --baseline auto (no baseline where none fits) or "
                               "false") from None
    student = distilhubert_student(teacher, num_layers, ffn_width, cfg["student_overrides"])
    achieved = student.num_params()
    width = ffn_width if ffn_width is not None else "teacher's"
    if target is not None:
        logger.info("student: %d layers, FFN width %s: %s params for a target of %s (%+.2f%%)", num_layers, width,
                    f"{achieved:,}", f"{target:,}", 100.0 * (achieved - target) / target)
    else:
        logger.info("student: %d layers, FFN width %s: %s params", num_layers, width, f"{achieved:,}")
    pred_layers = cfg["pred_layers"] or default_pred_layers(teacher.num_layers)
    if any(not 1 <= x <= teacher.num_layers for x in pred_layers) or len(set(pred_layers)) != len(pred_layers):
        raise DistillConfigError(f"pred_layers {pred_layers} must be distinct layers in 1..{teacher.num_layers}")
    check_teacher_student(teacher, student, list(pred_layers), student_layers=[num_layers])
    heads = PredictionHeads(pred_layers, student.config["encoder_embed_dim"], teacher.config["encoder_embed_dim"],
                            cfg["head_type"])
    return DistilHubertTask(student, heads, loss_weights(cfg), cfg["feature_grad_mult"])


def _main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    not_built = Path(args.exp) / NOT_BUILT
    not_built.unlink(missing_ok=True)  # from an earlier attempt with another size
    try:
        run_training(args, METHOD, build_task, argv)
    except BaselineTooSmall as e:
        if not (args.if_possible and args.match is not None):
            raise
        logger.warning("no baseline trained: %s", e.reason)
        not_built.parent.mkdir(parents=True, exist_ok=True)
        not_built.write_text(f"{e.reason}\n")


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli(_main, argv, f"python -m dphubert.bin.{METHOD}")


if __name__ == "__main__":
    sys.exit(main())
