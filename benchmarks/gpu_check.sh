#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu_check.py for what it measures).
#
#   benchmarks/gpu_check.sh prepare   # here, on the CPU machine: writes .gpu_check/ (~45 MiB:
#                                     # bundle at 480x640, its fp16 copies, 2 real pairs),
#                                     # git-ignored (.gitignore), to travel with
#                                     # `carry: [".gpu_check"]`
#   OUT=/some/dir benchmarks/gpu_check.sh run   # on the GPU machine; JSON lands in $OUT
#
# On the GPU machine `python3` must have numpy, opencv, pyyaml, onnx, onnxruntime and (for the
# fallback data point) torch; TensorRT is used when `import tensorrt` works there.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  prepare)
    PYTHONPATH=. "${PYTHON:-.venv/bin/python}" benchmarks/gpu_check.py prepare --out .gpu_check
    ;;
  run)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    if [ ! -f .gpu_check/bundle/bundle.yaml ]; then
      echo "gpu_check: .gpu_check/ is missing: run '$0 prepare' on the CPU machine and carry it" >&2
      exit 3
    fi
    "${PYTHON:-python3}" -c '
import importlib.util, sys
missing = [m for m in ("numpy", "cv2", "yaml", "onnxruntime") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: {sys.executable} lacks {missing}; set PYTHON to one that has them")
' || exit 3
    PYTHONPATH=. PYTHONUNBUFFERED=1 timeout "${GPU_CHECK_TIMEOUT:-540}" \
      "${PYTHON:-python3}" benchmarks/gpu_check.py run --work .gpu_check \
      --out "${OUT:-gpu_check_out}" --runs "${GPU_CHECK_RUNS:-20}"
    ;;
  *)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
