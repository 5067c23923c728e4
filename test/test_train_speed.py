"""The trainer's speed options give the results of the plain path, and the GPU benchmark runs on CPU.

Each option is switched on against the plain path on the same tiny Step-1 run (real CLI, real wav files):
``defer_host_sync`` gives bit-identical weights and logs, and its deferred NaN check stops at the same step as the
per-step check, before any save; ``fused_adamw`` and ``compile_layers`` (the aot_eager backend: dynamo + AOT
autograd, the path inductor takes, without a C++ compile) give the same weights within float tolerance;
``teacher_precision: bf16`` gives the same losses within bf16 rounding; a kill and ``--resume`` with every option on
(but compile_layers) ends with bit-identical weights. The phase timer gives each phase its own time;
``bench/gpu_train_speed.py --small`` runs on CPU and its FLOP/s, MFU, audio rate and peak memory are what the timed
batches and this process's memory make them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from dphubert.bin import distill_prune
from dphubert.distill.timing import PHASES, PhaseTimer
from dphubert.models import Wav2Vec2Model, save_model
from test_distill import FAST, make_data_dir, model_tensors, run_cli

ROOT = Path(__file__).resolve().parents[1]
# Batches of >= 2 items (a batch of 1 would be one more graph for torch.compile to trace).
STEP1 = [*FAST, "--batch-seconds", 2.4, "--max-steps", 10, "--save-interval", 5, "--target-sparsity", 0.3,
         "--sparsity-warmup-steps", 6, "--reg-lr", 0.05, "--lr", "1e-3"]
# compile_layers is left out of the kill/resume run: its three compilations would triple the test's time.
ALL_ON = ["--defer-host-sync", "true", "--fused-adamw", "true", "--teacher-precision", "bf16"]


@pytest.fixture(scope="module")
def speed(tmp_path_factory):
    """A tiny teacher, a data dir, and the plain (every option off) Step-1 run to compare against."""
    root = tmp_path_factory.mktemp("speed")
    torch.manual_seed(0)
    save_model(Wav2Vec2Model(tiny_config("hubert")), root / "teacher.pt")
    data = make_data_dir(root / "varied", [0.5 + 0.05 * i for i in range(10)], seed=1)
    base = ["--teacher", root / "teacher.pt", "--data", data, *STEP1]
    plain = root / "plain"
    assert run_cli(distill_prune, [*base, "--exp", plain, "--defer-host-sync", "false"]) == 0
    return {"root": root, "base": base, "plain": plain}


def history(exp: Path) -> list:
    return torch.load(sorted((exp / "checkpoints").glob("*.pt"))[-1], weights_only=True)["history"]


def run_option(speed, name: str, *option) -> Path:
    exp = speed["root"] / name
    assert run_cli(distill_prune, [*speed["base"], "--exp", exp, *option]) == 0
    return exp


def test_deferred_host_sync_is_bit_identical(speed):
    exp = run_option(speed, "deferred", "--defer-host-sync", "true")
    plain, deferred = model_tensors(speed["plain"] / "last.pt"), model_tensors(exp / "last.pt")
    assert plain.keys() == deferred.keys()
    for key in plain:
        assert torch.equal(plain[key], deferred[key]), key
    assert history(exp) == history(speed["plain"])  # the logged means too (float64 sums on the device)


@pytest.mark.parametrize("option", [("--fused-adamw", "true"), ("--compile-layers", "aot_eager")],
                         ids=["fused_adamw", "compile_layers"])
def test_fused_adamw_and_compiled_layers_match_the_plain_run(speed, option):
    exp = run_option(speed, option[0].strip("-"), *option)
    plain, fast = model_tensors(speed["plain"] / "last.pt"), model_tensors(exp / "last.pt")
    # Adam divides each gradient by its running size, so where a gradient is near zero (a key bias: exactly zero in
    # exact arithmetic, softmax ignores it) kernel rounding changes the update by up to the lr. Bounds: 1% of the
    # most a weight can move in 10 steps (10 x lr 1e-3), 0.2% for the gates (10 x reg_lr 0.05).
    for key in plain:
        atol = 1e-3 if key.endswith("log_alpha") else 1e-4
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-5, atol=atol, msg=key)
    # The losses follow those weights: 1e-4 relative (fused vs foreach measured up to 1.1e-5 after 10 steps).
    for a, b in zip(history(exp), history(speed["plain"])):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["l1"] == pytest.approx(b["l1"], rel=1e-4)


def test_bf16_teacher_matches_the_fp32_losses_within_rounding(speed):
    exp = run_option(speed, "bf16_teacher", "--teacher-precision", "bf16")
    fast, plain = history(exp), history(speed["plain"])
    assert len(fast) == len(plain) == 2
    for a, b in zip(fast, plain):
        assert a["distill"] == pytest.approx(b["distill"], rel=2e-2)
        assert a["expected_sparsity"] == pytest.approx(b["expected_sparsity"], abs=1e-3)
    assert fast[0]["distill"] != plain[0]["distill"]  # the teacher did run in bf16


def test_deferred_nan_check_stops_at_the_same_step_before_saving(speed, capsys):
    """lr 30 diverges after a few steps: both checks name the same step, nothing is saved from it on, and the last
    checkpoint named holds finite weights. Which turns non-finite first, the loss or (at a save point, in an update
    whose loss was still finite) the weights, depends on the CPU: step 8's loss on one, step 6's weights on an AMD
    EPYC."""
    steps = {}
    for defer in ("false", "true"):
        exp = speed["root"] / f"nan_{defer}"
        status = run_cli(distill_prune, [*speed["base"], "--exp", exp, "--lr", "30", "--warmup-steps", 10,
                                         "--max-steps", 20, "--save-interval", 3, "--log-interval", 5,
                                         "--defer-host-sync", defer])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert status == 1 and ("the loss is not finite" in err or "the weights are not finite" in err), err
        steps[defer] = step = int(err.split("step ")[1].split(":")[0])
        saved = sorted(int(p.stem[len("ckpt_step"):]) for p in (exp / "checkpoints").glob("ckpt_step*.pt"))
        assert saved and max(saved) < step and not (exp / "last.pt").exists()
        assert f"ckpt_step{max(saved):08d}.pt" in err  # the last good checkpoint is named
        ckpt = torch.load(exp / "checkpoints" / f"ckpt_step{max(saved):08d}.pt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in ckpt["task"].values() if v.is_floating_point())
        if defer == "true":  # it went on to the next check point (a log or save step), and stopped there
            stopped = int(err.split("stopped at step ")[1].split(" ")[0])
            assert stopped >= step and (stopped % 3 == 0 or stopped % 5 == 0)
    assert steps["true"] == steps["false"]


def test_kill_and_resume_with_the_options_on_is_exact(speed):
    straight = run_option(speed, "all_on", *ALL_ON)
    killed = speed["root"] / "all_on_killed"
    cmd = [sys.executable, "-m", "dphubert.bin.distill_prune", *map(str, speed["base"]), *ALL_ON, "--exp",
           str(killed)]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, DPHUBERT_CRASH_AFTER_STEP="7"), capture_output=True,
                          text=True)
    assert proc.returncode == 75, proc.stderr[-2000:]
    assert run_cli(distill_prune, [*speed["base"], *ALL_ON, "--exp", killed, "--resume"]) == 0
    a, b = model_tensors(straight / "last.pt"), model_tensors(killed / "last.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_phase_timer_gives_each_phase_its_own_time():
    """Known sleeps per phase, each phase a different time per step (a swap of two phases, or one counted twice,
    moves one of them out of its bounds), ``data`` twice per step (it adds up), untimed sleeps between the phases (in
    ``total`` only), and a long first step that ``skip=1`` leaves out. ``time.sleep`` never returns early, so the
    lower bounds are exact; the upper ones allow 30 ms of scheduling delay per sleep (the machine may be busy)."""
    per_step = {"data": 0.04, "teacher": 0.12, "student": 0.10, "optimizer": 0.06, "logging": 0.14}  # per sleep
    gap, steps, slack = 0.01, 2, 0.03
    timer = PhaseTimer(torch.device("cpu"))
    for step in range(1 + steps):
        for phase in ("data", "data", "teacher", "student", "optimizer", "logging"):
            with timer(phase):
                time.sleep(0.15 if step == 0 and phase == "teacher" else per_step[phase])
            time.sleep(gap)  # between phases: not in any phase, in the step's total
        timer.end_step()
    split = timer.summary(skip=1)
    assert split["steps"] == steps and set(split) == {*PHASES, "total", "steps"}
    sleeps = {"data": 2 * steps, "teacher": steps, "student": steps, "optimizer": steps, "logging": steps}
    for phase, seconds in per_step.items():
        expected = seconds * sleeps[phase]
        assert expected <= split[phase] <= expected + slack * sleeps[phase], (phase, split)
    timed = sum(per_step[p] * sleeps[p] for p in per_step)
    untimed = 6 * gap * steps
    assert timed + untimed <= split["total"] <= timed + untimed + slack * 12 * steps, split
    whole = timer.summary()  # the first step too
    assert whole["steps"] == 1 + steps and whole["teacher"] >= split["teacher"] + 0.15
    with pytest.raises(ValueError, match="3 timed steps"):
        timer.summary(skip=3)


def _vm_hwm_gib() -> float:
    """This process's peak resident memory, from /proc (kB), in GiB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**20


def test_gpu_bench_small_runs_on_cpu(tmp_path, capsys):
    """The bench's figures against what they must be: FLOP/s from the counted MACs of each timed batch over the
    timed steps' wall time, MFU over the given peak, audio per second, peak memory between this process's peak
    resident memory before and after (it only grows)."""
    from dphubert.models.macs import count_macs

    spec = importlib.util.spec_from_file_location("gpu_train_speed", ROOT / "bench" / "gpu_train_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    work = tmp_path / "work"
    before = _vm_hwm_gib()
    bench.main(["--small", "--in-process", "--amp", "none", "--option-sets", "no_compile", "--workdir", str(work),
                "--json", str(out), "--peak-tflops", "2.0"])
    after = _vm_hwm_gib()
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["peak_tflops"] == 2.0
    assert [run["method"] for run in result["runs"]] == ["distill_prune", "final_distill", "distilhubert"]
    teacher = torch.load(work / "teacher.pt", weights_only=True)["config"]
    table = capsys.readouterr().out
    assert "| audio s / s |" in table
    peaks = []
    for run in result["runs"]:
        assert "error" not in run, run
        for key in ("audio_per_s", "step_s", "split", "peak_memory_gib", "tflops_per_s", "mfu", "amp", "options"):
            assert key in run, key
        assert set(run["split"]) == set(PHASES) and 0 < sum(run["split"].values()) <= 1.0
        assert run["split"]["student"] > 0 and run["split"]["teacher"] > 0
        shapes = run["batch_shapes"]
        assert run["steps"] == len(shapes) == 3  # --small: 3 timed steps, one micro-batch each
        seconds = run["step_s"] * run["steps"]  # the timed steps' wall time
        [model_file] = list(work.glob(f"{run['method']}_*/exp/last.pt"))  # the trained student's config
        student = torch.load(model_file, weights_only=True)["config"]
        # per item: teacher forward (2 FLOPs per MAC) + student forward and backward (3 x its forward)
        flops = sum(items * 2 * (count_macs(teacher, samples / 16000)["total"]
                                 + 3 * count_macs(student, samples / 16000)["total"]) for items, samples in shapes)
        assert run["tflops_per_s"] == pytest.approx(flops / seconds / 1e12, rel=1e-9)
        assert run["mfu"] == pytest.approx(run["tflops_per_s"] / 2.0, rel=1e-12)
        audio = sum(items * samples for items, samples in shapes) / 16000
        assert run["audio_per_s"] == pytest.approx(audio / seconds, rel=1e-9)
        assert run["audio_s_per_step"] == pytest.approx(audio / 3, rel=1e-12)
        assert before * 0.99 <= run["peak_memory_gib"] <= after * 1.01, (before, run["peak_memory_gib"], after)
        peaks.append(run["peak_memory_gib"])
        row = next(line for line in table.splitlines() if line.startswith(f"| {run['method']} | none |"))
        assert f"| {run['tflops_per_s']:.3g} | {100 * run['mfu']:.1f}% |" in row, row
        assert f"| {run['peak_memory_gib']:.2f} |" in row, row
    assert peaks == sorted(peaks)  # one process: its peak never falls
