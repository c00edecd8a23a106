#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv at the repo root.
# Reinstalls only when a requirements file changed since the last successful install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  "$python" -m venv "$venv"
fi

stamp="$venv/.tdfusion-requirements.sha256"
want="$(cat "$root"/requirements/*.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing requirements into $venv (first run takes a few minutes)"
  log="$venv/pip-install.log"
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check \
      -r "$root/requirements/dev.txt" -c "$root/requirements/constraints.txt" > "$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -n 30 >&2
    echo "[setup] pip install failed (full log: $log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
# vision_msgs from interfaces/ (not on PyPI); a no-op when it already imports and is current.
bash "$root/scripts/build_interfaces.sh"
