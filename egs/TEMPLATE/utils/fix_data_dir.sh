#!/usr/bin/env bash
# Repairs a Kaldi-style data dir so that utils/validate_data_dir.sh accepts it.
set -euo pipefail
export LC_ALL=C

usage="Usage: $0 <data-dir>
Repairs <data-dir> in place, after copying its files to <data-dir>/.backup/:
  - drops empty and malformed lines and Windows line endings,
  - sorts every file by its first field (LC_ALL=C) and keeps the first line of each repeated id,
  - keeps only the utterances present in all of wav.scp (or segments), utt2spk, text,
    utt2num_samples and utt2dur (those that exist); with segments, also drops segments whose
    recording is not in wav.scp and recordings no segment uses,
  - regenerates spk2utt from utt2spk (or utt2spk from spk2utt when only spk2utt exists),
then runs utils/validate_data_dir.sh.
e.g.: $0 data/train"
case "${1:-}" in
    --help|-h) echo "${usage}"; exit 0 ;;
    -*) echo "$0: unknown option $1" >&2; echo "${usage}" >&2; exit 1 ;;
esac
if [ $# -ne 1 ]; then echo "${usage}" >&2; exit 1; fi
dir=${1%/}
utils_dir=$(dirname "${BASH_SOURCE[0]}")
utt_files=(text utt2num_samples utt2dur)  # optional utterance-keyed files, as utt2spk

fail() {
    echo "fix_data_dir.sh: $*" >&2
    exit 1
}

[ -d "${dir}" ] || fail "${dir} is not a directory"
[ -f "${dir}/wav.scp" ] || fail "${dir}/wav.scp is missing; local/data.sh must write it"
[ -f "${dir}/utt2spk" ] || [ -f "${dir}/spk2utt" ] \
    || fail "${dir} has neither utt2spk nor spk2utt; local/data.sh must write utt2spk"

mkdir -p "${dir}/.backup"
for name in wav.scp utt2spk spk2utt segments "${utt_files[@]}"; do
    [ ! -f "${dir}/${name}" ] || cp "${dir}/${name}" "${dir}/.backup/${name}"
done

# Everything is built in a temporary dir and moved into place only when all went well.
work=$(mktemp -d)
trap 'rm -rf "${work}"' EXIT

# Copies a file without bad lines (fewer than min or more than max fields, max 0 = any),
# sorted by id, first line of each id only.
clean() {
    local name=$1 min_fields=$2 max_fields=$3
    awk -v min="${min_fields}" -v max="${max_fields}" '
        { sub(/\r$/, "") }
        NF >= min && (max == 0 || NF <= max)
    ' "${dir}/${name}" | sort -s -k1,1 -u > "${work}/${name}"
}

# Lines of a file whose first field is in the first field of ids_file.
keep_ids() {
    local ids_file=$1 file=$2
    awk 'NR == FNR { keep[$1] = 1; next } $1 in keep' "${ids_file}" "${file}"
}

if [ -f "${dir}/utt2spk" ]; then
    clean utt2spk 2 2
else
    "${utils_dir}/spk2utt_to_utt2spk.sh" "${dir}/spk2utt" | sort -s -k1,1 -u > "${work}/utt2spk"
fi
clean wav.scp 2 0
present=()
for name in "${utt_files[@]}"; do
    if [ -f "${dir}/${name}" ]; then
        case "${name}" in
            text) clean text 1 0 ;;  # "<utt>" alone: an empty transcript
            *) clean "${name}" 2 2 ;;
        esac
        present+=("${name}")
    fi
done

# The utterances to keep: those of utt2spk that every other utterance-keyed file has too.
cp "${work}/utt2spk" "${work}/keep"
if [ -f "${dir}/segments" ]; then
    clean segments 4 4
    awk 'NR == FNR { recordings[$1] = 1; next } $2 in recordings' \
        "${work}/wav.scp" "${work}/segments" > "${work}/segments.known"
    mv "${work}/segments.known" "${work}/segments"
    present+=(segments)
else
    present+=(wav.scp)
fi
for name in "${present[@]}"; do
    keep_ids "${work}/${name}" "${work}/keep" > "${work}/keep.new"
    mv "${work}/keep.new" "${work}/keep"
done
num_kept=$(wc -l < "${work}/keep")
[ "${num_kept}" -gt 0 ] || fail "no utterance of ${dir}/utt2spk is in all of: ${present[*]}; nothing changed"

for name in utt2spk "${present[@]}"; do
    keep_ids "${work}/keep" "${work}/${name}" > "${dir}/${name}.fixed"
    mv "${dir}/${name}.fixed" "${dir}/${name}"
done
if [ -f "${dir}/segments" ]; then
    # wav.scp keeps only the recordings that the kept segments use.
    awk 'NR == FNR { used[$2] = 1; next } $1 in used' "${dir}/segments" "${work}/wav.scp" > "${dir}/wav.scp"
fi
"${utils_dir}/utt2spk_to_spk2utt.sh" "${dir}/utt2spk" | sort -k1,1 > "${dir}/spk2utt"

for name in wav.scp utt2spk spk2utt segments "${utt_files[@]}"; do
    if [ -f "${dir}/.backup/${name}" ] && ! cmp -s "${dir}/.backup/${name}" "${dir}/${name}"; then
        echo "fix_data_dir.sh: ${dir}/${name}: $(wc -l < "${dir}/.backup/${name}") -> $(wc -l < "${dir}/${name}") lines" >&2
    fi
done
echo "fix_data_dir.sh: kept ${num_kept} utterances in ${dir}; originals in ${dir}/.backup/" >&2
"${utils_dir}/validate_data_dir.sh" "${dir}"
