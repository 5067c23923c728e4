"""Physical pruning: turn the gated student of Step 1 into a smaller model file (between Step 1 and Step 2).

Usage::

    python -m dphubert.bin.prune --ckpt exp/<tag>/last.pt --out exp/<tag>/pruned.pt [--teacher teacher.pt]

Writes ``--out`` (a normal model file; every extra key of the input, e.g. ``distill_linear_projs``, is kept so
Step 2 can carry the projections over) and, next to it, ``summary.json`` and ``architecture.png``.
Prints the parameter counts before/after, checks that the real count equals the gates' deterministic count,
the sparsity vs the teacher (its size from ``--teacher`` or the checkpoint's ``teacher_num_params`` key), the
MACs for 10 s of audio (checked against the gates' deterministic MACs) and their sparsity vs the teacher's
(``--teacher`` or the ``teacher_macs`` key), and the output gap of the pruned vs the gated model on a random 2 s
input (pruning is exact except for the LayerNorm after a pruned last CNN layer; METHOD.md section 7); the gap is
stored in summary.json as ``pruning_output_gap``.

A model without gates (already pruned, or never gated) is an error (exit 1): there is nothing to prune.
"""

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch

from dphubert.models import CheckpointError, PruningError, load_model, model_from_checkpoint, read_checkpoint
from dphubert.models import save_model
from dphubert.models.checkpoint import extra_entries
from dphubert.models.macs import count_macs
from dphubert.report import MACS_SECONDS, format_summary, model_summary, plot_architecture, write_summary

GAP_SECONDS = 2.0


class PruneError(ValueError):
    """Input that cannot be pruned; the message names the file and what to do."""


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", "--in", dest="ckpt", required=True,
                        help="gated student model file (Step 1 output, e.g. last.pt)")
    parser.add_argument("--out", required=True, help="pruned model file to write")
    parser.add_argument("--teacher", help="teacher model file, for the sparsity (default: the checkpoint's "
                                          "teacher_num_params key if present)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input of the output-gap check")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow checkpoints that need arbitrary code to unpickle (only from trusted sources)")
    return parser


@torch.no_grad()
def output_gap(gated, pruned, seconds: float = GAP_SECONDS, seed: int = 0) -> Dict[str, Any]:
    """Relative L2 difference of every hidden state (pruned vs gated, eval mode) on a random input."""
    generator = torch.Generator().manual_seed(seed)
    waveform = 0.1 * torch.randn(1, int(seconds * 16000), generator=generator)
    gated_states, _ = gated.eval().extract_features(waveform)
    pruned_states, _ = pruned.eval().extract_features(waveform)
    relative: List[float] = []
    for a, b in zip(gated_states, pruned_states):
        relative.append(float((a - b).norm() / a.norm().clamp(min=1e-12)))
    last = (gated_states[-1] - pruned_states[-1]).abs().max()
    return {"input": f"{seconds:g} s of Gaussian noise (std 0.1, seed {seed})",
            "relative_l2_per_layer": relative, "relative_l2_last": relative[-1], "max_abs_last": float(last)}


def teacher_size(args, ckpt: Dict[str, Any]):
    """The teacher's parameters and MACs for 10 s of audio (None where neither --teacher nor the file says)."""
    if args.teacher:
        teacher = load_model(args.teacher, args.trust_checkpoint)
        return teacher.num_params(), int(count_macs(teacher, MACS_SECONDS)["total"])
    params, macs = ckpt.get("teacher_num_params"), ckpt.get("teacher_macs")
    return (int(params) if params is not None else None), (int(macs) if macs is not None else None)


def run(args) -> Dict[str, Any]:
    if Path(args.out).resolve() == Path(args.ckpt).resolve():
        raise PruneError(f"--out {args.out} is the input file; write the pruned model to another file")
    ckpt = read_checkpoint(args.ckpt, args.trust_checkpoint)
    gated = model_from_checkpoint(ckpt, str(args.ckpt))
    if not gated.gates():
        raise PruneError(f"{args.ckpt}: the model has no gates, so there is nothing to prune (it is already pruned "
                         f"or was never gated); use the file as it is")
    teacher_params, teacher_macs = teacher_size(args, ckpt)
    deterministic = gated.deterministic_num_params()
    pruned = gated.prune()
    real = pruned.num_params()
    if real != deterministic:  # a bug in pruning, not a user error: stop before writing anything
        raise PruneError(f"{args.ckpt}: the pruned model has {real:,} params but the gates predicted "
                         f"{deterministic:,}; please report this")

    if count_macs(pruned, MACS_SECONDS)["total"] != gated.deterministic_macs(MACS_SECONDS):
        raise PruneError(f"{args.ckpt}: the pruned model's MACs differ from the gates' deterministic count; "
                         f"please report this")
    summary = model_summary(pruned, teacher_params, original=gated, teacher_macs=teacher_macs)
    summary["gated_params"] = gated.num_params()
    summary["source"] = str(args.ckpt)
    summary["pruning_output_gap"] = output_gap(gated, pruned, seed=args.seed)

    out = Path(args.out)
    extra = extra_entries(ckpt)
    if teacher_params is not None:
        extra["teacher_num_params"] = teacher_params
    if teacher_macs is not None:
        extra["teacher_macs"] = teacher_macs
    save_model(pruned, out, extra)
    write_summary(summary, out.parent / "summary.json")
    plot_architecture(summary, out.parent / "architecture.png")

    gap = summary["pruning_output_gap"]
    print(f"gated model {args.ckpt}: {gated.num_params():,} params (gates excluded)")
    print(f"pruned model: {real:,} params; deterministic count {deterministic:,}: match")
    print(format_summary(summary))
    print(f"output gap pruned vs gated on {gap['input']}: relative L2 {gap['relative_l2_last']:.2e} "
          f"(last layer), max |diff| {gap['max_abs_last']:.2e}")
    kept = ", ".join(sorted(extra)) or "none"
    print(f"wrote {out} (extra keys kept: {kept}), {out.parent / 'summary.json'}, {out.parent / 'architecture.png'}")
    return summary


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        run(args)
    except (CheckpointError, PruningError, PruneError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
