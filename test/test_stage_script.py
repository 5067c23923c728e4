"""egs/TEMPLATE/dphubert.sh: reruns, --force and the per-stage times, with a recording stand-in for Python.

The stand-in (given as --python) appends each call's arguments to calls.txt and writes the files the next stage
checks for (last.pt, pruned.pt, model.pt), so the shell logic runs in a second instead of a training run; it
fails the call of the module named in $FAIL_MODULE (a stage killed midway). One test runs the real stage 3 and
kills it with the trainer's DPHUBERT_CRASH_AFTER_STEP hook.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_recipe_dir

FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/calls.txt"
if [ -n "${FAIL_MODULE:-}" ] && [[ " $* " == *" dphubert.bin.${FAIL_MODULE} "* ]]; then
    echo "Traceback (most recent call last):"; echo "RuntimeError: ${FAIL_MODULE} killed"; exit 1
fi
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
    recipe = make_recipe_dir(tmp_path / "corpus",
                             '--train_set train --valid_set dev --tag x --python "$(pwd)/fake_python"')
    (recipe / "fake_python").write_text(FAKE_PYTHON)
    (recipe / "fake_python").chmod(0o755)
    (recipe / "data" / "train").mkdir(parents=True)
    (recipe / "data" / "train" / "utt2num_samples").write_text("u1 16000\n")
    (recipe / "exp" / "teacher").mkdir(parents=True)
    (recipe / "exp" / "teacher" / "teacher.pt").touch()
    return recipe


def run(recipe, *args, stop_stage=4, stage=3, check=True, **env_vars):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env_vars)
    result = subprocess.run(["./run.sh", "--stage", str(stage), "--stop_stage", str(stop_stage), *args], cwd=recipe,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 or not check, result.stderr
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


DATA_SH = """#!/usr/bin/env bash
for set in train dev; do
    mkdir -p data/${set}
    echo "u1 /dev/null" > data/${set}/wav.scp
    echo "u1 s1" > data/${set}/utt2spk
    echo "s1 u1" > data/${set}/spk2utt
    echo "u1 16000" > data/${set}/utt2num_samples
done
"""
MARKERS = {0: "exp/teacher/.done.0", 1: "data/.done.1", 3: "exp/x/.done.3", 4: "exp/x/.done.4", 5: "exp/x/.done.5"}


@pytest.mark.parametrize("stage,module", [(0, "convert"), (1, "prepare_data"), (3, "distill_prune"),
                                          (4, "final_distill"), (5, "superb_stage")])
def test_a_forced_rerun_killed_midway_leaves_no_stale_done_marker(recipe, stage, module):
    (recipe / "teacher.ckpt").touch()
    (recipe / "local").mkdir()
    (recipe / "local" / "data.sh").write_text(DATA_SH)
    (recipe / "local" / "data.sh").chmod(0o755)
    options = ("--teacher", "teacher.ckpt", "--superb_tasks", "ks")
    run(recipe, *options, stage=0, stop_stage=5)
    assert all((recipe / marker).exists() for marker in MARKERS.values())

    result, _ = run(recipe, *options, "--force", "true", stage=stage, stop_stage=stage, check=False,
                    FAIL_MODULE=module)
    assert result.returncode != 0 and not (recipe / MARKERS[stage]).exists()
    # Stages after it refuse the outputs it may have left half made.
    if stage in (3, 4):
        later, _ = run(recipe, *options, stage=stage + 1, stop_stage=stage + 1, check=False)
        assert later.returncode != 0 and f"stage {stage} did not finish" in later.stderr
    _, calls = run(recipe, *options, stage=stage, stop_stage=stage)  # a plain rerun does the stage again
    assert any(f"dphubert.bin.{module} " in call for call in calls) and (recipe / MARKERS[stage]).exists()


# ----- a real stage 3, killed midway through a --force rerun -----------------------------------------------------
CONFIG = """\
min_seconds: 0.2
max_seconds: 1.0
batch_seconds: 1.6
num_buckets: 2
num_workers: 0
max_steps: 8
lr: 1.0e-3
warmup_steps: 2
target_sparsity: 0.3
sparsity_warmup_steps: 3
reg_lr: 0.05
log_interval: 4
save_interval: 4
valid_interval: 1000
valid_max_batches: 1
"""


def test_a_killed_forced_stage3_is_resumed_by_a_plain_rerun(tmp_path):
    import numpy as np
    import soundfile
    import torch

    from conftest import tiny_config
    from dphubert.data import write_utt2num_samples
    from dphubert.models import Wav2Vec2Model, save_model

    recipe = make_recipe_dir(tmp_path / "corpus", "--train_set train --valid_set train --tag x")
    (recipe / "conf").mkdir()
    (recipe / "conf" / "distill_prune.yaml").write_text(CONFIG)
    (recipe / "exp" / "teacher").mkdir(parents=True)
    save_model(Wav2Vec2Model(tiny_config("hubert")), recipe / "exp" / "teacher" / "teacher.pt")
    data = recipe / "data" / "train"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(10):
        soundfile.write(data / f"u{i}.wav", rng.normal(0, 0.1, int(16000 * rng.uniform(0.5, 1.0))), 16000)
        lines.append(f"u{i} {data / f'u{i}.wav'}\n")
    (data / "wav.scp").write_text("".join(lines))
    write_utt2num_samples(data)
    exp = recipe / "exp" / "x"

    run(recipe, stop_stage=3, OMP_NUM_THREADS="1")  # the uninterrupted run
    reference = torch.load(exp / "last.pt", weights_only=True)["state_dict"]

    killed, _ = run(recipe, "--force", "true", stop_stage=3, check=False, OMP_NUM_THREADS="1",
                    DPHUBERT_CRASH_AFTER_STEP="6")
    assert killed.returncode != 0 and not (exp / ".done.3").exists()
    assert [p.name for p in (exp / "checkpoints").iterdir()] == ["ckpt_step00000004.pt"]

    result, _ = run(recipe, stop_stage=3, OMP_NUM_THREADS="1", DPHUBERT_CRASH_AFTER_STEP="6")
    assert "skipped" not in result.stderr and (exp / ".done.3").exists()
    log = (exp / "logs" / "distill_prune.log").read_text()
    assert "--resume" in log.splitlines()[0] and "(step 4)" in log
    resumed = torch.load(exp / "last.pt", weights_only=True)["state_dict"]
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)  # as if never killed


def test_seeds_train_each_run_and_evaluate_them_together(recipe):
    """--seeds: stages 3-4 once per seed in exp/<tag>_seed<N> with that seed, stage 5 once over all of them."""
    _, calls = run(recipe, "--seeds", "3 1", "--baseline", "true", "--superb_tasks", "ks", stop_stage=5)
    for seed in (3, 1):
        for module, exp in (("distill_prune", f"exp/x_seed{seed}"), ("final_distill", f"exp/x_seed{seed}/final"),
                            ("distilhubert", f"exp/x_seed{seed}/distilhubert")):
            call = next(c.split() for c in calls if f"dphubert.bin.{module} " in c + " " and f"--exp {exp} " in c + " ")
            assert call[call.index("--seed") + 1] == str(seed), (module, call)
    stage5 = [c for c in calls if "superb_stage" in c]
    assert len(stage5) == 1
    models = stage5[0].split("--models ")[1].split(" --out ")[0].split()
    assert models == ["teacher=exp/teacher/teacher.pt", "dphubert_seed3=exp/x_seed3/final/model.pt",
                      "distilhubert_seed3=exp/x_seed3/distilhubert/model.pt", "dphubert_seed1=exp/x_seed1/final/model.pt",
                      "distilhubert_seed1=exp/x_seed1/distilhubert/model.pt"]
    assert "--out exp/x/superb" in stage5[0]
    # A rerun skips the finished seeds.
    result, calls = run(recipe, "--seeds", "3 1", stop_stage=4)
    assert training_calls(calls) == [] and "skipped" in result.stderr
    # Without --seeds: one run in exp/<tag>, no --seed given (the configs' seed).
    _, calls = run(recipe, stop_stage=3)
    assert all("--seed" not in c.split() for c in training_calls(calls))


@pytest.mark.parametrize("args,message", [
    (("--seeds", "1 x"), "--seeds must be non-negative integers"),
    (("--seeds", "1 2 1"), "names a seed twice"),
    (("--seeds", "1 2", "--seed", "3"), "both given"),
    (("--seed", "-1"), "--seed must be a non-negative integer"),
])
def test_bad_seeds_are_refused_before_any_stage(recipe, args, message):
    result, calls = run(recipe, *args, check=False)
    assert result.returncode != 0 and message in result.stderr and calls == []


def test_stage5_with_seeds_needs_every_seeds_model(recipe):
    run(recipe, "--seeds", "1", stop_stage=4)
    result, calls = run(recipe, "--seeds", "1 2", "--superb_tasks", "ks", stage=5, stop_stage=5, check=False)
    assert result.returncode != 0 and "exp/x_seed2/final/model.pt is missing" in result.stderr
    assert '--seeds "1 2"' in result.stderr and not any("superb_stage" in c for c in calls)
