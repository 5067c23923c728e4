#!/usr/bin/env bash
# Prepare the self-contained demo corpus: synthesise it with espeak-ng (no downloads) into
# Kaldi data dirs and the corpus layouts s3prl's downstream tasks read.
# Run from egs/demo with path.sh sourced (so `python` is the toolkit's venv).
set -euo pipefail

log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

minutes=60          # minutes of audio (3 for a CI-sized corpus)
seed=1234           # seed of every random choice
nj=2                # parallel espeak-ng processes
num_speakers=24     # distinct synthetic speakers (20-104)
extra_test=         # test utterances on top of --minutes, e.g. ks=1000,ic=600,sid=900,pr=200
out_audio=downloads/demo   # audio + s3prl corpus layouts (+ s3prl_paths.yaml)
out_data=data              # Kaldi dirs: ${out_data}/{train,dev,test}
force=false         # regenerate even if a finished corpus is there

# (builtins only up to the tool check, so a bare PATH still gets the install hint)
help_message="Usage: $0 [options]
Synthesise the demo corpus into \${out_data}/{train,dev,test} and \${out_audio}.
Options:
  --minutes N        minutes of audio (default: ${minutes}; 3 for CI)
  --seed N           random seed (default: ${seed})
  --nj N             parallel synthesis processes (default: ${nj})
  --num-speakers N   synthetic speakers, 20-104 (default: ${num_speakers})
  --extra-test LIST  extra test utterances per task, e.g. ks=1000,ic=600,sid=900,pr=200 (default: none)
  --out-audio DIR    audio and s3prl layouts (default: ${out_audio})
  --out-data DIR     Kaldi data dirs (default: ${out_data})
  --force true|false regenerate a finished corpus (default: ${force})"

script=${BASH_SOURCE[0]}
[[ "${script}" == */* ]] || script=./${script}
local_dir=$(cd "${script%/*}" && pwd)
# shellcheck source=../utils/parse_options.sh
. "${local_dir}/../utils/parse_options.sh"

if [ $# -ne 0 ]; then
    echo "$0: unexpected argument '$1'; see '$0 --help'" >&2
    exit 1
fi

for tool in espeak-ng sox; do
    if ! command -v "${tool}" > /dev/null 2>&1; then
        echo "$0: ${tool} not found; install it with: apt-get install -y espeak-ng sox" >&2
        exit 1
    fi
done

if ! command -v python > /dev/null 2>&1; then
    echo "$0: python not found; run from egs/demo after '. ./path.sh' (it puts the venv's python first)" >&2
    exit 1
fi

force_opt=()
if [ "${force}" = true ]; then
    force_opt=(--force)
fi

log "Synthesising the demo corpus (${minutes} min, ${num_speakers} speakers, seed ${seed}) into ${out_audio} and ${out_data}"
python "${local_dir}/synth_corpus.py" \
    --out-audio "${out_audio}" \
    --out-data "${out_data}" \
    --minutes "${minutes}" \
    --seed "${seed}" \
    --nj "${nj}" \
    --num-speakers "${num_speakers}" \
    --extra-test "${extra_test}" \
    "${force_opt[@]}"
log "Done: Kaldi dirs in ${out_data}/{train,dev,test}; s3prl paths in ${out_audio}/s3prl_paths.yaml"
