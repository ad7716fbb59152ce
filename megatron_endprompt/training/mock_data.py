"""Synthetic, learnable EndPrompt samples for smoke tests and benchmarks (`--data.mock true`).

Each sample is a random walk on a fixed sparse transition graph over the vocabulary (every token has two possible
successors), so a model can learn it quickly (ideal loss ln 2 ~ 0.69 nats vs ln V at initialisation). When the
model can serve longer positions, the last `CUE_LENGTH` tokens are a fixed cue placed at the end of the target
window [T - b, T - 1] with T = min(4 P, max_position_embeddings), exactly as the EndPrompt builder lays them out.
Samples are a pure function of (seed, index): no files, same interface as `data.load_samples`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from megatron_endprompt import positions

CUE_LENGTH = 4
SUCCESSORS = 2


class MockSamples(Sequence):
    """`ds[i]` -> dict of numpy arrays of length P: tokens, labels, loss_weights, position_ids."""

    def __init__(
        self,
        num_samples: int,
        seq_length: int,
        vocab_size: int,
        max_position_embeddings: int,
        cue_loss_weight: float = 0.1,
        seed: int = 1234,
    ) -> None:
        if vocab_size < CUE_LENGTH + 2:
            raise ValueError(f"mock data needs model.vocab_size >= {CUE_LENGTH + 2}, got {vocab_size}")
        self.num_samples, self.seq_length, self.vocab_size = num_samples, seq_length, vocab_size
        self.seed, self.cue_loss_weight = seed, cue_loss_weight
        self.target_length = min(4 * seq_length, max_position_embeddings)
        use_cue = self.target_length > seq_length and seq_length > 2 * CUE_LENGTH
        self.segments = (
            positions.endprompt(seq_length, self.target_length, CUE_LENGTH)
            if use_cue
            else positions.contiguous(seq_length)
        )
        graph_rng = np.random.default_rng([seed, 0x6D6F636B])
        # Token 0 is kept as EOD; cue tokens are the CUE_LENGTH ids after it.
        self.successors = graph_rng.integers(CUE_LENGTH + 1, vocab_size, size=(vocab_size, SUCCESSORS))
        self.cue = np.arange(1, CUE_LENGTH + 1, dtype=np.int64)
        self._weights = positions.loss_weights(self.segments, cue_loss_weight)
        self._positions = positions.position_ids(self.segments)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:  # type: ignore[override]
        i = int(i)
        if not 0 <= i < self.num_samples:
            raise IndexError(f"mock sample {i} out of range [0, {self.num_samples})")
        rng = np.random.default_rng([self.seed, i])
        text_length = self.segments[0].length
        choices = rng.integers(0, SUCCESSORS, size=text_length)
        tokens = np.empty(self.seq_length, dtype=np.int64)
        tokens[0] = rng.integers(CUE_LENGTH + 1, self.vocab_size)
        for j in range(1, text_length):
            tokens[j] = self.successors[tokens[j - 1], choices[j]]
        if len(self.segments) > 1:
            tokens[text_length:] = self.cue
        labels = np.empty_like(tokens)
        labels[:-1] = tokens[1:]
        labels[-1] = 0
        return {
            "tokens": tokens,
            "labels": labels,
            "loss_weights": self._weights.copy(),
            "position_ids": self._positions.copy(),
        }
