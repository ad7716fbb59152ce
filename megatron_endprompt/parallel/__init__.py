"""Parallel layout (torch.distributed + megatron parallel_state), CPU support and context-parallel slicing."""

from megatron_endprompt.parallel.context_parallel import slice_batch_for_cp
from megatron_endprompt.parallel.initialize import destroy, initialize

__all__ = ["destroy", "initialize", "slice_batch_for_cp"]
