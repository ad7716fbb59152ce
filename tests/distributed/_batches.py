"""The EndPrompt+PoSE micro-batches shared by the layout worker and the HF reference (no megatron import)."""

from __future__ import annotations

import numpy as np
import torch

from megatron_endprompt import positions

SEQ, TARGET, CUE, SAMPLES, VOCAB, CUE_WEIGHT = 32, 65536, 4, 4, 512, 0.1


def make_batches() -> list[dict[str, torch.Tensor]]:
    """SAMPLES micro-batches of one sample: two PoSE text chunks with per-sample jumps, cue at T-4..T-1."""
    rng = np.random.default_rng(7)
    out = []
    for _ in range(SAMPLES):
        segs = positions.endprompt_pose(SEQ, TARGET, CUE, 2, rng)
        tokens = torch.from_numpy(rng.integers(0, VOCAB, SEQ + 1)).long()
        out.append(
            {
                "tokens": tokens[None, :-1],
                "labels": tokens[None, 1:],
                "loss_weights": torch.from_numpy(positions.loss_weights(segs, CUE_WEIGHT))[None],
                "position_ids": torch.from_numpy(positions.position_ids(segs))[None],
            }
        )
    return out


def weighted_loss_from_logits(logits: list[torch.Tensor], batches: list[dict[str, torch.Tensor]]) -> float:
    """sum(w * ce) / sum(w) over all micro-batches, from full-vocabulary logits [1, s, V] (float64 sums)."""
    num = den = 0.0
    for lg, mb in zip(logits, batches, strict=True):
        ce = torch.nn.functional.cross_entropy(lg[0].double(), mb["labels"][0], reduction="none")
        w = mb["loss_weights"][0].double()
        num += float((ce * w).sum())
        den += float(w.sum())
    return num / den
