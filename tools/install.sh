#!/usr/bin/env bash
# Build .venv/ in the repository root with everything the toolkit, its recipes and its tests need.
# Idempotent: a second call only checks that nothing changed (a stamp holds the requirements' hash).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${VENV:-$root/.venv}
python=${PYTHON:-python3}

log() { echo "[install] $*"; }

# System tools: espeak-ng (demo corpus), sox. Installed when missing and we are root.
missing=()
for tool in espeak-ng sox; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "WARNING: missing ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
  fi
fi

stamp="$venv/.dphubert-installed"
want=$(cat tools/requirements.txt tools/install.sh setup.py | sha1sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  log "$venv is up to date"
  exit 0
fi

[ -x "$venv/bin/python" ] || { log "creating $venv"; "$python" -m venv "$venv"; }
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install "pip<25" "setuptools>=77" wheel  # pip 25+ refuses a URL dep in ci_sdr's metadata
log "installing tools/requirements.txt (first time: a few minutes)"
"${pip[@]}" install -r tools/requirements.txt
"${pip[@]}" install --no-deps espnet==202511 ci_sdr  # ci_sdr: its "all" extra has a URL dep newer pips refuse
"${pip[@]}" install --no-deps -e .
echo "$want" > "$stamp"
log "done: source $venv/bin/activate"
