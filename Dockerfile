# GPU image: NGC PyTorch (CUDA, cuDNN, NCCL, Transformer Engine, apex preinstalled) + megatron-endprompt.
#
#   docker build -t megatron-endprompt .
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --rm -it -v $PWD/runs:/workspace/megatron-endprompt/runs \
#       megatron-endprompt make test
#
# The base image is a build argument: megatron-core 0.16.x needs torch >= 2.6 and, for the TE layer spec,
# transformer-engine 2.9-2.11 (any NGC PyTorch release from 25.10 on should carry matching versions; check the
# NGC release notes when changing it). Without TE the model falls back to the local spec + SDPA attention.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.11-py3
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /workspace/megatron-endprompt

# Dependencies first (cached layer): only the packaging files are needed to resolve them.
COPY setup.py pyproject.toml README.md ./
COPY megatron_endprompt/__init__.py megatron_endprompt/__init__.py
# --no-build-isolation + the image's pip constraints keep NGC's own torch / TE builds in place.
RUN python -m pip install --no-cache-dir --no-build-isolation -e ".[dev]"

COPY . .
RUN python -m pip install --no-cache-dir --no-build-isolation --no-deps -e . \
    && python -c "import megatron.core, megatron_endprompt; print('megatron-core', megatron.core.__version__)"

CMD ["bash"]
