"""Training throughput of Step 1, Step 2 and the DistilHuBERT-style baseline on one device.

    python bench/gpu_train_speed.py [--json out.json] [--markdown out.md]          # a GPU: 160 s batches
    python bench/gpu_train_speed.py --small [--in-process]                         # CPU, tiny shapes (CI)

Every run goes through the real CLI (``dphubert.bin.distill_prune`` / ``final_distill`` / ``distilhubert``) and
so the real trainer, data pipeline (FLAC files of LibriSpeech-like lengths in a Kaldi data dir, AudioDataset,
BucketBatchSampler, CropCollator, DataLoader workers) and online teacher. Models: a HuBERT-Base-shaped teacher
(random weights), the Step-1 student with conv/head/interm gates distilling layers 0, 4, 8, 12, a Step-2 student
pruned from it to ~25% of the teacher's parameters, and the 2-layer DistilHuBERT student. Each run is a fresh
process (a clean peak-memory count; ``--in-process`` for the CI test), its first ``--warmup`` steps (compilation,
allocator warm-up) excluded. Printed per run, and written to ``--json`` / ``--markdown``:

- seconds of audio trained per second (audio after cropping), the step time and its split into data, teacher
  forward, student forward + backward, optimizer and logging (``dphubert.distill.timing``: CUDA events on a GPU);
- peak memory (GPU: ``max_memory_allocated``; CPU: the process's peak RSS);
- model FLOP/s and utilisation: FLOPs = 2 x MACs of ``dphubert.models.macs`` for the teacher forward plus 3 x
  (forward + backward = 2 x forward) for the student, per item of each batch, over ``--peak-tflops`` (default:
  the chip's dense bf16/fp16 peak, 989 TFLOP/s for an H100/H200, 312 for an A100).

Option sets (the trainer's speed keys, docs/training.md "Speed options"): ``plain`` (every speed option off),
``all`` (every one on), ``no_<option>`` (all on but that one), or options joined by ``+``; the
options: ``defer`` (defer_host_sync), ``bf16_teacher`` (teacher_precision bf16), ``fused`` (fused_adamw),
``compile`` (compile_layers, inductor on CUDA). A run that fails is recorded with its error and the next one runs;
``--time-budget`` skips the runs that would start after it; the JSON and markdown are rewritten after every run.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import soundfile as sf
import torch

SR = 16000
# The trainer's speed options (config keys) by short name, with their "on" values; "off" is the plain path.
OPTIONS_ON = {"defer": ("defer_host_sync", True), "bf16_teacher": ("teacher_precision", "bf16"),
              "fused": ("fused_adamw", True), "compile": ("compile_layers", "<backend>")}
OFF = {"defer_host_sync": False, "teacher_precision": "amp", "fused_adamw": False, "compile_layers": None}
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0}

PRESETS = {  # shapes and run lengths
    "base": dict(model="base", batch_seconds=160.0, utts=120, min_seconds=2.0, max_seconds=15.6, buckets=5,
                 steps=12, warmup=4, workers=4),
    "small": dict(model="tiny", batch_seconds=3.2, utts=24, min_seconds=0.2, max_seconds=1.56, buckets=2,
                  steps=3, warmup=1, workers=1),
}
# (method, amp, option set), most wanted first (a run past --time-budget is skipped): Step 1 in bf16 with the
# options off and on, then in fp16, then the options added one by one, then Step 2 and the baseline.
PLAN = [("distill_prune", "bf16", "plain"), ("distill_prune", "bf16", "all"),
        ("distill_prune", "fp16", "plain"), ("distill_prune", "fp16", "all"),
        ("distill_prune", "bf16", "defer"), ("distill_prune", "bf16", "defer+bf16_teacher"),
        ("distill_prune", "bf16", "defer+bf16_teacher+fused"),
        ("final_distill", "bf16", "plain"), ("final_distill", "bf16", "all"),
        ("distilhubert", "bf16", "plain"), ("distilhubert", "bf16", "all")]


def option_set(name: str, compile_backend: str) -> Dict[str, object]:
    """``plain``, ``all``, ``no_<short>`` or short names joined by ``+`` (e.g. ``defer+fused``) -> config values."""
    if name == "plain":
        chosen = []
    elif name == "all":
        chosen = list(OPTIONS_ON)
    elif name.startswith("no_"):
        chosen = [short for short in OPTIONS_ON if short != name[3:]]
    else:
        chosen = name.split("+")
    bad = [short for short in chosen + ([name[3:]] if name.startswith("no_") else []) if short not in OPTIONS_ON]
    if bad:
        raise SystemExit(f"--option-sets: unknown option {bad[0]!r} in {name!r}; use plain, all, no_<option> or "
                         f"options joined by +, options: {', '.join(OPTIONS_ON)}")
    values = dict(OFF)
    for short in chosen:
        key, value = OPTIONS_ON[short]
        values[key] = compile_backend if value == "<backend>" else value
    return values


# ----- inputs: audio, teacher, Step-2 student --------------------------------------------------------------------
def librispeech_like_lengths(n: int, rng, scale: float) -> np.ndarray:
    """Most LibriSpeech training utterances are 11-16 s long, with a tail of shorter ones (mean ~12.3 s)."""
    long = rng.uniform(11.0, 15.5, n)
    short = rng.uniform(2.0, 11.0, n)
    return np.where(rng.random(n) < 0.75, long, short) * scale


def make_data(root: Path, preset: dict) -> Path:
    data, audio = root / "data", root / "audio"
    data.mkdir(parents=True, exist_ok=True)
    audio.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lengths = librispeech_like_lengths(preset["utts"], rng, preset["max_seconds"] / 15.6)
    with open(data / "wav.scp", "w") as scp, open(data / "utt2spk", "w") as u2s:
        for i, seconds in enumerate(lengths):
            t = np.arange(int(SR * seconds)) / SR
            wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.05 * rng.standard_normal(t.size)
            path = audio / f"u{i:04d}.flac"
            sf.write(path, wav.astype(np.float32), SR, subtype="PCM_16")
            scp.write(f"u{i:04d} {path.resolve()}\n")
            u2s.write(f"u{i:04d} s{i % 10}\n")
    return data


def model_config(kind: str) -> dict:
    from dphubert.models import base_config
    if kind == "base":
        return base_config("hubert")
    return base_config("hubert", extractor_conv_layer_config=[[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 2, 2]],
                       encoder_embed_dim=48, encoder_num_layers=4, encoder_num_heads=4, encoder_ff_interm_features=96,
                       encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4)


def make_step2_student(teacher_path: Path, out: Path, keep: float = 0.3) -> None:
    """A Step-1 model file whose gates keep ``keep`` of each gated structure, pruned with dphubert.bin.prune."""
    from dphubert.bin import distill_prune, prune
    from dphubert.distill import load_config
    from dphubert.distill.students import load_teacher
    from dphubert.models import atomic_save

    teacher = load_teacher(teacher_path)
    task = distill_prune.build_task(load_config("distill_prune"), teacher, argparse.Namespace(config=None))
    with torch.no_grad():
        for gate in task.student.gates().values():
            kept = max(1, round(keep * gate.n))
            gate.log_alpha.fill_(-8.0)[:kept] = 8.0
    step1 = out.with_name("step1_last.pt")
    atomic_save(task.model_file(), step1)
    if prune.main(["--ckpt", str(step1), "--out", str(out)]) != 0:
        raise SystemExit("pruning the Step-2 student failed")


# ----- one measured run ------------------------------------------------------------------------------------------
def measure(spec: dict) -> dict:
    """Run one training CLI with a timed Trainer; returns the run's figures."""
    import dphubert.distill.cli as distill_cli
    from dphubert.bin import distilhubert, distill_prune, final_distill
    from dphubert.distill.timing import PHASES, PhaseTimer
    from dphubert.distill.trainer import Trainer
    from dphubert.models import load_model
    from dphubert.models.macs import count_macs

    batches: List[tuple] = []  # (items, samples) per micro-batch

    class BenchTrainer(Trainer):
        last = None

        def __init__(self, task, teacher, cfg, exp_dir, env, *rest, **kwargs):
            super().__init__(task, teacher, cfg, exp_dir, env, *rest, timer=PhaseTimer(env.device), **kwargs)
            BenchTrainer.last = self

        def _micro_batches(self):
            for batch in super()._micro_batches():
                batches.append(tuple(batch["waveforms"].shape))
                yield batch

        def _save_checkpoint(self):  # outside the timed steps, and a Base student's checkpoint is over 1 GB
            pass

    distill_cli.Trainer = BenchTrainer
    work = Path(spec["workdir"])
    exp = Path(tempfile.mkdtemp(prefix=f"{spec['method']}_", dir=work))
    steps = spec["warmup"] + spec["steps"]
    argv = ["--teacher", work / "teacher.pt", "--data", work / "data", "--exp", exp / "exp", "--device", spec["device"],
            "--max-steps", steps, "--warmup-steps", 1000, "--batch-seconds", spec["batch_seconds"],
            "--min-seconds", spec["min_seconds"], "--max-seconds", spec["max_seconds"],
            "--num-buckets", spec["buckets"], "--num-workers", spec["workers"], "--amp", spec["amp"],
            "--save-interval", 100000, "--log-interval", 10]
    for key, value in spec["options"].items():
        argv += [f"--{key.replace('_', '-')}", "null" if value is None else str(value).lower()]
    modules = {"distill_prune": distill_prune, "final_distill": final_distill, "distilhubert": distilhubert}
    module = modules[spec["method"]]
    if spec["method"] == "final_distill":
        argv += ["--student", work / "step2_student.pt"]
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # an earlier run in this process (--in-process)
        torch.cuda.reset_peak_memory_stats()
    try:
        status = module.main([str(a) for a in argv])
    finally:
        distill_cli.Trainer = Trainer  # --in-process: leave the CLIs as they were
    if status != 0:
        raise SystemExit(f"{spec['method']} failed (see {exp / 'exp' / 'train.log'})")
    trainer = BenchTrainer.last
    split = trainer.timer.summary(skip=spec["warmup"])
    total = split["total"]
    timed = batches[spec["warmup"]:steps]  # accum_grad 1: one micro-batch per step
    audio = sum(items * samples for items, samples in timed) / SR
    teacher_cfg = load_model(work / "teacher.pt").config
    student_cfg = trainer.task.student.config
    flops = sum(items * 2 * (count_macs(teacher_cfg, samples / SR)["total"]
                             + 3 * count_macs(student_cfg, samples / SR)["total"]) for items, samples in timed)
    cuda = trainer.device.type == "cuda"
    peak_gib = (torch.cuda.max_memory_allocated() if cuda
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    tflops = flops / total / 1e12
    return {"method": spec["method"], "amp": spec["amp"], "options": spec["name"], "overrides": spec["options"],
            "audio_per_s": audio / total, "step_s": total / split["steps"], "audio_s_per_step": audio / len(timed),
            "split": {p: split.get(p, 0.0) / total for p in PHASES}, "peak_memory_gib": peak_gib,
            "tflops_per_s": tflops, "mfu": tflops / spec["peak_tflops"] if spec["peak_tflops"] else None,
            "student_params": trainer.task.student.num_params(), "steps": split["steps"],
            "batch_shapes": [list(b) for b in timed]}


def run_alone(spec: dict, timeout: Optional[float]) -> dict:
    """``measure(spec)`` in a fresh process; a failure or timeout gives ``{"error": ...}`` instead of the figures."""
    try:
        proc = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s (--time-budget)"}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-3000:] or f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----- report ----------------------------------------------------------------------------------------------------
def table(result: dict) -> str:
    header = ("| method | amp | options | audio s / s | vs plain | step s | data | teacher | student fwd+bwd | "
              "optimizer | logging | peak GiB | TFLOP/s | MFU |")
    rows = [header, "|" + "---|" * 14]
    plain: Dict[tuple, float] = {}  # the latest plain run before each row (rounds of a repeated plan)
    for r in result["runs"]:
        if "error" in r:
            rows.append(f"| {r['method']} | {r['amp']} | {r['options']} | failed: "
                        f"{r['error'].splitlines()[-1][:150]} |" + " |" * 10)
            continue
        if r["options"] == "plain":
            plain[(r["method"], r["amp"])] = r["audio_per_s"]
        ref = plain.get((r["method"], r["amp"]))
        cells = [r["method"], r["amp"], r["options"], f"{r['audio_per_s']:.1f}",
                 f"{r['audio_per_s'] / ref:.2f}x" if ref else "-", f"{r['step_s']:.3f}"]
        cells += [f"{100 * r['split'][p]:.1f}%" for p in ("data", "teacher", "student", "optimizer", "logging")]
        cells += [f"{r['peak_memory_gib']:.2f}", f"{r['tflops_per_s']:.3g}",
                  f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny shapes, for CPU / CI")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=None, help="measured steps per run (after --warmup)")
    parser.add_argument("--warmup", type=int, default=None, help="steps excluded from the figures")
    parser.add_argument("--batch-seconds", type=float, default=None)
    parser.add_argument("--methods", default=None, help="comma list; with --amp/--option-sets: their product "
                                                        "instead of the default plan")
    parser.add_argument("--amp", default=None, help="comma list of bf16, fp16, none")
    parser.add_argument("--option-sets", default=None, help="comma list of plain, all, no_<option>, a+b")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds: runs that would start later "
                                                                        "are skipped, a run past it is stopped")
    parser.add_argument("--compile-backend", default=None, help="for compile_layers (default: inductor on CUDA, "
                                                                "aot_eager on CPU: no C++ compile)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the chip's dense bf16 peak, for the MFU")
    parser.add_argument("--in-process", action="store_true", help="run everything in this process (CI)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # one run (internal)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return

    preset = dict(PRESETS["small" if args.small else "base"])
    for key in ("steps", "warmup", "batch_seconds"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    backend = args.compile_backend or ("inductor" if device == "cuda" else "aot_eager")
    plan = PLAN
    if args.methods or args.amp or args.option_sets:
        plan = [(m, a, s) for m in (args.methods or "distill_prune,final_distill,distilhubert").split(",")
                for a in (args.amp or "bf16").split(",") for s in (args.option_sets or "plain,all").split(",")]
    if device == "cpu":
        plan = [p for p in plan if p[1] != "fp16"]  # fp16 autocast needs CUDA (the trainer refuses it)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="dphubert-gpu-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    from dphubert.models import Wav2Vec2Model, save_model
    torch.manual_seed(0)
    make_data(work, preset)
    save_model(Wav2Vec2Model(model_config(preset["model"])), work / "teacher.pt")
    if any(m == "final_distill" for m, _, _ in plan):
        make_step2_student(work / "teacher.pt", work / "step2_student.pt")
    print(f"{name}, torch {torch.__version__}, preset {'small' if args.small else 'base'} "
          f"({preset['batch_seconds']:g} s batches, {preset['warmup']} + {preset['steps']} steps), {len(plan)} runs, "
          f"work dir {work} (inputs made in {time.perf_counter() - start:.1f} s)", flush=True)
    result = {"device": device, "device_name": name, "torch": torch.__version__, "python": platform.python_version(),
              "preset": "small" if args.small else "base", "shapes": preset, "peak_tflops": peak,
              "compile_backend": backend, "runs": []}
    for method, amp, set_name in plan:
        left = None if args.time_budget is None else args.time_budget - (time.perf_counter() - start)
        spec = dict(preset, method=method, amp=amp, name=set_name, options=option_set(set_name, backend),
                    device=device, workdir=str(work), peak_tflops=peak)
        if left is not None and left < 45:  # too little for a run (start-up, warm-up and the timed steps)
            run = {"error": "skipped: --time-budget spent"}
        elif args.in_process:
            run = measure(copy.deepcopy(spec))
        else:
            started = time.perf_counter()
            run = run_alone(spec, left)
            run["wall_s"] = time.perf_counter() - started
        run.update(method=method, amp=amp, options=set_name)
        result["runs"].append(run)
        if "error" in run:
            print(f"{method} {amp} {set_name}: FAILED {run['error'][-1500:]}", flush=True)
        else:
            print(f"{method} {amp} {set_name}: {run['audio_per_s']:.1f} audio s / s, step {run['step_s']:.3f} s "
                  f"(data {100 * run['split']['data']:.1f}%), peak {run['peak_memory_gib']:.2f} GiB, "
                  f"{run['tflops_per_s']:.3g} TFLOP/s ({run.get('wall_s', 0):.0f} s)", flush=True)
        result["total_s"] = time.perf_counter() - start
        write_outputs(result, args)
    print(table(result))
    done = [r for r in result["runs"] if r["method"] == "distill_prune" and "error" not in r]
    if done:
        best = max(done, key=lambda r: r["audio_per_s"])
        print(f"best Step 1: {best['audio_per_s']:.1f} audio s / s ({best['amp']}, {best['options']}); the paper's "
              f"Step 1: ~490 per GPU (A100, fp16); total {result['total_s']:.0f} s")


def write_outputs(result: dict, args) -> None:
    shapes = result["shapes"]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(f"{result['device_name']}, torch {result['torch']}, {shapes['batch_seconds']:g} s "
                                 f"batches, one run each: {shapes['steps']} steps measured after {shapes['warmup']} "
                                 f"warm-up steps; compile backend {result['compile_backend']}\n\n"
                                 + table(result) + "\n")


if __name__ == "__main__":
    main()
