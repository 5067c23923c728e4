#!/usr/bin/env bash
# Recipe of this corpus: names its data sets, then runs the shared stages of dphubert.sh
# (a link to ../TEMPLATE/dphubert.sh). Extra options go to dphubert.sh, e.g.
#     ./run.sh --stage 2 --stop_stage 3
#     ./run.sh --help
set -euo pipefail

train_set=train     # data/<set> dirs written by local/data.sh
valid_set=dev
test_sets="dev"

./dphubert.sh \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    "$@"
