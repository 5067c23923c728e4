#!/usr/bin/env bash
# One short CUDA check of the training stack (run on a GPU machine): tiny teacher, generated audio, then
# Step-1 distill-prune for a few steps under torchrun with NCCL, with fp16 (GradScaler) and with bf16 AMP,
# a resume, and physical pruning; 2 processes (DDP) where 2 or more GPUs are present, else 1. Prints the training
# logs' last lines; any failing step stops it with a non-zero exit status (no "GPU CHECK OK").
# Usage: tools/gpu_check.sh [workdir]   (PYTHON=..., TORCHRUN=... select the interpreters)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
python=${PYTHON:-python3}
torchrun=${TORCHRUN:-torchrun}
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
mkdir -p "${work}"
cd "${work}"
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
if [[ ${ngpu} -eq 0 ]]; then
    ngpu=$(${python} -c 'import torch; print(torch.cuda.device_count())')
fi
if [[ ${ngpu} -eq 0 ]]; then
    echo "gpu_check.sh: no CUDA GPU here (nvidia-smi -L lists none, torch sees none); run it on a GPU machine" >&2
    exit 1
fi
nproc=$(( ngpu >= 2 ? 2 : 1 ))
echo "== ${ngpu} GPU(s): ${nproc} training process(es)"
${python} - <<'PY'
import numpy as np, soundfile as sf, torch, sys, os
sys.path.insert(0, os.path.join(os.environ["PYTHONPATH"].split(":")[0], "test"))
from conftest import tiny_config
from dphubert.models import Wav2Vec2Model, save_model
os.makedirs("data/train", exist_ok=True)
rng = np.random.default_rng(0)
with open("data/train/wav.scp", "w") as scp, open("data/train/utt2spk", "w") as u2s:
    for i in range(24):
        path = os.path.abspath(f"data/train/u{i:03d}.wav")
        t = np.arange(int(16000 * rng.uniform(2.0, 4.0))) / 16000
        wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.normal(size=t.size)
        sf.write(path, wav.astype("float32"), 16000)
        scp.write(f"u{i:03d} {path}\n"); u2s.write(f"u{i:03d} s{i % 4}\n")
torch.manual_seed(0)
save_model(Wav2Vec2Model(tiny_config("hubert")), "teacher.pt")
print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
train() {  # train <amp> <max steps> [extra args]: Step 1 under torchrun, NCCL
    local amp=$1 steps=$2
    shift 2
    ${torchrun} --standalone --nproc_per_node "${nproc}" -m dphubert.bin.distill_prune --teacher teacher.pt \
        --data data/train --exp "exp/${amp}" --device cuda --amp "${amp}" --max-steps "${steps}" --min-seconds 1.0 \
        --max-seconds 5.0 --batch-seconds 12 --num-workers 1 --save-interval 10 --log-interval 5 \
        --target-sparsity 0.3 --sparsity-warmup-steps 10 --warmup-steps 2 --valid-interval 1000 "$@"
}
for amp in fp16 bf16; do
    echo "== distill_prune, torchrun + NCCL, amp=${amp}"
    train "${amp}" 20
    tail -n 3 "exp/${amp}/train.log"
done
echo "== resume fp16 run to 30 steps"
train fp16 30 --resume
tail -n 2 exp/fp16/train.log
echo "== prune"
${python} -m dphubert.bin.prune --ckpt exp/fp16/last.pt --out exp/fp16/pruned.pt --teacher teacher.pt | tail -n 3
echo "GPU CHECK OK"
