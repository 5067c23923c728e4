"""Target sweeps of the recipe (``./run.sh --targets "params:0.5 macs:0.75"``): the plan and the Pareto report.

Usage::

    python -m dphubert.bin.sweep plan --targets "params:0.5 macs:0.75" --prefix demo \\
        [--teacher exp/teacher/teacher.pt --config conf/distill_prune.yaml]
        # one line per target: "<tag> <distill_prune options>", e.g. "demo_macs0.75 --budget macs
        # --target-sparsity 0.75"; with --teacher (when it exists), a target above what the student can reach
        # fails here, before any training
    python -m dphubert.bin.sweep report --targets "params:0.5 macs:0.75" --prefix demo \\
        --teacher exp/teacher/teacher.pt --out exp/demo_sweep [--results exp/demo_sweep/superb/results.json]
        # exp/demo_sweep/PARETO.md, pareto.png, latency.json (see dphubert.sweep)

Errors (an item that does not parse, a target above the reachable maximum) are one line and exit status 1.
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from dphubert.sweep import SweepError, parse_targets, target_tag, write_report


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dphubert.bin.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("plan", "report"):
        p = sub.add_parser(name, help=f"the sweep's {name}")
        p.add_argument("--targets", required=True, help='sweep items, e.g. "params:0.5 macs:0.75 params+macs:0.5,0.7"')
        p.add_argument("--prefix", required=True, help="experiment tags are <prefix>_<budget><target>")
        p.add_argument("--teacher", type=Path, default=None, help="the teacher model file")
    plan = sub.choices["plan"]
    plan.add_argument("--config", type=Path, default=None, help="distill_prune config (its prune_units and "
                                                                  "student_overrides), for the reachable maximum")
    report = sub.choices["report"]
    report.add_argument("--out", type=Path, required=True, help="the sweep dir: PARETO.md, pareto.png, latency.json")
    report.add_argument("--exp-root", type=Path, default=Path("exp"), help="where the targets' exp dirs are")
    report.add_argument("--results", type=Path, default=None, help="stage 5's results.json of the sweep's models")
    report.add_argument("--latency-seconds", type=float, default=4.0, help="audio per timed CPU forward")
    report.add_argument("--latency-repeats", type=int, default=3, help="interleaved repeats (medians)")
    report.add_argument("--seeds", default="", help='the runs\' seeds, e.g. "1 2 3" (exp/<tag>_seed<N>); '
                                                    'empty: one run per target')
    return parser


def check_reachable(targets, teacher_path: Path, config: Optional[Path]) -> None:
    """Refuse a target the gated student cannot reach (the check distill_prune makes at start), for all at once."""
    from dphubert.distill import gated_student, load_config, load_teacher
    from dphubert.distill.errors import SparsityError
    from dphubert.distill.sparsity import MACS_SECONDS, check_budget
    from dphubert.models.macs import count_macs

    cfg = load_config("distill_prune", config)
    teacher = load_teacher(teacher_path, False)
    student = gated_student(teacher, cfg["prune_units"], cfg["student_overrides"])
    teacher_macs = int(count_macs(teacher, MACS_SECONDS)["total"])
    for target in targets:
        quantities = target.budget.split("+")
        try:
            check_budget(student, target.budget, dict(zip(quantities, target.values)), teacher.num_params(),
                         teacher_macs)
        except SparsityError as e:
            raise SweepError(f"--targets item '{target.label}': {e}") from None


def run(args) -> None:
    targets = parse_targets(args.targets)
    if args.command == "plan":
        if args.teacher is not None and args.teacher.is_file():
            check_reachable(targets, args.teacher, args.config)
        for target in targets:
            print(target_tag(args.prefix, target), " ".join(target.distill_prune_options()))
        return
    if args.teacher is None:
        raise SweepError("report needs --teacher (the teacher model file)")
    try:
        seeds = [int(s) for s in args.seeds.split()]
    except ValueError:
        raise SweepError(f"--seeds '{args.seeds}': expected integers separated by spaces, e.g. \"1 2 3\"") from None
    write_report(args.prefix, targets, args.teacher, args.out, args.exp_root, args.results, args.latency_seconds,
                 args.latency_repeats, log=lambda m: print(m, file=sys.stderr), seeds=seeds)


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    from dphubert.distill.cli import USER_ERRORS

    try:
        run(args)
    except (SweepError, *USER_ERRORS) as e:
        print(f"python -m dphubert.bin.sweep {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
