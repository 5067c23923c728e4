"""Sanity checks of a finished demo run (used by CI's smoke test and printed at the end of `make demo`).

    python tools/check_demo_outputs.py egs/demo [--tag demo_sp0.75] [--teacher-tag teacher]

Checks the files each stage must leave, that the models load, that the compressed model is smaller than the
teacher, and that stage 5 produced a result for every model (FBANK included); prints a short summary, with
whether the teacher beats FBANK beyond the 95% intervals on each task (a note, not a failure: a tie is a
finding of the run). Exits 1 on a problem.
"""

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not the venv's install

from dphubert.distill import load_config  # noqa: E402
from dphubert.models import load_model  # noqa: E402


def target_sparsity(exp: Path):
    """Step 1's target_sparsity from exp/<tag>/config.yaml (what distill_prune ran with), or None."""
    config = exp / "config.yaml"
    return float(load_config("distill_prune", config)["target_sparsity"]) if config.is_file() else None


def teacher_vs_fbank(results: dict) -> str:
    """One line: per task, whether the teacher beats FBANK beyond the 95% intervals (see RESULTS.md)."""
    from dphubert.superb.results import compare
    from dphubert.superb.tasks import TASKS

    verdicts = []
    for name in results.get("tasks", {}):
        outcome = compare(results["results"], "teacher", "fbank", TASKS[name])
        if outcome is not None:
            verdicts.append(f"{TASKS[name].title} {'beyond the intervals' if outcome == 'better' else outcome}")
    return "teacher vs FBANK: " + ("; ".join(verdicts) if verdicts else "no results")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--tag", default="demo_sp0.75")
    parser.add_argument("--teacher-tag", default="teacher")
    args = parser.parse_args(argv)
    exp = args.recipe / "exp" / args.tag
    problems = []
    required = [args.recipe / "exp" / args.teacher_tag / "teacher.pt", args.recipe / "data" / "train" / "wav.scp",
                exp / "last.pt", exp / "pruned.pt", exp / "summary.json", exp / "architecture.png",
                exp / "final" / "model.pt", exp / "final" / "summary.json", exp / "superb" / "RESULTS.md",
                exp / "superb" / "results.json"]
    problems += [f"missing {p}" for p in required if not p.is_file()]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    teacher = load_model(required[0])
    student = load_model(exp / "final" / "model.pt")
    summary = json.loads((exp / "final" / "summary.json").read_text())
    if summary.get("params") != student.num_params():
        problems.append(f"{exp}/final/summary.json says {summary.get('params')} params, the model has "
                        f"{student.num_params()}")
    if not student.num_params() < teacher.num_params():
        problems.append(f"the student ({student.num_params():,}) is not smaller than the teacher")
    results = json.loads((exp / "superb" / "results.json").read_text())
    for name in ("teacher", "dphubert", "fbank"):
        if name not in results.get("results", {}):
            problems.append(f"results.json has no entry for {name}")
    print(teacher_vs_fbank(results))
    sparsity = 1 - student.num_params() / teacher.num_params()
    if not (0 < sparsity < 1) or not math.isfinite(sparsity):
        problems.append(f"implausible sparsity {sparsity}")
    target = target_sparsity(exp)
    print(f"teacher {teacher.num_params():,} params; student {student.num_params():,} params; "
          f"sparsity {sparsity:.3f}" + (f" (target {target})" if target is not None else ""))
    if target is not None and abs(sparsity - target) > 0.05:
        print(f"note: the sparsity is {abs(sparsity - target):.2f} away from the target: Step 1 did not settle on "
              f"it (see the sparsity curve in {exp}/training.png)")
    print(f"pruned architecture per layer: {exp / 'architecture.png'}; summary: {exp / 'final' / 'summary.json'}")
    times = exp / "stage_times.txt"
    if times.is_file():
        lines = [line for line in times.read_text().splitlines() if line.strip()]
        total = sum(int(line.split(":")[1].split()[0]) for line in lines)
        print("wall time per stage: " + "; ".join(lines) + f"; total {total} s ({total / 60:.1f} min)")
    print((exp / "superb" / "RESULTS.md").read_text())
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
