#!/usr/bin/env bash
# ESPnet-style logging for recipe scripts.
# Usage: source it, then call log or die:
#
#     . utils/log.sh
#     log "Stage 1: data preparation"   # -> 2026-01-31T12:00:00 (run.sh:12) Stage 1: data preparation
#     die "data/train/wav.scp is missing; run stage 1 first"
#                                       # -> 2026-01-31T12:00:00 (run.sh:13) ERROR: data/... ; exit 1
#
# Both write to stderr; the location is the file and line that called log/die.

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    # Executed instead of sourced: the functions would vanish with this process.
    _log_usage=$(sed -n '2,/^$/s/^# \{0,1\}//p' "$0")
    case "${1:-}" in
        --help|-h) printf '%s\n' "${_log_usage}"; exit 0 ;;
        *) printf '%s\n' "${_log_usage}" >&2; exit 1 ;;
    esac
fi

# Prints "date (file:line) message" for the caller `depth` frames above this function.
_log_line() {
    local depth=$1
    shift
    local file=${BASH_SOURCE[depth + 1]:-${0}}
    printf '%s (%s:%s) %s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "${file##*/}" \
        "${BASH_LINENO[depth]}" "$*" >&2
}

log() {
    _log_line 1 "$@"
}

die() {
    _log_line 1 "ERROR: $*"
    exit 1
}
