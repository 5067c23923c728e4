#!/usr/bin/env bash
# Kaldi data dirs for LibriSpeech: data/{train960,train100,dev,test_clean,test_other} from ${LIBRISPEECH} (db.sh).
set -euo pipefail
. ./db.sh
. utils/log.sh

sets=train960,train100,dev,test_clean,test_other   # which data dirs to build
help_message="Usage: $0 [--sets train960,train100,dev,test_clean,test_other]
Builds data/<set> from the LibriSpeech tree at LIBRISPEECH (db.sh)."
. utils/parse_options.sh
[ $# -eq 0 ] || die "unexpected argument '$1'; see --help"

[ -n "${LIBRISPEECH}" ] || die "LIBRISPEECH is empty: set it in db.sh to the directory holding train-clean-100/ etc."
python local/prepare_librispeech.py --root "${LIBRISPEECH}" --out data --sets "${sets}" \
    || die "LibriSpeech preparation failed (see the error above)"
for dset in ${sets//,/ }; do
    utils/validate_data_dir.sh "data/${dset}"
done
log "LibriSpeech data dirs ready: ${sets}"
