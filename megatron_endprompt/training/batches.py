"""Micro-batches of one data-parallel rank, prefetched by DataLoader workers.

Which samples a step reads is decided by `data.blended.batch_indices` (a pure function of consumed_samples over a
dataset that is already shuffled and repeated to the run's length), so a resumed run continues the exact stream
whatever the worker count. Here the index lists are turned into collated torch tensors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

BATCH_KEYS = ("tokens", "labels", "loss_weights", "position_ids")


def collate(samples: list[dict[str, np.ndarray]]):
    """Stack samples into a micro-batch of torch tensors [micro_batch_size, P] (extra keys such as a blend's
    `dataset_id` are dropped)."""
    import torch

    return {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in BATCH_KEYS}


class _MicroBatchDataset:
    """Map-style view for DataLoader: item = one micro-batch (a list of sample indices) -> collated tensors."""

    def __init__(self, samples: Sequence) -> None:
        self.samples = samples

    def __getitem__(self, indices) -> dict:
        return collate([self.samples[int(i)] for i in indices])

    def __len__(self) -> int:  # not used by the loader (it only asks for items)
        return len(self.samples)


def index_stream(
    consumed_samples: int,
    steps: int,
    global_batch_size: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
) -> Iterator[list[int]]:
    """This rank's micro-batch index lists for `steps` steps starting at stream position `consumed_samples`."""
    from megatron_endprompt.data.blended import batch_indices

    for s in range(steps):
        start = consumed_samples + s * global_batch_size
        yield from batch_indices(start, global_batch_size, micro_batch_size, dp_rank, dp_size)


def micro_batch_loader(
    samples: Sequence,
    index_lists: Iterator[list[int]],
    num_workers: int,
    pin_memory: bool = False,
) -> Iterator[dict]:
    """Collated micro-batches for a stream of index lists, prefetched by `num_workers` worker processes."""
    import torch

    dataset = _MicroBatchDataset(samples)
    loader = torch.utils.data.DataLoader(
        dataset,
        sampler=_ListSampler(index_lists),
        batch_size=1,
        collate_fn=_first,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
    return iter(loader)


def _first(items: list) -> dict:
    """The loader's batch_size is 1 and each item is already a collated micro-batch."""
    return items[0]


class _ListSampler:
    """Yields pre-computed index lists (one per micro-batch) as DataLoader 'indices'."""

    def __init__(self, index_lists: Iterator[list[int]]) -> None:
        self.index_lists = index_lists

    def __iter__(self):
        return (tuple(int(i) for i in lst) for lst in self.index_lists)
