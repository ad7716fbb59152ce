"""parallel.initialize: single-process group, re-initialisation, layout errors that name the flags."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist


def test_single_process_reinit_and_errors(monkeypatch):
    from megatron.core import parallel_state

    from megatron_endprompt.parallel import destroy, initialize

    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    initialize(tp=1, pp=1, cp=1, seed=1)
    assert dist.is_initialized() and dist.get_world_size() == 1
    assert parallel_state.get_tensor_model_parallel_world_size() == 1
    with pytest.raises(ValueError, match="--tensor-model-parallel-size"):
        initialize(tp=2)
    destroy()
    assert not dist.is_initialized() and not parallel_state.model_parallel_is_initialized()
    initialize(seed=2)  # a fresh group in the same process
    assert parallel_state.model_parallel_is_initialized()
    assert dist.get_backend() == ("nccl" if torch.cuda.is_available() else "gloo")
    # Subprocesses (torchrun launches, CLIs) must not inherit a rendezvous from this process.
    assert not {"RANK", "WORLD_SIZE", "MASTER_PORT"} & set(os.environ)
