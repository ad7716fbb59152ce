#!/usr/bin/env bash
# Download, on a machine with internet, the wheels that benchmarks/gpu_check.sh may install offline on a GPU
# machine without internet. They go to ./.whl (git-ignored); carry that directory to the GPU machine with the
# working tree (about 6 MB). Its Python version may differ from this one: pass it (the lent machines run 3.12).
#
#   bash benchmarks/prepare_gpu_wheels.sh [PYTHON_VERSION=3.12]
#
# The list is `python3 benchmarks/gpu_env.py --wheels`, the same list gpu_check.sh installs from when a module is
# missing: megatron-core and the small packages our code imports. Never torch, triton, transformers or pytest
# (the machine brings them), all with --no-deps (pip must not try to resolve torch offline).
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
COMMON=(--dest .whl --only-binary=:all: --no-deps --python-version "$PYV" --platform manylinux2014_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any)
mkdir -p .whl
mapfile -t WHEELS < <(python3 benchmarks/gpu_env.py --wheels)
python3 -m pip download -q "${COMMON[@]}" "${WHEELS[@]}"
du -sh .whl && ls .whl
