#!/usr/bin/env bash
# CI's end-to-end smoke test of the demo recipe: stages 0-5 in a reduced setting (conf/smoke.sh: a 3-minute corpus,
# a few steps per stage, KS only), run in a scratch copy of egs/demo so the real recipe dir stays untouched;
# then checks that the outputs exist and are sane. Usage: tools/demo_smoke.sh [workdir]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/dphubert-smoke.XXXXXX)}
recipe=${work}/demo
rm -rf "${recipe}"
mkdir -p "${recipe}"
# The recipe's own files, with utils/ and dphubert.sh linked to the repository's TEMPLATE as setup.sh does.
(cd "${root}/egs/demo" && cp -R conf local run.sh db.sh cmd.sh path.sh "${recipe}/")
ln -s "${root}/egs/TEMPLATE/utils" "${recipe}/utils"
ln -s "${root}/egs/TEMPLATE/dphubert.sh" "${recipe}/dphubert.sh"
start=$(date +%s)
(cd "${recipe}" && ./run.sh --config conf/smoke.sh)
echo "demo smoke run: $(( $(date +%s) - start )) s in ${recipe}"
"${root}/.venv/bin/python" "${root}/tools/check_demo_outputs.py" "${recipe}" --tag smoke --teacher-tag teacher_smoke
