#!/usr/bin/env bash
# Converts utt2spk ("<utt> <spk>" lines) to spk2utt ("<spk> <utt1> <utt2> ..." lines).
# Speakers and utterances keep their order of first appearance, as Kaldi's utt2spk_to_spk2utt.pl.
set -euo pipefail

usage="Usage: $0 [utt2spk] > spk2utt   (reads stdin without an argument)
e.g.: $0 data/train/utt2spk > data/train/spk2utt"
case "${1:-}" in
    --help|-h) echo "${usage}"; exit 0 ;;
    -*) echo "$0: unknown option $1" >&2; echo "${usage}" >&2; exit 1 ;;
esac
if [ $# -gt 1 ]; then echo "${usage}" >&2; exit 1; fi
input=${1:--}

awk -v prog="${0##*/}" -v name="${1:-stdin}" '
    NF != 2 {
        printf "%s: %s line %d: expected \"<utt> <spk>\", got \"%s\"\n", prog, name, FNR, $0 > "/dev/stderr"
        failed = 1
        exit 1  # still runs END, which must then print nothing
    }
    !($2 in utts) { speakers[++num_speakers] = $2; utts[$2] = $1; next }
    { utts[$2] = utts[$2] " " $1 }
    END {
        if (failed) exit 1
        for (i = 1; i <= num_speakers; i++) print speakers[i], utts[speakers[i]]
    }
' "${input}"
