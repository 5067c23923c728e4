# Environment of the recipe: the repository's Python venv, the dphubert package on PYTHONPATH,
# utils/ (run.pl, slurm.pl, ...) on PATH, C collation for sorted data dirs.
# dphubert.sh sources it; source it yourself (. ./path.sh) to run its commands by hand.

_recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# utils links to <repository>/egs/TEMPLATE/utils, which finds the repository wherever the recipe is.
MAIN_ROOT=$(readlink -f "${_recipe_dir}/utils/../../..")
export MAIN_ROOT

if [ -f "${MAIN_ROOT}/.venv/bin/activate" ]; then
    # shellcheck disable=SC1091
    . "${MAIN_ROOT}/.venv/bin/activate"
else
    echo "path.sh: no Python venv at ${MAIN_ROOT}/.venv; create it with ${MAIN_ROOT}/tools/install.sh" >&2
fi

export PATH="${_recipe_dir}/utils:${PATH}"
export PYTHONPATH="${MAIN_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export LC_ALL=C
export PYTHONIOENCODING=UTF-8
unset _recipe_dir
