#!/usr/bin/env bash
# Download, on a machine with internet, the wheels that benchmarks/gpu_check.sh installs offline on a GPU machine
# without internet (its Python version may differ from this one: pass it). They go to ./.whl (git-ignored);
# carry that directory to the GPU machine with the working tree (it stays well under 64 MiB).
#
#   bash benchmarks/prepare_gpu_wheels.sh [PYTHON_VERSION=3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
COMMON=(--dest .whl --only-binary=:all: --python-version "$PYV" --platform manylinux2014_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any)
mkdir -p .whl
# megatron-core without its torch dependency (the GPU machine brings its own CUDA torch).
python -m pip download -q "${COMMON[@]}" --no-deps "megatron-core==0.16.1"
# transformers and its pure/small dependencies; never torch.
python -m pip download -q "${COMMON[@]}" --no-deps transformers huggingface-hub tokenizers safetensors \
  regex pyyaml tqdm filelock fsspec packaging sentencepiece psutil typer-slim hf-xet
du -sh .whl && ls .whl
