"""Train / validation datasets for the loop, from `--data.*`.

Real data: `data.blended.build_train_valid_test` (megatron-core's blended/split builder over our built prefixes,
shuffled by `--data.seed` and repeated to exactly the samples the run needs). Mock data (`--data.mock`): every
index is an independent synthetic sample, so a contiguous split and a wrap-around are enough.
Either way, index k of the returned training set is the k-th sample of the run's stream.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from megatron_endprompt.model.config import ModelConfig
from megatron_endprompt.training.config import TrainConfig

logger = logging.getLogger(__name__)


class Window(Sequence):
    """`size` samples taken from base[start:stop), wrapping around (mock data's epochs)."""

    def __init__(self, base: Sequence, start: int, stop: int, size: int) -> None:
        if stop <= start:
            raise ValueError("--data.split leaves this split empty")
        self.base, self.start, self.span, self.size = base, start, stop - start, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):  # type: ignore[override]
        if not 0 <= i < self.size:
            raise IndexError(i)
        return self.base[self.start + i % self.span]


def split_bounds(n: int, split: str) -> list[tuple[int, int]]:
    """[start, stop) of train / valid / test for `n` samples and a '98,2,0' split string."""
    shares = [float(x) for x in split.replace("/", ",").split(",")]
    shares += [0.0] * (3 - len(shares))
    total = sum(shares)
    cuts, acc = [0], 0.0
    for share in shares:
        acc += share / total * n
        cuts.append(int(round(acc)))
    cuts[-1] = n
    return [(cuts[i], cuts[i + 1]) for i in range(3)]


def _needed(cfg: TrainConfig) -> tuple[int, int | None]:
    """Samples the run reads from the train and valid splits."""
    gbs = cfg.data.global_batch_size
    valid = cfg.logging.eval_steps * gbs if cfg.logging.eval_interval else None
    return cfg.train_steps * gbs, valid


def _mock_splits(cfg: TrainConfig, model: ModelConfig) -> tuple[Sequence, Sequence | None]:
    from megatron_endprompt.training.mock_data import MockSamples

    d = cfg.data
    base = MockSamples(
        d.mock_num_samples,
        d.seq_length,
        model.vocab_size,
        model.max_position_embeddings,
        d.cue_loss_weight,
        d.seed,
    )
    (t0, t1), (v0, v1), _ = split_bounds(len(base), d.split)
    n_train, n_valid = _needed(cfg)
    valid = Window(base, v0, v1, n_valid) if n_valid and v1 > v0 else None
    return Window(base, t0, t1, n_train), valid


def check_prefixes(cfg: TrainConfig, model: ModelConfig) -> None:
    """Every prefix exists and fits the model (P, target length T, vocabulary) before any heavy work."""
    from megatron_endprompt.data.dataset import load_samples

    for prefix in cfg.data.paths:
        try:
            samples = load_samples(prefix, cue_loss_weight=cfg.data.cue_loss_weight)
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"--data.paths {prefix}: {exc}") from None
        if samples.seq_length != cfg.data.seq_length:
            raise ValueError(
                f"--data.seq_length is {cfg.data.seq_length} but {prefix} holds samples of P={samples.seq_length}"
            )
        if samples.target_length > model.max_position_embeddings:
            raise ValueError(
                f"--model.max_position_embeddings ({model.max_position_embeddings}) is below the target length "
                f"T={samples.target_length} of {prefix}; raise it (and set --model.rope_scaling)"
            )
        vocab = samples.meta.get("tokenizer", {}).get("vocab_size")
        if vocab is not None and vocab > model.vocab_size:
            raise ValueError(
                f"{prefix}: tokenizer vocab {vocab} exceeds --model.vocab_size ({model.vocab_size})"
            )


def build_splits(cfg: TrainConfig, model: ModelConfig) -> tuple[Sequence, Sequence | None]:
    """(train, valid): train has exactly train_steps * global_batch_size samples; valid None when unused."""
    if cfg.data.mock:
        train, valid = _mock_splits(cfg, model)
    else:
        from megatron_endprompt.data.blended import build_train_valid_test

        check_prefixes(cfg, model)
        d = cfg.data
        blend = list(zip(d.paths, d.weights, strict=True)) if d.weights is not None else list(d.paths)
        n_train, n_valid = _needed(cfg)
        train, valid, _ = build_train_valid_test(
            blend,
            split=d.split,
            seed=d.seed,
            cue_loss_weight=d.cue_loss_weight,
            num_samples=[n_train, n_valid or 0, 0],
            seq_length=d.seq_length,
        )
        if train is None:
            raise ValueError(f"--data.split {d.split!r} leaves no training samples")
    logger.info("data: %d training samples, %d validation samples", len(train), len(valid) if valid else 0)
    return train, valid
