"""Weighted language-model loss and its text / cue breakdown.

The model returns the per-token cross entropy (megatron's vocab-parallel CE, computed in fp32, TP-aware). This
module turns it into the training objective and the logged statistics:

- objective: sum(w * ce) / W, where W is the sum of loss weights over the WHOLE global batch (every micro-batch,
  data-parallel and context-parallel rank). Each rank contributes its local numerator divided by the global W, so
  summing gradients over ranks (no averaging) gives the exact global mean, whatever the split.
- text / cue loss: plain (unweighted) mean CE over text tokens and over cue tokens. A token's role is taken from
  an explicit boolean `cue_mask` when the batch has one; otherwise from its weight: weight == 1 is text,
  0 < weight < 1 is cue (the data applies `cue_loss_weight` < 1 to cue tokens). With cue_loss_weight == 1 and no
  cue_mask, cue tokens are indistinguishable from text and are counted as text.

Statistics travel as one float64 vector of sums (`loss_sums`) so that they add across micro-batches and ranks
with a single all-reduce; `LossStats.from_sums` divides at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SUM_FIELDS: tuple[str, ...] = (
    "weighted_ce",
    "weight",
    "text_ce",
    "text_tokens",
    "cue_ce",
    "cue_tokens",
    "tokens",
)
"""Order of the entries of the `loss_sums` vector."""


def token_roles(
    loss_weights: torch.Tensor, cue_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (text, cue) masks of the tokens that carry a loss (weight > 0)."""
    has_loss = loss_weights > 0
    if cue_mask is None:
        cue = has_loss & (loss_weights < 1)
    else:
        cue = has_loss & cue_mask.bool()
    return has_loss & ~cue, cue


def loss_sums(
    per_token_ce: torch.Tensor, loss_weights: torch.Tensor, cue_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """float64 vector of the sums named in SUM_FIELDS for one (micro-)batch; no gradient.

    Masks multiply instead of indexing, so that nothing waits for the device (no data-dependent shapes).
    """
    ce = per_token_ce.detach().double()
    w = loss_weights.detach().double()
    text, cue = (m.double() for m in token_roles(loss_weights, cue_mask))
    return torch.stack(
        [
            (ce * w).sum(),
            w.sum(),
            (ce * text).sum(),
            text.sum(),
            (ce * cue).sum(),
            cue.sum(),
            (w > 0).double().sum(),
        ]
    )


def weighted_loss(
    per_token_ce: torch.Tensor, loss_weights: torch.Tensor, weight_total: float
) -> torch.Tensor:
    """This rank's share of the global objective: sum(w * ce) / weight_total (differentiable, fp32)."""
    if not weight_total > 0:
        raise ValueError("the global batch has no token with a positive loss weight (all loss_weights are 0)")
    return (per_token_ce.float() * loss_weights.float()).sum() / weight_total


@dataclass(frozen=True)
class LossStats:
    """Global loss statistics of a step (or an evaluation)."""

    loss: float
    """sum(w * ce) / sum(w): the optimised objective."""
    text_loss: float
    """Mean CE over text tokens (nan when there are none)."""
    cue_loss: float
    """Mean CE over cue tokens (nan when there are none)."""
    num_tokens: int
    """Tokens with a positive loss weight."""
    weight_sum: float
    """sum(w), the objective's denominator."""

    @classmethod
    def from_sums(cls, sums: torch.Tensor) -> LossStats:
        """Divide a (reduced) `loss_sums` vector into means."""
        s = dict(zip(SUM_FIELDS, sums.double().tolist(), strict=True))
        return cls(
            loss=_ratio(s["weighted_ce"], s["weight"]),
            text_loss=_ratio(s["text_ce"], s["text_tokens"]),
            cue_loss=_ratio(s["cue_ce"], s["cue_tokens"]),
            num_tokens=int(round(s["tokens"])),
            weight_sum=s["weight"],
        )


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan
