"""Package a trained student as the recipe's deliverable (recipe stage 4).

    python -m dphubert.bin.package --model exp/<tag>/final/last.pt --out exp/<tag>/final/model.pt \
        [--teacher exp/teacher/teacher.pt] [--release-out exp/<tag>/final/model_release.pth]

Writes ``--out`` (a model file that ``dphubert.models.load_model``, the s3prl upstream ``dphubert_local`` and
ESPnet's S3prlFrontend read; the distillation projections are kept under ``distill_linear_projs``), and beside
it ``summary.json`` (params, sparsity vs the teacher, MACs for 10 s, kept heads/units/channels per layer) and
``architecture.png``. ``--release-out`` also writes the model in the released DPHuBERT schema (as
``python -m dphubert.bin.convert --to release`` does), a drop-in replacement for ``DPHuBERT-sp0.75.pth`` in code
that loads it with the reference model code.
"""

import argparse
import sys
from pathlib import Path

from dphubert.models import (CheckpointError, atomic_save, load_model, model_from_checkpoint, read_checkpoint,
                             save_model)
from dphubert.models.checkpoint import extra_entries
from dphubert.models.release import release_checkpoint
from dphubert.models.macs import count_macs
from dphubert.report import MACS_SECONDS, format_summary, model_summary, plot_architecture, write_summary



def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="trained student (e.g. final/last.pt)")
    parser.add_argument("--out", required=True, help="packaged model file to write")
    parser.add_argument("--teacher", help="teacher model file, for the sparsity in summary.json")
    parser.add_argument("--release-out", help="also write the model in the released DPHuBERT schema here")
    return parser


def run(args) -> dict:
    ckpt = read_checkpoint(args.model)
    model = model_from_checkpoint(ckpt, str(args.model))
    if model.gates():
        raise CheckpointError(f"{args.model}: still has pruning gates; prune it first "
                              f"(python -m dphubert.bin.prune --ckpt {args.model} --out pruned.pt)")
    teacher = load_model(args.teacher) if args.teacher else None
    teacher_params = teacher.num_params() if teacher else ckpt.get("teacher_num_params")
    teacher_macs = count_macs(teacher, MACS_SECONDS)["total"] if teacher else ckpt.get("teacher_macs")
    extra = extra_entries(ckpt)
    if teacher_params is not None:
        extra["teacher_num_params"] = int(teacher_params)
    if teacher_macs is not None:
        extra["teacher_macs"] = int(teacher_macs)
    out = Path(args.out)
    try:
        save_model(model, out, extra)
    except OSError as e:
        raise CheckpointError(f"{out}: cannot write it ({e.strerror or e}); choose another --out") from None
    if args.release_out:
        release = release_checkpoint(model, extra.get("distill_linear_projs"), str(args.model))
        try:
            atomic_save(release, args.release_out)
        except OSError as e:
            raise CheckpointError(f"{args.release_out}: cannot write it ({e.strerror or e}); choose another "
                                  f"--release-out") from None
    summary = model_summary(model, teacher_params, teacher_macs=teacher_macs)
    summary["source"] = str(args.model)
    write_summary(summary, out.parent / "summary.json")
    plot_architecture(summary, out.parent / "architecture.png")
    print(format_summary(summary))
    written = [out, out.parent / "summary.json", out.parent / "architecture.png"]
    print("wrote " + ", ".join(map(str, written + ([args.release_out] if args.release_out else []))))
    return summary


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        run(args)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
