"""Context-parallel batch slicing (megatron's load-balanced 2*cp chunk layout)."""

from __future__ import annotations

import torch


def cp_chunk_ids(cp_size: int, cp_rank: int) -> tuple[int, int]:
    """The two sequence chunks (out of 2*cp) held by `cp_rank`: r and 2cp-1-r (balances causal work)."""
    return cp_rank, 2 * cp_size - 1 - cp_rank


def slice_batch_for_cp(
    batch: dict[str, torch.Tensor], cp_size: int | None = None, cp_rank: int | None = None
) -> dict[str, torch.Tensor]:
    """Keep this CP rank's chunks of every [b, s] tensor (dim 1); position ids are split like tokens.

    cp_size / cp_rank default to megatron's parallel_state. Tensors with fewer than 2 dims pass unchanged.
    """
    if cp_size is None or cp_rank is None:
        from megatron.core import parallel_state

        cp_size = parallel_state.get_context_parallel_world_size() if cp_size is None else cp_size
        cp_rank = parallel_state.get_context_parallel_rank() if cp_rank is None else cp_rank
    if cp_size == 1:
        return dict(batch)
    out = {}
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            out[key] = value
            continue
        seq = value.shape[1]
        if seq % (2 * cp_size):
            raise ValueError(
                f"sequence length {seq} of {key!r} must be divisible by 2 x --context-parallel-size "
                f"({2 * cp_size}); change --seq-length or --context-parallel-size"
            )
        chunks = value.chunk(2 * cp_size, dim=1)
        out[key] = torch.cat([chunks[i] for i in cp_chunk_ids(cp_size, cp_rank)], dim=1)
    return out
