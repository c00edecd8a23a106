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
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$root/requirements/dev.txt" -c "$root/requirements/constraints.txt" 2>&1 \
    | grep -v "^WARNING: Location" || true
  # pip's exit status is lost in the pipe above; check the install by importing.
  "$venv/bin/python" -c "import torch, cv2, onnxruntime, rclpy, ultralytics, transformers" \
    || { echo "[setup] install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
# vision_msgs from interfaces/ (not on PyPI); a no-op when it already imports and is current.
bash "$root/scripts/build_interfaces.sh"
