#!/usr/bin/env bash
# LibriSpeech, the paper's setting: HuBERT Base -> sparsity 0.75 on train960 (docs/method.md).
#     ./run.sh                                   # HuBERT Base, stages 0-5
#     ./run.sh --config conf/wavlm_base_plus.sh  # WavLM Base+ teacher
#     ./run.sh --config conf/hubert_large.sh     # HuBERT Large teacher
#     ./run.sh --train_set train100              # the paper's 100 h setting
#     ./run.sh --stage 3 --ngpu 4                # after stages 0-2: distill-prune on 4 GPUs (torchrun)
# Set LIBRISPEECH and TEACHER in db.sh first; cmd.sh selects local jobs or slurm.
set -euo pipefail

./dphubert.sh \
    --config conf/hubert_base.sh \
    --train_set train960 \
    --valid_set dev \
    --test_sets "test_clean test_other" \
    --superb_tasks "ks ic pr" \
    "$@"
