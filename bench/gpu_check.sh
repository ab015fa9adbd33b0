#!/usr/bin/env bash
# The prepared GPU check (issue 10): pytest -m gpu, dialogue and encoder training throughput, extract on a
# generated 720p MELD-shaped corpus; ONE JSON file of results in OUT_DIR (OUT_DIR/gpu_check.json).
# Within 8 minutes on one H100 (each step has its own limit; see bench/gpu_check.py).
#
# Usage: bash bench/gpu_check.sh OUT_DIR [--cpu-smoke]
#   On the GPU machine: first `bash bench/gpu_wheels.sh` here and carry bench/wheels (39 MiB); they are
#   installed with pip --no-index into /tmp/m2f-site. --cpu-smoke: tiny sizes on CPU, no install.
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: bash bench/gpu_check.sh OUT_DIR [--cpu-smoke]" >&2
    exit 2
fi
OUT=$1; shift
SMOKE=""
[[ "${1:-}" == "--cpu-smoke" ]] && SMOKE="--cpu-smoke"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [[ -z "$SMOKE" ]]; then
    if ! ls bench/wheels/*.whl >/dev/null 2>&1; then
        echo "bench/wheels is empty: run bash bench/gpu_wheels.sh here and carry bench/wheels" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --find-links bench/wheels --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/m2f-site bench/wheels/*.whl
    export PYTHONPATH="/tmp/m2f-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$PY" bench/gpu_check.py "$OUT" $SMOKE
