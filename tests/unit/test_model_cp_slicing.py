"""slice_batch_for_cp against megatron-core's own get_batch_on_this_cp_rank."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from megatron_endprompt.parallel import slice_batch_for_cp


def _batch(seq: int = 24) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "tokens": torch.randint(0, 100, (2, seq), generator=g),
        "labels": torch.randint(0, 100, (2, seq), generator=g),
        "loss_weights": torch.rand(2, seq, generator=g),
        "position_ids": torch.stack([torch.arange(seq), torch.arange(seq) + 60000]),
    }


@pytest.mark.parametrize("cp_size", [2, 3])
def test_matches_megatron_get_batch_on_this_cp_rank(cp_size):
    from megatron.core import parallel_state, utils

    batch = _batch()
    pieces = []
    for rank in range(cp_size):
        ours = slice_batch_for_cp(batch, cp_size=cp_size, cp_rank=rank)
        with (
            mock.patch.object(parallel_state, "get_context_parallel_world_size", return_value=cp_size),
            mock.patch.object(parallel_state, "get_context_parallel_rank", return_value=rank),
        ):
            ref = utils.get_batch_on_this_cp_rank(dict(batch))
        for key in batch:
            assert torch.equal(ours[key], ref[key]), key
        pieces.append(ours["position_ids"])
    # Every position appears exactly once across the CP ranks.
    assert sorted(torch.cat(pieces, dim=1)[1].tolist()) == (torch.arange(24) + 60000).tolist()


def test_rank_chunks_and_errors():
    batch = {"position_ids": torch.arange(8)[None], "scalar": torch.tensor(3.0)}
    assert slice_batch_for_cp(batch, 2, 0)["position_ids"].tolist() == [[0, 1, 6, 7]]
    assert slice_batch_for_cp(batch, 2, 1)["position_ids"].tolist() == [[2, 3, 4, 5]]
    assert slice_batch_for_cp(batch, 2, 1)["scalar"].item() == 3.0
    assert slice_batch_for_cp(batch, 1, 0)["position_ids"] is batch["position_ids"]
    with pytest.raises(ValueError, match="--seq-length.*--context-parallel-size|--context-parallel-size"):
        slice_batch_for_cp({"tokens": torch.zeros(1, 10)}, 3, 0)
