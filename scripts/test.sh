#!/usr/bin/env bash
# The whole test suite: set up .venv if needed, lint, then every test in test/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
export AMENT_PREFIX_PATH="$root/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -ra test "$@"
