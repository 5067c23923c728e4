#!/usr/bin/env bash
# The self-contained demo: a corpus synthesised with espeak-ng, a small HuBERT teacher pretrained in stage 0,
# DPHuBERT compression (stages 3-4) and a mini-SUPERB (KS and PR; IC and SID with --superb_tasks) with s3prl's own
# task code (stage 5).
#     ./run.sh                                   # everything, from scratch (make demo)
#     ./run.sh --stage 3                         # from distill-prune on, after stages 0-2 ran
#     ./run.sh --config conf/smoke.sh            # the reduced setting CI runs (a few minutes)
#     ./run.sh --local_data_opts "--minutes 5"   # a smaller corpus
set -euo pipefail

./dphubert.sh \
    --config conf/demo.sh \
    --train_set train \
    --valid_set dev \
    --test_sets test \
    "$@"
