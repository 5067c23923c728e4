"""Step-1 training speed on this machine, as ratios measured in one run (machines are noisy).

    python bench/train_speed.py [--steps 6] [--batch-seconds 16] [--utts 40] [--rounds 2] [--workdir DIR]

With a HuBERT-Base-shaped teacher and student (random weights) on generated audio, runs the real
``dphubert.bin.distill_prune`` with the teacher online and with dumped teacher features
(``dphubert.bin.dump_teacher``), each run in a fresh process, alternated for ``--rounds`` rounds, and prints
(medians): seconds of audio trained per wall-second, the share of the step spent waiting for data, and
dumped-feature vs online-teacher throughput. The first step (warm-up) of each run is excluded.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

import dphubert.distill.cli as distill_cli
from dphubert.bin import distill_prune, dump_teacher
from dphubert.distill.trainer import Trainer
from dphubert.models import Wav2Vec2Model, base_config, save_model


class TimedTrainer(Trainer):
    """The real trainer, timing how long each step waits for its batch and how much audio it trains on."""

    records = []  # (data wait s, step end time, audio s) per micro-batch

    def _micro_batches(self):
        inner = super()._micro_batches()
        while True:
            start = time.perf_counter()
            batch = next(inner)
            waited = time.perf_counter() - start
            TimedTrainer.records.append((waited, time.perf_counter(), batch["waveforms"].numel() / 16000))
            yield batch


def make_data(root: Path, utts: int) -> Path:
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(data / "wav.scp", "w") as scp, open(data / "utt2spk", "w") as u2s:
        for i in range(utts):
            t = np.arange(int(16000 * rng.uniform(3.0, 6.0))) / 16000
            wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.05 * rng.normal(size=t.size)
            path = data / f"u{i:03d}.wav"
            sf.write(path, wav.astype("float32"), 16000)
            scp.write(f"u{i:03d} {path.resolve()}\n")
            u2s.write(f"u{i:03d} s{i % 5}\n")
    return data


def run(args, exp: Path, extra) -> dict:
    TimedTrainer.records = []
    start = time.perf_counter()
    argv = ["--teacher", str(args.teacher), "--data", str(args.data), "--exp", str(exp), "--max-steps",
            str(args.steps), "--batch-seconds", str(args.batch_seconds), "--min-seconds", "2", "--max-seconds", "8",
            "--num-buckets", "null", "--warmup-steps", "1", "--save-interval", "100000", "--log-interval", "1",
            "--num-workers", "1", "--device", "cpu"] + extra
    distill_prune.main(argv)
    records = TimedTrainer.records[1:]  # drop the warm-up step
    wall = records[-1][1] - TimedTrainer.records[0][1]
    waited = sum(r[0] for r in records)
    audio = sum(r[2] for r in records)
    return {"audio_per_s": audio / wall, "data_share": waited / wall, "total_s": time.perf_counter() - start}


def run_alone(args, mode: str) -> dict:
    """One measurement in a fresh process: a second training run in the same process is slower (measured: the
    online teacher 2.5 -> 1.8 s of audio/s when run after the dumped one), and the recipes run each stage alone."""
    cmd = [sys.executable, __file__, "--measure", mode, "--workdir", str(args.workdir), "--steps", str(args.steps),
           "--batch-seconds", str(args.batch_seconds), "--utts", str(args.utts)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the {mode} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-seconds", type=float, default=16.0)
    parser.add_argument("--utts", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2, help="online/dumped pairs, alternated; medians reported")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--measure", choices=["online", "dumped"], help=argparse.SUPPRESS)  # one run (internal)
    args = parser.parse_args()
    if args.measure:
        distill_cli.Trainer = TimedTrainer
        extra = ["--teacher-feats", str(args.workdir / "dump")] if args.measure == "dumped" else []
        args.data, args.teacher = args.workdir / "data", args.workdir / "teacher.pt"
        result = run(args, args.workdir / f"exp_{args.measure}_{time.time_ns()}", extra)
        print(json.dumps(result))
        return
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dphubert-train-speed-"))
    work = args.workdir
    torch.manual_seed(0)
    args.data = make_data(work, args.utts)
    args.teacher = work / "teacher.pt"
    save_model(Wav2Vec2Model(base_config("hubert")), args.teacher)
    print(f"HuBERT-Base-shaped teacher and student, {args.steps} steps of ~{args.batch_seconds:g} s audio, "
          f"{torch.get_num_threads()} threads, work dir {work}; each run in its own process")
    start = time.perf_counter()
    dump_teacher.main(["--teacher", str(args.teacher), "--data", str(args.data), "--layers", "0,4,8,12",
                       "--out", str(work / "dump")])
    dump_s = time.perf_counter() - start
    runs = {"online": [], "dumped": []}
    for _ in range(args.rounds):
        for mode in runs:
            runs[mode].append(run_alone(args, mode))
    online, dumped = ({key: statistics.median(r[key] for r in runs[mode]) for key in runs[mode][0]}
                      for mode in ("online", "dumped"))

    print(f"online teacher: {online['audio_per_s']:.2f} s of audio per second; "
          f"data loading {100 * online['data_share']:.1f}% of the step")
    print(f"dumped features: {dumped['audio_per_s']:.2f} s of audio per second; "
          f"data loading {100 * dumped['data_share']:.1f}% of the step")
    print(f"dumped vs online throughput: {dumped['audio_per_s'] / online['audio_per_s']:.2f}x "
          f"(medians of {args.rounds} runs each; the dump itself took {dump_s:.1f} s for {args.utts} utterances)")


if __name__ == "__main__":
    main()
