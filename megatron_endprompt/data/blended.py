"""Training-side datasets: blends of built prefixes with train/valid/test splits via megatron-core, shuffled by
seed, plus a resumable, DP-aware order of sample indices.

`build_train_valid_test` runs megatron-core's `BlendedMegatronDatasetBuilder` with our mid-level dataset
(`EndPromptMegatronDataset`); when several prefixes are blended, megatron's `BlendedDataset` needs an initialised
torch.distributed process group (a single-process gloo group is enough). Every dataset returned gives the same
dict as `load_samples` (a blend adds "dataset_id").

`batch_indices` / `ResumableBatches` define which samples each data-parallel rank reads at each step, as a pure
function of consumed_samples, so resuming from a checkpoint continues the exact sequence.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.blended_megatron_dataset_config import BlendedMegatronDatasetConfig
from megatron.core.datasets.megatron_dataset import MegatronDataset

from megatron_endprompt.data.dataset import EndPromptSamples


@dataclass(kw_only=True)
class EndPromptDatasetConfig(BlendedMegatronDatasetConfig):
    """megatron-core dataset config plus the EndPrompt loss weight of cue targets."""

    cue_loss_weight: float = 0.1
    """Loss weight where the label is a cue token (paper eq. 11; training option, not stored in the data)."""


class EndPromptMegatronDataset(MegatronDataset):
    """One split of one built prefix, shuffled by seed; repeated over epochs when num_samples asks for more."""

    def __init__(self, dataset, dataset_path, indices, num_samples, index_split, config) -> None:
        super().__init__(dataset, dataset_path, indices, num_samples, index_split, config)
        self._order = self._shuffled_order()

    @staticmethod
    def numel_low_level_dataset(low_level_dataset: EndPromptSamples) -> int:
        return len(low_level_dataset)

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: EndPromptDatasetConfig) -> EndPromptSamples:
        return EndPromptSamples(dataset_path, config.cue_loss_weight)

    @staticmethod
    def _key_config_attributes() -> list[str]:
        return ["random_seed", "sequence_length", "split", "split_matrix", "cue_loss_weight"]

    def _shuffled_order(self) -> np.ndarray:
        """Positions into self.indices: one shuffle per epoch, repeated when num_samples asks for more.

        With the builder's source record (meta.json `source`, `<prefix>.origin.npy`) the shuffle is keyed by
        (seed, split, source corpus, epoch) and each sample by the (document, token offset) it starts at: datasets
        built from the same documents, whatever their scheme, read the samples that start at the same place in
        the same relative order (`shared_order_keys`). Older prefixes keep their order, seeded by the prefix's
        file name and size (not its directory: moved or copied data is read in the same order).
        """
        n = len(self.indices)
        total = n if self.num_samples is None else self.num_samples
        if n == 0:
            if total:
                raise ValueError(
                    f"{self.dataset_path}: the {self.index_split.name} split is empty; adjust split"
                )
            return np.zeros(0, dtype=np.int64)
        origins = self.dataset.origins
        source = self.dataset.meta.get("source")
        epochs = max(1, math.ceil(total / n))
        perms = []
        for epoch in range(epochs):
            if origins is not None and source is not None:
                key = [self.config.random_seed, self.index_split.value, int(source["fingerprint"], 16), epoch]
                perms.append(np.argsort(shared_order_keys(origins[self.indices], key), kind="stable"))
            else:
                prefix_key = zlib.crc32(f"{Path(self.dataset_path).name}:{len(self.dataset)}".encode())
                rng = np.random.default_rng(
                    [self.config.random_seed, self.index_split.value, prefix_key, epoch]
                )
                perms.append(rng.permutation(n))
        return np.concatenate(perms)[:total]

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        return self.dataset[int(self.indices[self._order[idx]])]


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scatters neighbouring inputs."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shared_order_keys(origins: np.ndarray, key: Sequence[int]) -> np.ndarray:
    """A pseudo-random uint64 sort key per sample from its (document, offset) origin and `key` (seed, split,
    source fingerprint, epoch). A sample's key does not depend on the other samples of its dataset, so two
    datasets of the same documents sort their common origins identically; ties (none in practice) keep order."""
    base = np.uint64(np.random.default_rng([int(k) % 2**63 for k in key]).integers(0, 2**63))
    with np.errstate(over="ignore"):
        mixed = _mix64(origins[:, 0].astype(np.uint64) ^ base)
        return _mix64(mixed ^ (origins[:, 1].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))


def build_train_valid_test(
    prefixes_with_weights: Sequence[str] | Sequence[tuple[str, float]],
    split: str = "98,1,1",
    seed: int = 1234,
    cue_loss_weight: float = 0.1,
    num_samples: Sequence[int | None] | None = None,
    seq_length: int | None = None,
) -> list:
    """[train, valid, test] datasets (None for an empty split) from built prefixes.

    prefixes_with_weights: ["a", "b"] (weights by size) or [("a", 0.7), ("b", 0.3)] (needs num_samples).
    With num_samples, split i holds at least num_samples[i] samples (epochs repeat when needed; a weighted blend
    may round up by a few, as megatron sizes each source with ceil(n * weight)).
    num_samples: samples per split (train, valid, test); None = one pass over each split.
    """
    prefixes, weights = _parse_blend(prefixes_with_weights)
    sized = num_samples is not None and all(n is not None for n in num_samples)
    if weights is not None and not sized:
        raise ValueError("data weights need num_samples (train, valid, test), all given, to size the blend")
    metas = [EndPromptSamples(p) for p in prefixes]
    if weights is None and len(prefixes) > 1 and sized:
        # megatron caps an unweighted blend at one epoch; weights proportional to size honour num_samples instead.
        weights = [float(len(m)) for m in metas]
    lengths = {m.seq_length for m in metas}
    if len(lengths) != 1 or (seq_length is not None and lengths != {seq_length}):
        raise ValueError(
            f"all prefixes must have the same --seq-length (found {sorted(lengths)}, need {seq_length})"
        )
    config = EndPromptDatasetConfig(
        random_seed=seed,
        sequence_length=lengths.pop(),
        blend=(prefixes, weights),
        split=split,
        cue_loss_weight=cue_loss_weight,
    )
    sizes = list(num_samples) if num_samples is not None else [None, None, None]
    builder = BlendedMegatronDatasetBuilder(EndPromptMegatronDataset, sizes, lambda: True, config)
    return builder.build()


def _parse_blend(items) -> tuple[list[str], list[float] | None]:
    if all(isinstance(x, str) for x in items):
        return list(items), None
    prefixes = [str(p) for p, _ in items]
    weights = [float(w) for _, w in items]
    if any(w <= 0 for w in weights):
        raise ValueError(f"data weights must be > 0, got {weights}")
    return prefixes, weights


# ----------------------------------------------------------------------------------------------------------------
# resumable, data-parallel sample order


def batch_indices(
    consumed_samples: int, global_batch_size: int, micro_batch_size: int, dp_rank: int, dp_size: int
) -> list[list[int]]:
    """Dataset indices of the micro-batches this DP rank reads in the global batch starting at consumed_samples.

    The global batch covers indices [consumed, consumed + global_batch_size); micro-step m gives rank r the
    indices consumed + m * micro_batch_size * dp_size + r * micro_batch_size + [0, micro_batch_size) (Megatron's
    pretraining sampler layout). Returns global_batch_size / (micro_batch_size * dp_size) lists.
    """
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank {dp_rank} must be in [0, {dp_size})")
    per_step = micro_batch_size * dp_size
    if micro_batch_size < 1 or global_batch_size % per_step:
        raise ValueError(
            f"global_batch_size ({global_batch_size}) must be a multiple of micro_batch_size ({micro_batch_size}) "
            f"x data-parallel size ({dp_size})"
        )
    if consumed_samples < 0:
        raise ValueError(f"consumed_samples must be >= 0, got {consumed_samples}")
    out = []
    for m in range(global_batch_size // per_step):
        start = consumed_samples + m * per_step + dp_rank * micro_batch_size
        out.append(list(range(start, start + micro_batch_size)))
    return out


def collate(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack samples into [micro_batch, P] arrays (tokens, labels, loss_weights, position_ids)."""
    keys = ("tokens", "labels", "loss_weights", "position_ids")
    return {k: np.stack([s[k] for s in samples]) for k in keys}


class ResumableBatches:
    """Iterates global batches for one DP rank: each step yields the rank's list of collated micro-batches.

    Stops before a global batch that would read past len(dataset). `consumed_samples` after each step is what a
    checkpoint stores; a new instance built with it continues the identical sequence.
    """

    def __init__(
        self,
        dataset,
        global_batch_size: int,
        micro_batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        consumed_samples: int = 0,
    ) -> None:
        batch_indices(consumed_samples, global_batch_size, micro_batch_size, dp_rank, dp_size)  # validates
        self.dataset = dataset
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.consumed_samples = consumed_samples

    def __iter__(self) -> Iterator[list[dict[str, np.ndarray]]]:
        while self.consumed_samples + self.global_batch_size <= len(self.dataset):
            steps = batch_indices(
                self.consumed_samples,
                self.global_batch_size,
                self.micro_batch_size,
                self.dp_rank,
                self.dp_size,
            )
            micro = [collate([self.dataset[i] for i in idx]) for idx in steps]
            self.consumed_samples += self.global_batch_size
            yield micro
