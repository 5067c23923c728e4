#!/usr/bin/env bash
# Converts spk2utt ("<spk> <utt1> <utt2> ..." lines) to utt2spk ("<utt> <spk>" lines), in input order.
set -euo pipefail

usage="Usage: $0 [spk2utt] > utt2spk   (reads stdin without an argument)
e.g.: $0 data/train/spk2utt | LC_ALL=C sort -k1,1 > data/train/utt2spk"
case "${1:-}" in
    --help|-h) echo "${usage}"; exit 0 ;;
    -*) echo "$0: unknown option $1" >&2; echo "${usage}" >&2; exit 1 ;;
esac
if [ $# -gt 1 ]; then echo "${usage}" >&2; exit 1; fi
input=${1:--}

awk -v prog="${0##*/}" -v name="${1:-stdin}" '
    NF < 2 {
        printf "%s: %s line %d: expected \"<spk> <utt1> [<utt2> ...]\", got \"%s\"\n", prog, name, FNR, $0 > "/dev/stderr"
        exit 1
    }
    { for (i = 2; i <= NF; i++) print $i, $1 }
' "${input}"
