#!/usr/bin/env bash
# Creates the recipe dir of a new corpus, as ESPnet's egs2/TEMPLATE/asr1/setup.sh does.
set -euo pipefail

usage="Usage: $0 <new-recipe-dir>
Creates <new-recipe-dir> with copies of the skeleton files of egs/TEMPLATE/skeleton/
(run.sh, db.sh, cmd.sh, path.sh, conf/ with the training configs, local/data.sh) and relative symlinks to the shared
egs/TEMPLATE/utils/ and egs/TEMPLATE/dphubert.sh.
e.g.: $0 egs/mycorpus"
case "${1:-}" in
    --help|-h) echo "${usage}"; exit 0 ;;
    -*) echo "$0: unknown option $1" >&2; echo "${usage}" >&2; exit 1 ;;
esac
if [ $# -ne 1 ]; then echo "${usage}" >&2; exit 1; fi
target=${1%/}
template_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ -e "${target}" ]; then
    echo "setup.sh: ${target} already exists; give a new dir (or remove that one first)" >&2
    exit 1
fi
mkdir -p "${target}"
cp -R "${template_dir}/skeleton/." "${target}/"
for name in utils dphubert.sh; do
    # Relative links keep working when the repository is moved or mounted elsewhere.
    ln -s "$(realpath -m --relative-to="${target}" "${template_dir}/${name}")" "${target}/${name}"
done

echo "setup.sh: created ${target}. Next: set the corpus path and TEACHER/TEACHER_FORMAT in ${target}/db.sh, adapt" \
    "${target}/local/data.sh and the sets in ${target}/run.sh (the paper's training settings are in" \
    "${target}/conf/*.yaml; their comments say how to shorten them for a first try), then: cd ${target} && ./run.sh" >&2
