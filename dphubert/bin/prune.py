"""Physical pruning: turn the gated student of Step 1 into a smaller model file (between Step 1 and Step 2).

Usage::

    python -m dphubert.bin.prune --ckpt exp/<tag>/last.pt --out exp/<tag>/pruned.pt [--teacher teacher.pt] \
        [--selection budget|paper] [--target-sparsity 0.75]

Writes ``--out`` (a normal model file; every extra key of the input, e.g. ``distill_linear_projs``, is kept so
Step 2 can carry the projections over) and, next to it, ``summary.json`` and ``architecture.png``.
Prints the parameter counts before/after, checks that the real count equals the gates' deterministic count,
the sparsity vs the teacher (its size from ``--teacher`` or the checkpoint's ``teacher_num_params`` key), the
MACs for 10 s of audio (checked against the gates' deterministic MACs) and their sparsity vs the teacher's
(``--teacher`` or the ``teacher_macs`` key), and the output gap of the pruned vs the gated model on a random 2 s
input (pruning is exact except for the LayerNorm after a pruned last CNN layer; docs/method.md); the gap is
stored in summary.json as ``pruning_output_gap``.

Which units are kept (``--selection``, ``dphubert.models.selection``): ``budget`` (the default) keeps the largest
model within the size target of Step 1 (the budget and targets the file's ``distill`` entry records, or
``--budget`` / ``--target-sparsity`` / ``--macs-target-sparsity``), staying as close as it can to the paper's
choice; ``paper`` keeps what the paper's rule keeps (each gate: its expected number of units, rounded), whatever
size that gives. Both are in summary.json under ``selection`` (what was kept, and what the paper's rule would keep),
and printed. A file that names no target is pruned by the paper's rule, and the output says so.

A model without gates (already pruned, or never gated) is an error (exit 1): there is nothing to prune, and so is a
target that no selection can reach (the message gives the smallest reachable size).
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
from dphubert.models.selection import SELECTIONS, SelectionError, apply_selection, select_units
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
    parser.add_argument("--selection", choices=SELECTIONS, default="budget",
                        help="budget: the largest model within the size target (default); paper: the paper's rule "
                             "(each gate keeps its expected number of units, rounded)")
    parser.add_argument("--budget", choices=("params", "macs", "params+macs"), default=None,
                        help="what the target constrains (default: the file's, as Step 1 trained it)")
    parser.add_argument("--target-sparsity", type=float, default=None,
                        help="target sparsity of the budget's quantity (default: the file's)")
    parser.add_argument("--macs-target-sparsity", type=float, default=None,
                        help="budget params+macs: the MACs target (default: the file's)")
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


def size_targets(args, ckpt: Dict[str, Any]) -> Dict[str, float]:
    """``{quantity: target sparsity}`` from the options, else from the file's ``distill`` entry ({} when neither)."""
    meta = ckpt.get("distill") or {}
    file_budget = meta.get("budget", "params")
    budget = args.budget or file_budget
    quantities = budget.split("+")
    if args.macs_target_sparsity is not None and len(quantities) == 1:
        raise PruneError(f"--macs-target-sparsity is for --budget params+macs; the budget is {budget}")
    recorded = dict(meta.get("targets") or {}) if budget == file_budget else {}
    given = dict(zip(quantities, (args.target_sparsity, args.macs_target_sparsity)))
    targets = {q: given[q] if given[q] is not None else recorded.get(q) for q in quantities}
    if all(value is None for value in targets.values()):
        return {}
    for quantity, value in targets.items():
        option = "--target-sparsity" if quantity == quantities[0] else "--macs-target-sparsity"
        if value is None:
            raise PruneError(f"{args.ckpt}: no {quantity} target for budget {budget}; pass {option}")
        if not 0.0 < value < 1.0:
            raise PruneError(f"{option} {value} must be in (0, 1): the fraction of the teacher's {quantity} to remove")
    return {q: float(v) for q, v in targets.items()}


def select(args, gated, ckpt: Dict[str, Any], teacher_params, teacher_macs) -> Dict[str, Any]:
    """Apply the selection to ``gated``'s gates; returns its summary.json entry."""
    targets = size_targets(args, ckpt)
    rule = args.selection
    note = None
    if rule == "budget" and not targets:
        rule, note = "paper", "the file names no size target (and no --target-sparsity was given)"
    teacher = {"params": teacher_params, "macs": teacher_macs}
    if rule == "budget" and any(teacher[q] is None for q in targets):
        missing = [q for q in targets if teacher[q] is None]
        raise PruneError(f"{args.ckpt}: the size target needs the teacher's {' and '.join(missing)} count, which the "
                         f"file does not record; pass --teacher <teacher model file>")
    try:
        selection = select_units(gated, rule, targets, teacher)
    except SelectionError as e:
        raise PruneError(f"{args.ckpt}: {e} (--target-sparsity / --macs-target-sparsity)") from None
    apply_selection(gated, selection.kept)

    def described(sizes: Dict[str, int]) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(sizes)
        for quantity, count in sizes.items():
            if teacher[quantity]:
                out[f"{quantity}_sparsity"] = 1.0 - count / teacher[quantity]
        return out

    entry = {"rule": rule, "targets": targets, "kept": described(selection.sizes),
             "kept_units": selection.kept, "paper_rule": dict(described(selection.paper_sizes),
                                                              kept_units=selection.paper_kept)}
    if selection.allowed:
        entry["allowed"] = selection.allowed
        entry["changed_units"] = selection.changed_units()
    if note:
        entry["note"] = f"paper rule used: {note}"
    return entry


def format_selection(entry: Dict[str, Any]) -> str:
    def sparsities(sizes: Dict[str, Any]) -> str:
        return ", ".join(f"{q} sparsity {sizes[f'{q}_sparsity']:.4f}" for q in ("params", "macs")
                         if f"{q}_sparsity" in sizes)

    line = f"selection {entry['rule']}"
    if entry["targets"]:
        line += f" (targets: {', '.join(f'{q} {t:g}' for q, t in entry['targets'].items())})"
    line += f": kept {sparsities(entry['kept'])}; the paper's rule would keep {sparsities(entry['paper_rule'])}"
    if "changed_units" in entry:
        changed = entry["changed_units"]
        line += f" ({changed['added']} units added, {changed['removed']} removed)"
    if entry.get("note"):
        line += f"; {entry['note']}"
    return line


def run(args) -> Dict[str, Any]:
    if Path(args.out).resolve() == Path(args.ckpt).resolve():
        raise PruneError(f"--out {args.out} is the input file; write the pruned model to another file")
    ckpt = read_checkpoint(args.ckpt, args.trust_checkpoint)
    gated = model_from_checkpoint(ckpt, str(args.ckpt))
    if not gated.gates():
        raise PruneError(f"{args.ckpt}: the model has no gates, so there is nothing to prune (it is already pruned "
                         f"or was never gated); use the file as it is")
    teacher_params, teacher_macs = teacher_size(args, ckpt)
    selection = select(args, gated, ckpt, teacher_params, teacher_macs)
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
    summary["selection"] = selection
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
    print(format_selection(selection))
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
