"""egs/TEMPLATE/dphubert.sh: reruns, --force and the per-stage times, with a recording stand-in for Python.

The stand-in (given as --python) appends each call's arguments to calls.txt and writes the files the next stage
checks for (last.pt, pruned.pt, model.pt), so the shell logic runs in a second instead of a training run.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/calls.txt"
# the file each stage module writes: --exp DIR gives DIR/last.pt, --out FILE gives FILE
prev=
for a in "$@"; do
    case "${prev}" in
        --exp) mkdir -p "${a}" && touch "${a}/last.pt" ;;
        --out) mkdir -p "$(dirname "${a}")" && touch "${a}" ;;
    esac
    prev=${a}
done
"""


@pytest.fixture
def recipe(tmp_path):
    """A recipe dir with a prepared data dir and teacher, linked to the real stage script and utils."""
    recipe = tmp_path / "corpus"
    recipe.mkdir()
    os.symlink(REPO / "egs" / "TEMPLATE" / "utils", recipe / "utils")
    os.symlink(REPO / "egs" / "TEMPLATE" / "dphubert.sh", recipe / "dphubert.sh")
    for name in ("path.sh", "cmd.sh"):
        shutil.copy(REPO / "egs" / "demo" / name, recipe / name)
    (recipe / "db.sh").write_text("")
    (recipe / "run.sh").write_text('#!/usr/bin/env bash\n./dphubert.sh --train_set train --valid_set dev '
                                   '--tag x --python "$(pwd)/fake_python" "$@"\n')
    (recipe / "run.sh").chmod(0o755)
    (recipe / "fake_python").write_text(FAKE_PYTHON)
    (recipe / "fake_python").chmod(0o755)
    (recipe / "data" / "train").mkdir(parents=True)
    (recipe / "data" / "train" / "utt2num_samples").write_text("u1 16000\n")
    (recipe / "exp" / "teacher").mkdir(parents=True)
    (recipe / "exp" / "teacher" / "teacher.pt").touch()
    return recipe


def run(recipe, *args, stop_stage=4):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    result = subprocess.run(["./run.sh", "--stage", "3", "--stop_stage", str(stop_stage), *args], cwd=recipe, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    record = recipe / "calls.txt"
    calls = record.read_text().splitlines() if record.exists() else []
    record.unlink(missing_ok=True)
    return result, calls


def training_calls(calls):
    return [c for c in calls if "distill_prune" in c or "final_distill" in c]


def test_interrupted_run_resumes_and_forced_run_starts_again(recipe):
    exp = recipe / "exp" / "x"
    (exp / "checkpoints").mkdir(parents=True)
    (exp / "checkpoints" / "ckpt_step00000040.pt").write_text("old")

    _, calls = run(recipe)
    step3, step4 = training_calls(calls)
    assert "--resume" in step3.split()       # a killed stage 3 continues from its checkpoints
    assert "--resume" not in step4.split()   # stage 4 had none

    # Finished stages are skipped on a rerun, without a second line in stage_times.txt.
    result, calls = run(recipe)
    assert training_calls(calls) == [] and "skipped" in result.stderr

    (exp / "final" / "checkpoints").mkdir(parents=True)
    result, calls = run(recipe, "--force", "true")
    step3, step4 = training_calls(calls)
    assert "--resume" not in step3.split() and "--resume" not in step4.split()
    assert not (exp / "checkpoints").exists()
    assert (exp / "checkpoints.before_force" / "ckpt_step00000040.pt").read_text() == "old"
    assert (exp / "final" / "checkpoints.before_force").is_dir()
    assert "from scratch" in result.stderr

    times = (exp / "stage_times.txt").read_text().splitlines()
    assert [t.split(":")[0] for t in times] == ["stage 3", "stage 4"]


def test_stage5_reruns_only_when_what_it_evaluates_changed(recipe):
    superb = ("--superb_tasks", "ks")
    _, calls = run(recipe, *superb, stop_stage=5)
    assert sum("superb_stage" in c for c in calls) == 1
    times = (recipe / "exp" / "x" / "stage_times.txt").read_text()

    result, calls = run(recipe, *superb, stop_stage=5)  # nothing changed: skipped, its time kept
    assert calls == [] and "RESULTS.md is up to date; skipped" in result.stderr
    assert (recipe / "exp" / "x" / "stage_times.txt").read_text() == times

    _, calls = run(recipe, "--superb_tasks", "ks pr", stop_stage=5)  # another task list
    assert [c for c in calls if "superb_stage" in c][0].split("--tasks ")[1].startswith("ks pr")

    (recipe / "exp" / "x" / "final" / "model.pt").write_text("retrained")  # a new model file
    _, calls = run(recipe, "--superb_tasks", "ks pr", stop_stage=5)
    assert sum("superb_stage" in c for c in calls) == 1
