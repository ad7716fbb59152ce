#!/usr/bin/env bash
# A virtual environment with the REAL Transformer Engine (TE) on a machine without a GPU, with this project
# installed in it (editable, dev extras). Used by .ci/run for the `te` test group and the suite under TE.
#
#   bash tools/te_cpu_venv.sh [VENV]      # prints the venv's path on its last line
#
# VENV defaults to a folder keyed by the versions, so a venv built once is reused until a version changes:
#   ${TE_VENV_ROOT:-$HOME/.cache/megatron-endprompt}/te-venv-torch<TORCH>-te<TE>
# Needs: nvcc and the CUDA headers under $CUDA_HOME (default /usr/local/cuda) to compile TE's extension, and a
# torch CUDA build from the package index (torch 2.14.1 + CUDA 13.0 wheels). First build: ~12-14 minutes on
# 2 cores and ~7 GB (pip caches the compiled wheel: a rebuild on the same machine takes ~1.5 minutes).
# Without a GPU, TE imports and its modules construct (see tests/te/conftest.py); forward/backward need CUDA.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TORCH_VERSION=${TE_TORCH_VERSION:-2.14.1}
TE_VERSION=${TE_VERSION:-2.20.2}
V=${1:-${TE_VENV_ROOT:-$HOME/.cache/megatron-endprompt}/te-venv-torch${TORCH_VERSION}-te${TE_VERSION}}
PY="$V/bin/python"

if [ -x "$PY" ] && "$PY" -c "import torch, transformer_engine.pytorch" 2>/dev/null; then
  echo "reusing $V (Transformer Engine importable)" >&2
else
  echo "building $V: torch $TORCH_VERSION, transformer-engine $TE_VERSION compiled from source (~12 min)" >&2
  rm -rf "$V"
  mkdir -p "$(dirname "$V")"
  python3 -m venv "$V"
  "$PY" -m pip install -q "torch==$TORCH_VERSION" numpy pybind11 ninja wheel setuptools packaging
  # TE's build finds CUDA, NCCL and cuDNN headers and libraries in the NVIDIA wheels that torch pulled in.
  NV=$("$PY" -c "import site; print(site.getsitepackages()[0])")/nvidia
  export CPATH="$NV/cu13/include:$NV/nccl/include:$NV/cudnn/include${CPATH:+:$CPATH}"
  export LIBRARY_PATH="$NV/cu13/lib:$NV/nccl/lib:$NV/cudnn/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export NVTE_FRAMEWORK=pytorch MAX_JOBS=${MAX_JOBS:-2} CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
  export NVTE_CUDA_ARCHS=${NVTE_CUDA_ARCHS:-90}  # Hopper only: the CPU machine never runs the kernels
  "$PY" -m pip install -q --no-build-isolation "transformer-engine[pytorch]==$TE_VERSION"
fi
# The project (torch is already satisfied, so pip keeps the CUDA build).
"$PY" -m pip install -q -e "$ROOT[dev]"
# torch first: it loads the CUDA and NCCL libraries that TE's core library links against.
"$PY" -c "import torch, transformer_engine as te, transformer_engine.pytorch, megatron.core
print('torch', torch.__version__, '| Transformer Engine', te.__version__, '| megatron-core', megatron.core.__version__)" >&2
echo "$V"
