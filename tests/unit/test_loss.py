"""Weighted loss and text/cue statistics against torch's cross entropy on explicit token subsets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from megatron_endprompt.training.loss import LossStats, loss_sums, token_roles, weighted_loss

CUE_W = 0.1


def _batch(seed: int = 0, b: int = 3, s: int = 17, v: int = 11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, s, v, generator=g)
    labels = torch.randint(0, v, (b, s), generator=g)
    weights = torch.ones(b, s)
    weights[:, -4:] = CUE_W  # a terminal cue
    weights[0, :2] = 0.0  # positions without a target
    return logits, labels, weights


def _ce(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)


def test_loss_and_breakdown_match_torch_on_token_subsets():
    logits, labels, w = _batch()
    stats = LossStats.from_sums(loss_sums(_ce(logits, labels), w))
    flat_l, flat_y, flat_w = logits.flatten(0, 1), labels.flatten(), w.flatten()
    text, cue = flat_w == 1, (flat_w > 0) & (flat_w < 1)
    text_sum = F.cross_entropy(flat_l[text], flat_y[text], reduction="sum")
    cue_sum = F.cross_entropy(flat_l[cue], flat_y[cue], reduction="sum")
    expected = (text_sum + CUE_W * cue_sum) / (text.sum() + CUE_W * cue.sum())
    assert stats.loss == pytest.approx(expected.item(), rel=1e-6)
    assert stats.text_loss == pytest.approx(F.cross_entropy(flat_l[text], flat_y[text]).item(), rel=1e-6)
    assert stats.cue_loss == pytest.approx(F.cross_entropy(flat_l[cue], flat_y[cue]).item(), rel=1e-6)
    assert stats.num_tokens == int(text.sum() + cue.sum())
    assert stats.weight_sum == pytest.approx(float(flat_w.sum()))


def test_weighted_loss_gradient_is_the_global_mean_over_split_batches():
    logits, labels, w = _batch(seed=1, b=4)
    full = logits.clone().requires_grad_(True)
    F.cross_entropy(full.flatten(0, 1), labels.flatten(), reduction="none").mul(w.flatten()).sum().div(
        w.sum()
    ).backward()
    # Two "ranks" each see half the batch but divide by the global weight: grads and values add up.
    split = logits.clone().requires_grad_(True)
    total = w.sum().item()
    parts = [weighted_loss(_ce(split[i : i + 2], labels[i : i + 2]), w[i : i + 2], total) for i in (0, 2)]
    sum(parts).backward()
    torch.testing.assert_close(split.grad, full.grad)
    sums = loss_sums(_ce(logits[:2], labels[:2]), w[:2]) + loss_sums(_ce(logits[2:], labels[2:]), w[2:])
    assert LossStats.from_sums(sums).loss == pytest.approx(sum(p.item() for p in parts), rel=1e-6)


def test_explicit_cue_mask_wins_over_weights():
    w = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    cue_mask = torch.tensor([[False, False, True, True]])
    text, cue = token_roles(w, cue_mask)
    assert text.tolist() == [[True, True, False, False]]
    assert cue.tolist() == [[False, False, True, False]]  # weight 0: no loss, no role


def test_no_cue_tokens_gives_nan_cue_loss_and_all_zero_weights_refuse():
    ce = torch.rand(2, 5)
    stats = LossStats.from_sums(loss_sums(ce, torch.ones(2, 5)))
    assert math.isnan(stats.cue_loss)
    assert stats.text_loss == pytest.approx(ce.mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="loss_weights"):
        weighted_loss(ce, torch.zeros(2, 5), 0.0)
