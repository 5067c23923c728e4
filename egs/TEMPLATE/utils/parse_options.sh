#!/usr/bin/env bash
# Command-line option parsing with Kaldi's parse_options.sh semantics (our own implementation).
#
# Usage: source it (without arguments) after defining the variables that options may set:
#
#     stage=1
#     use_fp16=false
#     train_set=
#     help_message="Usage: $0 [options] <arg>"
#     . utils/parse_options.sh
#     # "$@" now holds only the positional arguments.
#
# Rules:
#   --foo-bar X, --foo_bar X, --foo-bar=X  set the existing variable foo_bar to X;
#                                          an option without such a variable is an error.
#   A variable whose current value is true/false only accepts true or false, unless the caller lists
#   its other values in choices_<name> (e.g. choices_baseline="true false auto").
#   --config FILE      sources FILE first (defaults), whatever its position among the options;
#                      the other options then override it. May be given several times.
#   --help, -h         prints the caller's $help_message and exits 0.
#   --                 ends the options; parsing also stops at the first non-option argument.
#
# Errors print one line to stderr and exit 1. The caller's shell options (set -euo pipefail)
# are left as they are; every helper variable starts with _po_ and is unset at the end.

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    # Executed instead of sourced: it cannot set the caller's variables, so explain how to use it.
    _po_usage=$(sed -n '2,/^$/s/^# \{0,1\}//p' "$0")
    case "${1:-}" in
        --help|-h) printf '%s\n' "${_po_usage}"; exit 0 ;;
        *) printf '%s\n' "${_po_usage}" >&2; exit 1 ;;
    esac
fi

_po_names=()    # variable names, in command-line order
_po_values=()   # their new values
_po_configs=()  # --config files, in command-line order

while [[ $# -gt 0 ]]; do
    case "$1" in
        --help|-h)
            printf '%s\n' "${help_message:-Usage: $0 [options] (this script defines no help_message)}"
            exit 0 ;;
        --)
            shift
            break ;;
        --*=*)
            _po_option=${1%%=*}
            _po_value=${1#*=}
            shift ;;
        --?*)
            _po_option=$1
            if [[ $# -lt 2 ]]; then
                echo "$0: option ${_po_option} needs a value; see '$0 --help'" >&2
                exit 1
            fi
            _po_value=$2
            shift 2 ;;
        *)
            break ;;  # first positional argument
    esac
    _po_name=${_po_option#--}
    _po_name=${_po_name//-/_}
    if [[ "${_po_name}" == config ]]; then
        _po_configs+=("${_po_value}")
    else
        _po_names+=("${_po_name}")
        _po_values+=("${_po_value}")
    fi
done

# Config files first, so that explicit options override their defaults.
for _po_config in "${_po_configs[@]}"; do
    if [[ ! -f "${_po_config}" ]]; then
        echo "$0: config file '${_po_config}' (from --config) does not exist" >&2
        exit 1
    fi
    # shellcheck disable=SC1090
    . "${_po_config}"
done

for _po_i in "${!_po_names[@]}"; do
    _po_name=${_po_names[_po_i]}
    _po_value=${_po_values[_po_i]}
    if [[ ! "${_po_name}" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
        echo "$0: invalid option --${_po_name}: not a variable name; see '$0 --help'" >&2
        exit 1
    fi
    if [[ ! -v "${_po_name}" || "${_po_name}" == _po_* ]]; then
        echo "$0: unknown option --${_po_name} (no variable '${_po_name}' in $0); see '$0 --help'" >&2
        exit 1
    fi
    _po_old=${!_po_name}
    _po_choices="choices_${_po_name}"
    if [[ -n "${!_po_choices:-}" ]]; then
        if [[ " ${!_po_choices} " != *" ${_po_value} "* ]]; then
            echo "$0: option --${_po_name} takes one of: ${!_po_choices}; got '${_po_value}'" >&2
            exit 1
        fi
    elif [[ "${_po_old}" == true || "${_po_old}" == false ]] \
            && [[ "${_po_value}" != true && "${_po_value}" != false ]]; then
        echo "$0: option --${_po_name} takes true or false, got '${_po_value}'" >&2
        exit 1
    fi
    printf -v "${_po_name}" '%s' "${_po_value}"
done

unset _po_names _po_values _po_configs _po_config _po_option _po_value _po_name _po_old _po_i _po_choices
