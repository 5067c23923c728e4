#!/usr/bin/env bash
# Checks a Kaldi-style data dir and stops at the first problem with one line naming file and line.
set -euo pipefail
export LC_ALL=C

usage="Usage: $0 <data-dir>
Checks <data-dir>/{wav.scp,utt2spk,spk2utt} and, when present, text, segments, utt2num_samples
and utt2dur: each sorted by its first field with LC_ALL=C, ids unique, no empty lines, the same
utterances in every utterance-keyed file, spk2utt matching utt2spk. With segments, wav.scp is
keyed by recording and every segment's recording must be in it.
e.g.: $0 data/train"
case "${1:-}" in
    --help|-h) echo "${usage}"; exit 0 ;;
    -*) echo "$0: unknown option $1" >&2; echo "${usage}" >&2; exit 1 ;;
esac
if [ $# -ne 1 ]; then echo "${usage}" >&2; exit 1; fi
dir=${1%/}
fix="fix with: utils/fix_data_dir.sh ${dir}"

fail() {
    echo "validate_data_dir.sh: $*" >&2
    exit 1
}

# Line-level checks of one file: no empty lines, field count in [min, max] (max 0 = any),
# ids (first fields) strictly increasing in C order, so sorted and unique.
check_lines() {
    local file=$1 min_fields=$2 max_fields=$3
    [ -s "${file}" ] || fail "${file} is empty"
    awk -v file="${file}" -v min="${min_fields}" -v max="${max_fields}" -v fix="${fix}" '
        function fail(problem) {
            printf "validate_data_dir.sh: %s line %d %s; %s\n", file, FNR, problem, fix > "/dev/stderr"
            exit 1
        }
        /\r$/ { fail("ends with a carriage return (Windows line ending)") }
        NF == 0 { fail("is empty") }
        NF < min || (max > 0 && NF > max) {
            fail("has " NF " fields, expected " (min == max ? min : "at least " min))
        }
        # ($1 "") makes the comparison a string one, also for numeric-looking ids.
        FNR > 1 && ($1 "") == previous { fail("repeats the id \"" $1 "\" of the line before") }
        FNR > 1 && ($1 "") < previous {
            fail("is not sorted: id \"" $1 "\" comes after \"" previous "\" (sort with LC_ALL=C)")
        }
        { previous = $1 "" }
    ' "${file}"
}

# Both files must hold the same ids (first fields); names the first id found in only one of them.
check_same_ids() {
    local reference=$1 file=$2
    awk -v reference="${reference}" -v file="${file}" -v fix="${fix}" '
        function fail(problem) {
            printf "validate_data_dir.sh: %s; %s\n", problem, fix > "/dev/stderr"
            failed = 1
            exit 1
        }
        FILENAME == reference { line_of[$1] = FNR; ids[FNR] = $1; next }
        !($1 in line_of) { fail(file " line " FNR ": id \"" $1 "\" is not in " reference) }
        { found[$1] = 1 }
        END {
            if (failed) exit 1
            for (i = 1; i in ids; i++) {
                if (!(ids[i] in found)) fail(reference " line " i ": id \"" ids[i] "\" is not in " file)
            }
        }
    ' "${reference}" "${file}"
}

[ -d "${dir}" ] || fail "${dir} is not a directory"
for name in wav.scp utt2spk; do
    [ -f "${dir}/${name}" ] || fail "${dir}/${name} is missing; local/data.sh must write it"
done
[ -f "${dir}/spk2utt" ] || fail "${dir}/spk2utt is missing; ${fix}"

check_lines "${dir}/wav.scp" 2 0
check_lines "${dir}/utt2spk" 2 2
check_lines "${dir}/spk2utt" 2 0
[ ! -f "${dir}/text" ] || check_lines "${dir}/text" 1 0
[ ! -f "${dir}/segments" ] || check_lines "${dir}/segments" 4 4
for name in utt2num_samples utt2dur; do
    [ ! -f "${dir}/${name}" ] || check_lines "${dir}/${name}" 2 2
done

# utt2spk defines the utterances; the other utterance-keyed files must hold exactly those.
if [ -f "${dir}/segments" ]; then
    check_same_ids "${dir}/utt2spk" "${dir}/segments"
    awk -v fix="${fix}" -v dir="${dir}" '
        FNR == NR { recordings[$1] = 1; next }
        !($2 in recordings) {
            printf "validate_data_dir.sh: %s/segments line %d: recording \"%s\" is not in %s/wav.scp; %s\n",
                dir, FNR, $2, dir, fix > "/dev/stderr"
            exit 1
        }
    ' "${dir}/wav.scp" "${dir}/segments"
else
    check_same_ids "${dir}/utt2spk" "${dir}/wav.scp"
fi
for name in text utt2num_samples utt2dur; do
    [ ! -f "${dir}/${name}" ] || check_same_ids "${dir}/utt2spk" "${dir}/${name}"
done

# spk2utt must be exactly what utt2spk gives.
utils_dir=$(dirname "${BASH_SOURCE[0]}")
"${utils_dir}/utt2spk_to_spk2utt.sh" "${dir}/utt2spk" | sort -k1,1 \
    | awk -v file="${dir}/spk2utt" -v fix="${fix}" '
        function fail(problem) {
            printf "validate_data_dir.sh: %s %s; %s\n", file, problem, fix > "/dev/stderr"
            failed = 1
            exit 1
        }
        FILENAME == "-" { expected[FNR] = $0; num_expected = FNR; next }
        FNR > num_expected { fail("line " FNR ": more lines than the " num_expected " speakers of utt2spk") }
        $0 != expected[FNR] {
            fail("line " FNR " does not match utt2spk: expected \"" expected[FNR] "\"")
        }
        END {
            if (failed) exit 1
            if (FNR != num_expected) fail("has " FNR " lines but utt2spk has " num_expected " speakers")
        }
    ' - "${dir}/spk2utt"

echo "validate_data_dir.sh: ${dir} is valid ($(wc -l < "${dir}/utt2spk") utterances)" >&2
