"""Which samples each step uses, and the micro-batches of one data-parallel rank.

The order is a pure function of (seed, position in the stream): position k of the training stream is sample
`perm_e[k mod n]` of epoch e = k // n, with `perm_e` a seeded permutation of the n training samples. Step s uses
stream positions [s * G, (s + 1) * G) (G = global batch size); micro-batch m of data-parallel rank r takes the
G-slice [m * M * D + r * M, m * M * D + (r + 1) * M) (M = micro-batch size, D = data-parallel size), as in
Megatron-LM's pretraining sampler. Resuming after `consumed_samples` therefore continues exactly where the
interrupted run stopped, with no sample skipped or repeated, for any worker count.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache

import numpy as np


class SampleOrder:
    """Seeded epoch-wise permutation of `num_samples` samples (epochs reshuffle independently)."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True) -> None:
        if num_samples < 1:
            raise ValueError("--data.paths: the training split has no samples")
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle

    @lru_cache(maxsize=4)  # noqa: B019 - a few epochs' permutations, owned by a long-lived object
    def _perm(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_samples, dtype=np.int64)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples).astype(np.int64)

    def at(self, positions: np.ndarray) -> np.ndarray:
        """Sample index at each stream position."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty_like(positions)
        epochs = positions // self.num_samples
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self._perm(int(epoch))[positions[sel] % self.num_samples]
        return out


def step_indices(order: SampleOrder, step: int, global_batch_size: int) -> np.ndarray:
    """Sample indices of the whole global batch of 0-based step `step`, in stream order."""
    start = step * global_batch_size
    return order.at(np.arange(start, start + global_batch_size))


def rank_micro_batches(
    global_indices: np.ndarray, micro_batch_size: int, dp_rank: int, dp_size: int
) -> list[np.ndarray]:
    """Split one step's global indices into this data-parallel rank's micro-batches."""
    per_micro = micro_batch_size * dp_size
    return [
        global_indices[
            m * per_micro + dp_rank * micro_batch_size : m * per_micro + (dp_rank + 1) * micro_batch_size
        ]
        for m in range(len(global_indices) // per_micro)
    ]


def collate(samples: list[dict[str, np.ndarray]]):
    """Stack samples into a micro-batch of torch tensors [micro_batch_size, P]."""
    import torch

    return {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in samples[0]}


class _MicroBatchDataset:
    """Map-style view for DataLoader: item = one micro-batch (a list of sample indices) -> collated tensors."""

    def __init__(self, samples: Sequence) -> None:
        self.samples = samples

    def __getitem__(self, indices) -> dict:
        return collate([self.samples[int(i)] for i in indices])

    def __len__(self) -> int:  # not used by the loader (it only asks for items)
        return len(self.samples)


def micro_batch_loader(
    samples: Sequence,
    index_lists: Iterator[np.ndarray],
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

    def __init__(self, index_lists: Iterator[np.ndarray]) -> None:
        self.index_lists = index_lists

    def __iter__(self):
        return (tuple(int(i) for i in lst) for lst in self.index_lists)
