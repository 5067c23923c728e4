#!/usr/bin/env bash
# Prepares the Kaldi-style data dirs of this corpus. THIS IS A TEMPLATE: edit local/data.sh.
#
# For every set that run.sh names (train_set, valid_set, test_sets) it must write:
#   data/<set>/wav.scp   "<utt-id> <audio path>" (16 kHz; flac/wav) or "<utt-id> <command> |"
#   data/<set>/utt2spk   "<utt-id> <speaker-id>" (utt-ids that start with their speaker-id sort best)
#   data/<set>/spk2utt   utils/utt2spk_to_spk2utt.sh data/<set>/utt2spk > data/<set>/spk2utt
#   data/<set>/text      "<utt-id> <transcript>" (optional)
# each sorted by utt-id with LC_ALL=C. Check a set with utils/validate_data_dir.sh data/<set>;
# utils/fix_data_dir.sh data/<set> sorts it and drops utterances missing from some file.
# Corpus locations come from db.sh.
set -euo pipefail

. ./db.sh
. utils/log.sh

help_message="Usage: $0
Writes data/<set>/{wav.scp,utt2spk,spk2utt[,text]} for this corpus from \${MYCORPUS} (db.sh)."
. utils/parse_options.sh
if [ $# -ne 0 ]; then
    echo "${help_message}" >&2
    exit 1
fi

# Delete this line once the example below is adapted to your corpus.
die "local/data.sh is still the template: edit local/data.sh to write data/<set>/{wav.scp,utt2spk,spk2utt} (see the comments at its top)"

if [ -z "${MYCORPUS}" ]; then
    die "MYCORPUS is empty: set it in db.sh to the directory that holds the corpus"
fi

# Example: audio in ${MYCORPUS}/<set>/<speaker>/<name>.flac.
for set in train dev; do
    log "Preparing data/${set} from ${MYCORPUS}/${set}"
    mkdir -p "data/${set}"
    find "${MYCORPUS}/${set}" -name '*.flac' \
        | awk -F/ '{ speaker = $(NF - 1); name = $NF; sub(/\.flac$/, "", name); print speaker "-" name, $0 }' \
        | LC_ALL=C sort -k1,1 > "data/${set}/wav.scp"
    awk '{ speaker = $1; sub(/-.*/, "", speaker); print $1, speaker }' "data/${set}/wav.scp" \
        > "data/${set}/utt2spk"
    utils/utt2spk_to_spk2utt.sh "data/${set}/utt2spk" > "data/${set}/spk2utt"
    utils/validate_data_dir.sh "data/${set}"
done
