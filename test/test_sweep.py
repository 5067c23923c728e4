"""Target sweeps: parsing, the plan's reachability check, the Pareto report and the recipe's sweep loop.

The report reads real tiny model files (save_model) and a results.json written by stage 5's own writer
(dphubert.superb.stage.write_report) in the layout run_stage gives it, with the ci95 / n_test entries of the
interval issue. The recipe test runs the real egs/TEMPLATE/dphubert.sh with a recording stand-in for Python as
test_stage_script.py does; the sweep plan runs in the real Python.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from conftest import make_recipe_dir, tiny_config
from dphubert.bin import sweep as sweep_cli
from dphubert.models import Wav2Vec2Model, save_model
from dphubert.models.macs import count_macs
from dphubert.superb.stage import write_report as write_superb_report
from dphubert.sweep import SweepError, Target, parse_targets, pareto_front, target_tag, write_report

REPO = Path(__file__).resolve().parents[1]


# ----- parsing ---------------------------------------------------------------------------------------------------
def test_targets_parse_into_tags_and_distill_prune_options():
    targets = parse_targets("params:0.5  macs:0.75 params+macs:0.5,0.7")
    assert [t.name for t in targets] == ["params0.5", "macs0.75", "params0.5_macs0.7"]
    assert target_tag("demo", targets[1]) == "demo_macs0.75"
    assert targets[1].distill_prune_options() == ["--budget", "macs", "--target-sparsity", "0.75"]
    assert targets[2].distill_prune_options()[-2:] == ["--macs-target-sparsity", "0.7"]


def test_the_demo_sweep_setting_parses_and_runs_baselines_only_where_they_fit():
    """egs/demo/conf/sweep.sh as the stage script reads it (sourced from the recipe dir, after conf/demo.sh)."""
    out = subprocess.run(["bash", "-c", '. conf/sweep.sh && echo "${targets}|${baseline}|${superb_tasks}"'],
                         cwd=REPO / "egs" / "demo", capture_output=True, text=True, check=True).stdout.strip()
    targets, baseline, tasks = out.split("|")
    assert [t.name for t in parse_targets(targets)] == ["params0.75", "params0.84", "macs0.5", "macs0.7"]
    assert baseline == "auto" and tasks == "ks pr"


@pytest.mark.parametrize("text,message", [
    ("macs=0.7", "item 'macs=0.7': expected <budget>:<target>"),
    ("params:", "item 'params:': expected <budget>:<target>"),
    ("flops:0.5", "unknown budget 'flops'; choose one of params, macs, params+macs"),
    ("params:1.5", "target '1.5' must be a number in (0, 1)"),
    ("macs:0", "target '0' must be a number in (0, 1)"),
    ("macs:abc", "target 'abc' must be a number in (0, 1)"),
    ("params+macs:0.5", "budget params+macs takes 2 target(s)"),
    ("params:0.5 params:0.5", "item 'params:0.5' is given twice"),
    ("  ", "--targets is empty"),
])
def test_bad_sweep_items_are_one_line(text, message, capsys):
    with pytest.raises(SweepError, match=None) as error:
        parse_targets(text)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert sweep_cli.main(["plan", "--targets", text, "--prefix", "x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_plan_refuses_a_target_the_student_cannot_reach(tmp_path, capsys):
    save_model(Wav2Vec2Model(tiny_config("hubert")), tmp_path / "teacher.pt")
    argv = ["plan", "--targets", "params:0.5 macs:0.9999", "--prefix", "x", "--teacher", str(tmp_path / "teacher.pt")]
    assert sweep_cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "item 'macs:0.9999'" in err[0] and "above the maximum" in err[0]
    assert sweep_cli.main(argv[:2] + ["params:0.5 macs:0.5"] + argv[3:]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "x_macs0.5 --budget macs --target-sparsity 0.5"


# ----- the Pareto report -----------------------------------------------------------------------------------------
def _student(path: Path, heads, units):
    model = Wav2Vec2Model(tiny_config("hubert", encoder_num_heads=heads, encoder_head_dim=12,
                                      encoder_ff_interm_features=units))
    save_model(model, path)
    return model


def _superb_results(out: Path, models: dict, values: dict):
    """results.json as stage 5 writes it: run_stage's dict through its write_report."""
    data = {
        "settings": {"mode": "quick", "overrides": [], "er_folds": [1], "seed": 1337},
        "models": {n: {"path": str(p), "params": m.num_params() if m else 0, "macs": float(count_macs(m)["total"])
                       if m else None, "macs_seconds": 10.0} for n, (p, m) in models.items()},
        "tasks": {"ks": {"title": "KS", "description": "keyword spotting", "downstream": "speech_commands",
                         "metrics": [{"name": "Acc", "higher_better": True}]},
                  "pr": {"title": "PR", "description": "phoneme recognition", "downstream": "ctc",
                         "metrics": [{"name": "PER", "higher_better": False}]}},
        "results": values,
        "failures": {},
    }
    out.mkdir(parents=True)  # (run_stage makes it first)
    write_superb_report(data, out)
    return out / "results.json"


def test_pareto_report_from_stage5_results(tmp_path):
    exp = tmp_path / "exp"
    teacher = Wav2Vec2Model(tiny_config("hubert"))
    save_model(teacher, exp / "teacher" / "teacher.pt")
    targets = parse_targets("params:0.3 macs:0.5")
    big = _student(exp / "x_params0.3" / "final" / "model.pt", [4, 3, 3], [64, 64, 64])
    small = _student(exp / "x_macs0.5" / "final" / "model.pt", [2, 2, 1], [80, 80, 80])
    base = _student(exp / "x_params0.3" / "distilhubert" / "model.pt", [4, 4, 4], [32, 32, 0])
    models = {"teacher": (exp / "teacher" / "teacher.pt", teacher), "x_params0.3": ("a", big),
              "x_macs0.5": ("b", small), "x_params0.3_distilhubert": ("c", base), "fbank": ("fbank", None)}

    def ks(acc, half):
        return {"Acc": acc, "seconds": 3.0, "ci95": [acc - half, acc + half], "n_test": 1000}

    values = {"teacher": {"ks": ks(90.0, 2.0), "pr": {"PER": 30.0}}, "x_params0.3": {"ks": ks(85.0, 2.0),
              "pr": {"PER": 35.0}}, "x_macs0.5": {"ks": ks(84.0, 2.0), "pr": {"PER": 45.0}},
              "x_params0.3_distilhubert": {"ks": ks(70.0, 2.0), "pr": {"PER": 50.0}},
              "fbank": {"ks": ks(20.0, 2.0), "pr": {"PER": 60.0}}}
    results = _superb_results(tmp_path / "superb", models, values)
    logs = []
    out = tmp_path / "sweep"
    points = write_report("x", targets, exp / "teacher" / "teacher.pt", out, exp, results, latency_seconds=0.5,
                          latency_repeats=1, log=logs.append)
    by_name = {p.name: p for p in points}
    assert set(by_name) == {"teacher", "x_params0.3", "x_params0.3_distilhubert", "x_macs0.5", "fbank"}
    assert by_name["x_macs0.5"].macs == count_macs(small)["total"] and by_name["x_macs0.5"].params == small.num_params()
    assert all(p.latency > 0 for p in points if p.kind != "fbank")
    assert by_name["x_macs0.5"].metrics["ks"] == (84.0, (82.0, 86.0))

    text = (out / "PARETO.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| x_macs0.5 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "macs:0.5" and cells[2] == f"{small.num_params() / 1e6:.2f}"
    assert cells[5] == f"{1 - count_macs(small)['total'] / count_macs(teacher)['total']:.3f}"
    assert cells[-2:] == ["84.00 ± 2.00", "45.00"]
    # KS: x_macs0.5 (84 +- 2) ties x_params0.3 (85 +- 2) inside the intervals at fewer MACs: it takes the front
    # from it; the baseline (70) is beaten beyond the intervals; the teacher (90 +- 2) is clearly better than all.
    assert pareto_front(points, "ks", "macs", higher_better=True) == ["teacher", "x_macs0.5"]
    assert "- KS vs GMACs per 10 s: " in text and "fbank" in text
    image = matplotlib.image.imread(out / "pareto.png")
    assert image.shape[0] > 500 and image[..., :3].std() > 0.05

    # A second report reuses the measured latencies while the model files are unchanged.
    write_report("x", targets, exp / "teacher" / "teacher.pt", out, exp, results, latency_seconds=0.5,
                 latency_repeats=1, log=logs.append)
    assert any("reusing" in m for m in logs)


def test_pareto_front_ignores_differences_inside_the_intervals():
    from dphubert.sweep import Point

    a = Point("a", "dphubert", params=10, metrics={"ks": (80.0, (75.0, 85.0))}, target=Target("params", (0.5,)))
    b = Point("b", "dphubert", params=20, metrics={"ks": (82.0, (77.0, 87.0))}, target=Target("params", (0.3,)))
    c = Point("c", "dphubert", params=30, metrics={"ks": (95.0, (93.0, 97.0))}, target=Target("params", (0.1,)))
    d = Point("d", "distilhubert", params=30, metrics={"ks": (60.0, (55.0, 65.0))})
    # b is not better than a beyond the intervals and costs more: dominated; d is beaten by a.
    assert pareto_front([a, b, c, d], "ks", "params", higher_better=True) == ["a", "c"]


def test_pareto_ties_do_not_chain():
    """The demo sweep's KS values (2026-12-02): each model ties its cheaper neighbour, but the 1.53M student
    clearly beats the cheapest; it and its same-size baseline (a hair smaller) stay on the front together."""
    from dphubert.sweep import Point

    def point(name, params, value, half, kind="dphubert"):
        return Point(name, kind, params=params, metrics={"ks": (value, (value - half, value + half))})

    points = [point("teacher", 3.59, 54.6, 3.1, "teacher"), point("p72", 0.861, 48.2, 3.1),
              point("p72_base", 0.860, 47.9, 3.1, "distilhubert"), point("m50", 1.526, 57.1, 3.1),
              point("m50_base", 1.520, 53.8, 3.1, "distilhubert"), point("m70", 0.585, 47.3, 3.1),
              point("fbank", 0.0, 8.9, 1.8, "fbank")]
    assert pareto_front(points, "ks", "params", higher_better=True) == ["m50", "m50_base", "m70"]
    # without the MACs students: the teacher beats both 0.86M models beyond the intervals, which tie at one cost
    assert pareto_front(points[:3], "ks", "params", higher_better=True) == ["teacher", "p72", "p72_base"]


# ----- the recipe's sweep loop -----------------------------------------------------------------------------------
FAKE_PYTHON = r"""#!/usr/bin/env bash
case "$*" in
    "-m dphubert.bin.sweep plan"*) exec REAL_PYTHON "$@" ;;  # the plan runs for real
esac
echo "$*" >> "$(dirname "$0")/calls.txt"
prev=
for a in "$@"; do
    case "${prev}" in
        --exp) mkdir -p "${a}"
               # as dphubert.bin.distilhubert --if-possible does for a student smaller than any baseline
               if [ -n "${FAKE_TOO_SMALL:-}" ] && [[ "$* " == *" --if-possible "* ]] \
                       && [[ "$* " == *" --match ${FAKE_TOO_SMALL} "* ]]; then
                   echo "too small" > "${a}/NOT_BUILT.txt"
               else
                   touch "${a}/last.pt"
               fi ;;
        --out) mkdir -p "$(dirname "${a}")" && touch "${a}" ;;
    esac
    prev=${a}
done
"""


@pytest.fixture
def recipe(tmp_path):
    recipe = make_recipe_dir(tmp_path / "corpus",
                             '--train_set train --valid_set dev --tag x --python "$(pwd)/fake_python"')
    (recipe / "conf").mkdir()
    shutil.copy(REPO / "egs" / "demo" / "conf" / "distill_prune.yaml", recipe / "conf" / "distill_prune.yaml")
    (recipe / "fake_python").write_text(FAKE_PYTHON.replace("REAL_PYTHON", sys.executable))
    (recipe / "fake_python").chmod(0o755)
    (recipe / "data" / "train").mkdir(parents=True)
    (recipe / "data" / "train" / "utt2num_samples").write_text("u1 16000\n")
    save_model(Wav2Vec2Model(tiny_config("hubert")), recipe / "exp" / "teacher" / "teacher.pt")
    return recipe


def run(recipe, *args, ok=True):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    result = subprocess.run(["./run.sh", "--stage", "3", "--stop_stage", "5", "--baseline", "true", *args], cwd=recipe,
                            env=env, capture_output=True, text=True, timeout=120)
    assert (result.returncode == 0) == ok, result.stderr
    record = recipe / "calls.txt"
    calls = record.read_text().splitlines() if record.exists() else []
    record.unlink(missing_ok=True)
    return result, calls


def test_sweep_runs_each_target_once_and_stage5_once(recipe):
    sweep = ("--targets", "params:0.5 macs:0.75", "--superb_tasks", "ks")
    result, calls = run(recipe, *sweep)
    prune = [c for c in calls if "dphubert.bin.distill_prune" in c]
    assert len(prune) == 2
    assert "--exp exp/x_params0.5 " in prune[0] and "--budget params --target-sparsity 0.5" in prune[0]
    assert "--exp exp/x_macs0.75 " in prune[1] and "--budget macs --target-sparsity 0.75" in prune[1]
    assert sum("dphubert.bin.distilhubert" in c for c in calls) == 2  # a matched baseline per target
    superb = [c for c in calls if "superb_stage" in c]
    assert len(superb) == 1  # one stage 5 for all: the teacher is evaluated once
    assert ("--models teacher=exp/teacher/teacher.pt x_params0.5=exp/x_params0.5/final/model.pt "
            "x_params0.5_distilhubert=exp/x_params0.5/distilhubert/model.pt x_macs0.75=") in superb[0]
    assert "--out exp/x_sweep/superb" in superb[0]
    report = [c for c in calls if "dphubert.bin.sweep report" in c]
    assert len(report) == 1 and "--out exp/x_sweep --results exp/x_sweep/superb/results.json" in report[0]
    assert (recipe / "exp" / "x_macs0.75" / ".done.4").is_file()

    # Rerun with one more target: the finished ones are skipped, only the new one trains.
    result, calls = run(recipe, "--targets", "params:0.5 macs:0.75 macs:0.5", "--superb_tasks", "ks")
    prune = [c for c in calls if "dphubert.bin.distill_prune" in c]
    assert len(prune) == 1 and "--exp exp/x_macs0.5 " in prune[0]
    assert "exp/x_params0.5 finished stages 3-4; skipped" in result.stderr
    assert sum("superb_stage" in c for c in calls) == 1 and sum("sweep report" in c for c in calls) == 1


def test_baseline_auto_leaves_out_the_baseline_that_cannot_be_built(recipe):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               FAKE_TOO_SMALL="exp/x_macs0.75/pruned.pt")
    result = subprocess.run(["./run.sh", "--stage", "3", "--stop_stage", "5", "--baseline", "auto", "--targets",
                             "params:0.5 macs:0.75", "--superb_tasks", "ks"], cwd=recipe, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    calls = (recipe / "calls.txt").read_text().splitlines()
    baselines = [c for c in calls if "dphubert.bin.distilhubert" in c]
    assert len(baselines) == 2 and all("--if-possible" in c for c in baselines)
    assert "Stage 4: no baseline for this student (--baseline auto): too small" in result.stderr
    assert not (recipe / "exp" / "x_macs0.75" / "distilhubert" / "model.pt").exists()
    assert (recipe / "exp" / "x_params0.5" / "distilhubert" / "model.pt").exists()
    superb = [c for c in calls if "superb_stage" in c]
    assert "x_params0.5_distilhubert=" in superb[0] and "x_macs0.75_distilhubert" not in superb[0]
    assert (recipe / "exp" / "x_macs0.75" / ".done.4").is_file()

    result = subprocess.run(["./run.sh", "--stage", "3", "--baseline", "maybe"], cwd=recipe, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].endswith("--baseline takes one of: true false auto; got 'maybe'")


def test_sweep_item_that_does_not_parse_stops_the_recipe_in_one_line(recipe):
    result, calls = run(recipe, "--targets", "params:0.5 macs=0.7", ok=False)
    assert calls == [] and result.stderr.strip().splitlines()[-1].endswith(
        "--targets item 'macs=0.7': expected <budget>:<target>, e.g. params:0.5 or macs:0.75")


def test_sweep_with_seeds_trains_every_target_with_every_seed(recipe):
    result, calls = run(recipe, "--targets", "params:0.5 macs:0.75", "--seeds", "1 2", "--superb_tasks", "ks")
    prune = [c.split() for c in calls if "dphubert.bin.distill_prune" in c]
    runs = sorted((c[c.index("--exp") + 1], c[c.index("--seed") + 1]) for c in prune)
    assert runs == [("exp/x_macs0.75_seed1", "1"), ("exp/x_macs0.75_seed2", "2"), ("exp/x_params0.5_seed1", "1"),
                    ("exp/x_params0.5_seed2", "2")]
    superb = [c for c in calls if "superb_stage" in c]
    assert len(superb) == 1
    assert ("x_params0.5_seed1=exp/x_params0.5_seed1/final/model.pt "
            "x_params0.5_distilhubert_seed1=exp/x_params0.5_seed1/distilhubert/model.pt "
            "x_params0.5_seed2=") in superb[0]
    report = [c for c in calls if "dphubert.bin.sweep report" in c]
    assert len(report) == 1 and "--seeds 1 2 " in report[0]


def test_pareto_report_of_seeded_runs_has_every_seed_and_the_summary(tmp_path):
    exp = tmp_path / "exp"
    teacher = Wav2Vec2Model(tiny_config("hubert"))
    save_model(teacher, exp / "teacher" / "teacher.pt")
    targets = parse_targets("params:0.3")
    models = {"teacher": (exp / "teacher" / "teacher.pt", teacher)}
    values = {"teacher": {"ks": {"Acc": 90.0}}}
    for seed in (1, 2):
        models[f"x_params0.3_seed{seed}"] = ("a", _student(exp / f"x_params0.3_seed{seed}" / "final" / "model.pt",
                                                           [4, 3, 3], [64, 64, 64]))
        values[f"x_params0.3_seed{seed}"] = {"ks": {"Acc": 80.0 + seed}}
    results = _superb_results(tmp_path / "superb", models, values)
    data = json.loads(results.read_text())
    data["seeds"] = {"families": {"x_params0.3": {"ks": {"mean": 81.5, "std": 0.71, "min": 81.0, "max": 82.0,
                                                          "n_seeds": 2, "seeds": [1, 2]}}}, "comparisons": {}}
    results.write_text(json.dumps(data))
    points = write_report("x", targets, exp / "teacher" / "teacher.pt", tmp_path / "sweep", exp, results,
                          latency_seconds=0.5, latency_repeats=1, log=lambda m: None, seeds=[1, 2])
    assert {p.name for p in points} == {"teacher", "x_params0.3_seed1", "x_params0.3_seed2"}
    text = (tmp_path / "sweep" / "PARETO.md").read_text()
    assert "## Over training seeds" in text and "| x_params0.3 | 2 | 81.50 +- 0.71 (81.00-82.00) |" in text
