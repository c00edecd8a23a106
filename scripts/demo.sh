#!/usr/bin/env bash
# The main job on a generated default: make infrared/visible scene pairs, fuse them with the
# bundled weights (models/fusion_default.pt) and write the fused images to outputs/demo/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
out="${DEMO_OUT:-outputs/demo}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
.venv/bin/python -m tdfusion_ros.scenes --out "$out/pairs" --count "${DEMO_PAIRS:-6}" --seed 7
.venv/bin/python -m tdfusion_ros.fuse --ir "$out/pairs/ir" --vis "$out/pairs/vi" --out "$out/fused"
echo "Demo done: fused colour images in $out/fused/colour, grey in $out/fused/grey"
