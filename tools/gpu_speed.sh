#!/usr/bin/env bash
# Training throughput on one GPU: bench/gpu_train_speed.py with every speed option off and on, bf16 and fp16,
# Step 1, Step 2 and the DistilHuBERT-style baseline, under a time budget (bench/README.md).
#
#   tools/gpu_speed.sh [--out DIR]          # on a machine with a CUDA GPU: ~6 minutes (runs that would start
#                                           # after GPU_SPEED_BUDGET seconds, default 330, are skipped)
#   tools/gpu_speed.sh --cpu [--out DIR]    # the same pipeline on CPU with tiny shapes (checks it end to end)
#   tools/gpu_speed.sh --fetch-wheels       # once, where pip can download: wheels of soundfile, cffi, pycparser
#                                           # and kaldiio (Python 3.12) into .whl/, for a GPU image that has
#                                           # torch but lacks them (they are then installed from .whl/)
#
# Writes gpu_speed.json, gpu_speed.md (the table) and gpu_speed.log under DIR (default bench/out); the JSON and the
# table are rewritten after every run, so a run stopped early keeps what it did. PYTHON=... selects the
# interpreter (default: .venv/bin/python with --cpu, else python3).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "${root}"
usage="usage: tools/gpu_speed.sh [--cpu] [--out DIR] | --fetch-wheels | --help"
mode=gpu
out=bench/out
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) mode=cpu ;;
        --fetch-wheels) mode=fetch ;;
        --out)
            [ $# -ge 2 ] && [ -n "$2" ] || { echo "tools/gpu_speed.sh: --out needs a directory; ${usage}" >&2; exit 2; }
            out=$2
            shift ;;
        --out=*) out=${1#--out=} ;;
        -h|--help) echo "${usage}"; awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "tools/gpu_speed.sh: unknown argument '$1'; ${usage}" >&2; exit 2 ;;
    esac
    shift
done

if [ "${mode}" = fetch ]; then
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 kaldiio==2.18.1
    ls -l .whl
    exit 0
fi

mkdir -p "${out}"
if [ -n "${PYTHON:-}" ]; then
    python=${PYTHON}
elif [ "${mode}" = cpu ] && [ -x .venv/bin/python ]; then
    python=.venv/bin/python
else
    python=python3  # the GPU machine's, with torch
fi
if ! ${python} -c "import soundfile, kaldiio" 2>/dev/null; then
    if [ ! -d .whl ]; then
        echo "tools/gpu_speed.sh: ${python} lacks soundfile/kaldiio and there is no .whl/; run" \
             "tools/gpu_speed.sh --fetch-wheels where pip can download, and copy .whl/ here" >&2
        exit 1
    fi
    # Installed for this run only, into a scratch dir removed at the end.
    site=$(mktemp -d "${TMPDIR:-/tmp}/gpu_speed_site.XXXXXX")
    trap 'rm -rf "${site}"' EXIT
    ${python} -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "${site}" .whl/*.whl
    export PYTHONPATH=${site}
fi
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"

log="${out}/gpu_speed.log"
{
    date -u
    if [ "${mode}" = gpu ]; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
        args=(--time-budget "${GPU_SPEED_BUDGET:-330}")
    else
        args=(--small --device cpu)
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    fi
    ${python} bench/gpu_train_speed.py "${args[@]}" \
        --json "${out}/gpu_speed.json" --markdown "${out}/gpu_speed.md"
} 2>&1 | tee "${log}"
echo "wrote ${out}/gpu_speed.json, ${out}/gpu_speed.md, ${log}"
