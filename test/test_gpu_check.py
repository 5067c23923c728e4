"""The shell logic of tools/gpu_check.sh on CPU: stand-ins for nvidia-smi and torchrun, the real Python steps.

The stand-in torchrun records its command line and leaves what a Step-1 run leaves in ``--exp`` (``train.log``,
``last.pt``: a real gated model file written by ``save_model``); the script's own Python (data, teacher) and
``dphubert.bin.prune`` run for real. A failing step must fail the script.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from dphubert.distill import gated_student
from dphubert.models import Wav2Vec2Model, save_model

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "gpu_check.sh"

FAKE_NVIDIA_SMI = """#!/usr/bin/env bash
[[ "$1" == -L ]] || exit 9
for ((i = 0; i < ${FAKE_NGPU:-0}; i++)); do echo "GPU $i: NVIDIA Stand-in (UUID: GPU-$i)"; done
"""

FAKE_TORCHRUN = """#!/usr/bin/env bash
echo "$*" >> "$TORCHRUN_LOG"
exp=
resume=false
while [[ $# -gt 0 ]]; do
    case "$1" in
        --exp) exp=$2; shift ;;
        --resume) resume=true ;;
    esac
    shift
done
if [[ $resume == true && -n "${FAIL_RESUME:-}" ]]; then echo "resume failed (stand-in)" >&2; exit 1; fi
mkdir -p "$exp"
echo "step 20/20: loss=1.0 (stand-in)" >> "$exp/train.log"
cp "$GATED_MODEL" "$exp/last.pt"
"""


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_check")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name, text in (("nvidia-smi", FAKE_NVIDIA_SMI), ("torchrun", FAKE_TORCHRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    torch.manual_seed(0)
    save_model(gated_student(Wav2Vec2Model(tiny_config("hubert")), ["conv", "head", "interm"]), root / "gated.pt")
    return root


def run_check(stand_ins, tmp_path, ngpu, **env):
    log = tmp_path / "torchrun.log"
    full_env = dict(os.environ, PATH=f"{stand_ins / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
                    f"{os.environ['PATH']}", PYTHON=sys.executable, FAKE_NGPU=str(ngpu), TORCHRUN_LOG=str(log),
                    GATED_MODEL=str(stand_ins / "gated.pt"), CUDA_VISIBLE_DEVICES="", **env)
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "work")], capture_output=True, text=True,
                          env=full_env, timeout=300)
    calls = log.read_text().splitlines() if log.exists() else []
    return proc, calls


def test_two_gpus_run_two_processes_and_every_step(stand_ins, tmp_path):
    proc, calls = run_check(stand_ins, tmp_path, ngpu=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "GPU CHECK OK"
    assert "== 2 GPU(s): 2 training process(es)" in proc.stdout
    assert len(calls) == 3 and all("--nproc_per_node 2 -m dphubert.bin.distill_prune" in c for c in calls)
    assert ["--amp fp16" in calls[0], "--amp bf16" in calls[1], "--resume" in calls[2]] == [True] * 3
    assert (tmp_path / "work" / "exp" / "fp16" / "pruned.pt").is_file()  # the real prune ran


def test_a_failed_resume_fails_the_check(stand_ins, tmp_path):
    proc, calls = run_check(stand_ins, tmp_path, ngpu=1, FAIL_RESUME="1")
    assert proc.returncode != 0 and "GPU CHECK OK" not in proc.stdout
    assert "resume failed (stand-in)" in proc.stderr
    assert len(calls) == 3 and all("--nproc_per_node 1 " in c for c in calls)
    assert not (tmp_path / "work" / "exp" / "fp16" / "pruned.pt").exists()  # stopped before pruning


def test_no_gpu_is_one_line_before_any_work(stand_ins, tmp_path):
    proc, calls = run_check(stand_ins, tmp_path, ngpu=0)
    assert proc.returncode == 1 and calls == [] and not (tmp_path / "work" / "teacher.pt").exists()
    assert proc.stderr.strip().splitlines() == [
        "gpu_check.sh: no CUDA GPU here (nvidia-smi -L lists none, torch sees none); run it on a GPU machine"]
