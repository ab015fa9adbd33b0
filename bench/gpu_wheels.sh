#!/usr/bin/env bash
# Download, here, the wheels bench/gpu_check.sh installs on the GPU machine (Python 3.12, manylinux
# x86_64, no registry there) into bench/wheels/ (git-ignored), and check that they fit what travels
# with a run (64 MiB in all; this folder is kept under 56 MiB to leave room for the working tree).
#
# Only what the GPU image lacks (its package list: numpy, scipy, scikit-learn, scikit-image, requests,
# cloudpickle, fsspec, msgpack, psutil, pyyaml, jinja2, sortedcontainers, toolz ... are there): av,
# dask, distributed and their missing pure-python needs, facenet-pytorch, soxr. The MiniLM package
# (84 MB) is not carried: GPU runs use a tiny random RoBERTa made on the spot.
#
# Usage: bash bench/gpu_wheels.sh        (then: du -sh bench/wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=bench/wheels
LIMIT_MIB=56
mkdir -p "$DEST"
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux1_x86_64 -d "$DEST" \
    "av==18.1.0" "dask==2026.8.0" "distributed==2026.8.0" "facenet-pytorch==2.5.3" "soxr==1.1.0" \
    "partd==1.4.2" "locket==1.0.0" "tblib==3.2.2" "tornado==6.6.1" "zict==3.0.0"
size_kib=$(du -sk "$DEST" | cut -f1)
echo "bench/wheels: $((size_kib / 1024)) MiB ($size_kib KiB) in $(ls "$DEST" | wc -l) wheels (limit ${LIMIT_MIB} MiB)"
if (( size_kib > LIMIT_MIB * 1024 )); then
    echo "bench/wheels is larger than ${LIMIT_MIB} MiB: it will not travel with a run" >&2
    exit 1
fi
