#!/usr/bin/env bash
# The prepared GPU measurement of training throughput (issue 15): bench/gpu_train_speed.py with every speed option
# off and on, bf16 and fp16, Step 1, Step 2 and the DistilHuBERT-style baseline, under a time budget.
#
#   tools/gpu_speed.sh --fetch-wheels   # here, once (no GPU needed): wheels of the packages the GPU image lacks
#                                       # (soundfile, cffi, pycparser, kaldiio; Python 3.12) into .whl/
#   tools/gpu_speed.sh                  # on the GPU machine: ~6 minutes (runs past GPU_SPEED_BUDGET s are skipped)
#   tools/gpu_speed.sh --cpu            # the same pipeline here on CPU with tiny shapes (proves it end to end)
#
# From a session with the device tool: run(command="PYTHONUNBUFFERED=1 tools/gpu_speed.sh", carry=[".whl"],
# timeout_s=480). Writes gpu_speed.json, gpu_speed.md and gpu_speed.log under $OUT (the device tool's output
# folder) or bench/out/; the JSON and table are rewritten after every run, so a run stopped early keeps what it did.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "${root}"
mode=gpu
case "${1:-}" in
    "") ;;
    --cpu) mode=cpu ;;
    --fetch-wheels) mode=fetch ;;
    *) echo "usage: tools/gpu_speed.sh [--cpu | --fetch-wheels]" >&2; exit 2 ;;
esac

if [ "${mode}" = fetch ]; then
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 kaldiio==2.18.1
    ls -l .whl
    exit 0
fi

out=${OUT:-bench/out}
mkdir -p "${out}"
if [ -n "${PYTHON:-}" ]; then
    python=${PYTHON}
elif [ "${mode}" = cpu ] && [ -x .venv/bin/python ]; then
    python=.venv/bin/python
else
    python=python3  # the GPU image's, with torch
fi
if ! ${python} -c "import soundfile, kaldiio" 2>/dev/null; then
    if [ ! -d .whl ]; then
        echo "tools/gpu_speed.sh: ${python} lacks soundfile/kaldiio and there is no .whl/; run tools/gpu_speed.sh" \
             "--fetch-wheels here first and carry .whl" >&2
        exit 1
    fi
    ${python} -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
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
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # a shared 2-core machine
    fi
    ${python} bench/gpu_train_speed.py "${args[@]}" \
        --json "${out}/gpu_speed.json" --markdown "${out}/gpu_speed.md"
} 2>&1 | tee "${log}"
echo "wrote ${out}/gpu_speed.json, ${out}/gpu_speed.md, ${log}"
