"""Train / validation sample sequences from `--data.*`: open prefixes, split, blend, or mock data.

Split: every prefix's samples are cut into contiguous train / valid / test ranges by the `--data.split`
percentages (so the validation samples never appear in training). Blend: with `--data.weights`, position k of the
blended training set comes from the dataset whose share is most behind its weight after k samples (Megatron's
greedy blending rule), cycling through that dataset's own samples; without weights the datasets are concatenated.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from megatron_endprompt.model.config import ModelConfig
from megatron_endprompt.training.config import TrainConfig

logger = logging.getLogger(__name__)


class Subset(Sequence):
    """Samples [start, stop) of another sequence."""

    def __init__(self, base: Sequence, start: int, stop: int) -> None:
        self.base, self.start, self.stop = base, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.base[self.start + i]


class Concat(Sequence):
    """Datasets one after another."""

    def __init__(self, parts: list[Sequence]) -> None:
        self.parts = [p for p in parts if len(p)]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int):  # type: ignore[override]
        part = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[part][i - int(self.offsets[part])]


class Blend(Sequence):
    """`size` samples drawn from `parts` in proportion to `weights` (deterministic greedy interleave)."""

    def __init__(self, parts: list[Sequence], weights: list[float], size: int) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if w.sum() <= 0:
            raise ValueError("--data.weights must not all be 0")
        w = w / w.sum()
        self.parts = parts
        self.which = np.empty(size, dtype=np.int64)
        self.within = np.empty(size, dtype=np.int64)
        counts = np.zeros(len(parts), dtype=np.int64)
        for k in range(size):
            d = int(np.argmax(w * (k + 1) - counts))
            self.which[k], self.within[k] = d, counts[d] % len(parts[d])
            counts[d] += 1

    def __len__(self) -> int:
        return len(self.which)

    def __getitem__(self, i: int):  # type: ignore[override]
        return self.parts[int(self.which[i])][int(self.within[i])]


def split_bounds(n: int, split: str) -> list[tuple[int, int]]:
    """[start, stop) of train / valid / test for `n` samples and a '98,2,0' split string."""
    shares = [float(x) for x in split.replace("/", ",").split(",")]
    shares += [0.0] * (3 - len(shares))
    total = sum(shares)
    cuts = [0]
    for share in shares:
        cuts.append(cuts[-1] + share / total * n)
    cuts = [int(round(c)) for c in cuts]
    cuts[-1] = n
    return [(cuts[i], cuts[i + 1]) for i in range(3)]


def open_prefixes(cfg: TrainConfig, model: ModelConfig) -> list[Sequence]:
    """Every `--data.paths` prefix (or one mock dataset), checked against the model and seq_length."""
    d = cfg.data
    if d.mock:
        from megatron_endprompt.training.mock_data import MockSamples

        return [
            MockSamples(
                d.mock_num_samples,
                d.seq_length,
                model.vocab_size,
                model.max_position_embeddings,
                d.cue_loss_weight,
                d.seed,
            )
        ]
    from megatron_endprompt.data import dataset as data_io

    out = []
    for prefix in d.paths:
        try:
            samples = data_io.load_samples(prefix, cue_loss_weight=d.cue_loss_weight)
        except FileNotFoundError as exc:
            raise ValueError(f"--data.paths {prefix}: {exc}") from None
        _check_compatible(prefix, samples, cfg, model)
        out.append(samples)
    return out


def _check_compatible(prefix: str, samples, cfg: TrainConfig, model: ModelConfig) -> None:
    p = getattr(samples, "seq_length", cfg.data.seq_length)
    if p != cfg.data.seq_length:
        raise ValueError(f"--data.seq_length is {cfg.data.seq_length} but {prefix} holds samples of P={p}")
    t = getattr(samples, "target_length", None)
    if t is not None and t > model.max_position_embeddings:
        raise ValueError(
            f"--model.max_position_embeddings ({model.max_position_embeddings}) is below the target length T={t} "
            f"of {prefix}; raise it (and set --model.rope_scaling)"
        )
    vocab = (getattr(samples, "meta", {}) or {}).get("tokenizer", {}).get("vocab_size")
    if vocab is not None and vocab > model.vocab_size:
        raise ValueError(f"{prefix}: tokenizer vocab {vocab} exceeds --model.vocab_size ({model.vocab_size})")


def build_splits(cfg: TrainConfig, model: ModelConfig) -> tuple[Sequence, Sequence | None]:
    """(train, valid) samples; valid is None when the split gives it no share."""
    parts = open_prefixes(cfg, model)
    bounds = [split_bounds(len(p), cfg.data.split) for p in parts]
    train_parts = [Subset(p, *b[0]) for p, b in zip(parts, bounds, strict=True)]
    valid_parts = [Subset(p, *b[1]) for p, b in zip(parts, bounds, strict=True)]
    if cfg.data.weights is not None and len(parts) > 1:
        needed = cfg.train_steps * cfg.data.global_batch_size
        empty = [cfg.data.paths[i] for i, p in enumerate(train_parts) if not len(p)]
        if empty:
            raise ValueError(f"--data.split leaves no training samples in {empty}")
        train: Sequence = Blend(train_parts, cfg.data.weights, needed)
    else:
        train = Concat(train_parts)
    valid = Concat(valid_parts)
    logger.info("data: %d training samples, %d validation samples", len(train), len(valid))
    return train, (valid if len(valid) else None)
