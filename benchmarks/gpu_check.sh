#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu_check.py for what it measures).
#
#   benchmarks/gpu_check.sh prepare   # here, on the CPU machine: writes .gpu_check/ (~30 MiB:
#                                     # bundle at 480x640 + 2 real pairs), git-ignored via
#                                     # .git/info/exclude, to travel with `carry: [".gpu_check"]`
#   OUT=/some/dir benchmarks/gpu_check.sh run   # on the GPU machine; JSON lands in $OUT
#
# On the GPU machine `python3` must have numpy, opencv, pyyaml, onnx, onnxruntime and (for the
# fallback data point) torch; TensorRT is used when `import tensorrt` works there.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  prepare)
    mkdir -p .git/info
    grep -qxF '/.gpu_check/' .git/info/exclude 2>/dev/null || echo '/.gpu_check/' >> .git/info/exclude
    PYTHONPATH=. "${PYTHON:-.venv/bin/python}" benchmarks/gpu_check.py prepare --out .gpu_check
    ;;
  run)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    PYTHONPATH=. PYTHONUNBUFFERED=1 timeout "${GPU_CHECK_TIMEOUT:-540}" \
      "${PYTHON:-python3}" benchmarks/gpu_check.py run --work .gpu_check \
      --out "${OUT:-gpu_check_out}" --runs "${GPU_CHECK_RUNS:-20}"
    ;;
  *)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
