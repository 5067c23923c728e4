#!/usr/bin/env bash
# The self-contained demo: a corpus synthesised with espeak-ng, a small HuBERT teacher pretrained in stage 0,
# DPHuBERT compression (stages 3-4) and a mini-SUPERB (KS, IC, SID, PR) with s3prl's own task code (stage 5).
#     ./run.sh                       # everything, from scratch (make demo)
#     ./run.sh --stage 3             # from distill-prune on, after stages 0-2 ran
#     ./run.sh --local_data_opts "--minutes 5"   # a smaller corpus
set -euo pipefail

train_set=train
valid_set=dev
test_sets="test"

./dphubert.sh \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --teacher_format pretrain \
    --pretrain_config conf/pretrain_hubert.yaml \
    --distill_prune_config conf/distill_prune.yaml \
    --final_distill_config conf/final_distill.yaml \
    --distilhubert_config conf/distilhubert.yaml \
    --baseline true \
    --superb_tasks "ks ic sid pr" \
    --tag demo_sp0.75 \
    --nj 2 \
    --superb_opts "--num-threads 1" \
    "$@"
