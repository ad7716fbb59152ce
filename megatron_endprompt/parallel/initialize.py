"""Process group and megatron `parallel_state` set-up, on CPU (gloo) or CUDA (nccl).

`initialize()` works under torchrun (reads RANK / WORLD_SIZE / LOCAL_RANK) and in a plain single process
(creates a one-rank group on 127.0.0.1 with a free port). It can be called again with another layout in the
same process: the megatron model-parallel groups are destroyed and rebuilt; the world group is kept.
"""

from __future__ import annotations

import logging
import os
import random
import socket

import numpy as np
import torch
import torch.distributed as dist

from megatron_endprompt.parallel import cpu_support

logger = logging.getLogger(__name__)

_LAYOUT: tuple | None = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_process_group() -> None:
    """Join (or create) the default process group; gloo on CPU, nccl on CUDA.

    Under torchrun the env:// rendezvous is used. Otherwise a one-rank group on a free local port is created
    WITHOUT touching os.environ, so that subprocesses (torchrun launches, CLIs) do not inherit a stale
    RANK / WORLD_SIZE / MASTER_PORT.
    """
    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    under_launcher = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) if under_launcher else 0)
    if under_launcher:
        dist.init_process_group(backend=backend)
    else:
        port = _free_port()
        dist.init_process_group(backend=backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    logger.info("process group: backend=%s world_size=%d", backend, dist.get_world_size())


def _seed(seed: int) -> None:
    """Seed python/numpy/torch and megatron's model-parallel RNG tracker (CPU tracker on CPU)."""
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def initialize(tp: int = 1, pp: int = 1, cp: int = 1, seed: int = 1234, vp: int | None = None) -> None:
    """Set up torch.distributed + megatron parallel_state for (tp, pp, cp) with DP = world / (tp*pp*cp).

    vp: virtual pipeline stages per rank (interleaved 1F1B), None for none.
    """
    from megatron.core import parallel_state

    if not torch.cuda.is_available():
        cpu_support.apply()
    _init_process_group()
    world = dist.get_world_size()
    if world % (tp * pp * cp):
        raise ValueError(
            f"world size {world} is not divisible by --tensor-model-parallel-size ({tp}) x "
            f"--pipeline-model-parallel-size ({pp}) x --context-parallel-size ({cp})"
        )
    global _LAYOUT
    layout = (tp, pp, cp, vp)
    if parallel_state.model_parallel_is_initialized() and _LAYOUT != layout:
        parallel_state.destroy_model_parallel()
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=vp,
            context_parallel_size=cp,
        )
        _LAYOUT = layout
    _seed(seed)
    logger.info("parallel layout tp=%d pp=%d cp=%d dp=%d vp=%s", tp, pp, cp, world // (tp * pp * cp), vp)


def destroy() -> None:
    """Tear down megatron's groups and the default process group."""
    from megatron.core import parallel_state

    global _LAYOUT
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    _LAYOUT = None
    if dist.is_initialized():
        dist.destroy_process_group()
