"""SDPA core attention against a naive softmax reference (causal, GQA, explicit masks)."""

from __future__ import annotations

import math

import pytest
import torch
from megatron.core.transformer.enums import AttnMaskType

from megatron_endprompt.model.attention import SDPAttention, _to_global_order, cp_chunk_order
from megatron_endprompt.model.config import get_preset
from megatron_endprompt.model.gpt import to_transformer_config


def naive_attention(q, k, v, causal=True, mask=None):
    """q [s, b, h, d], k/v [s, b, g, d] -> [s, b, h*d] with an explicit softmax (GQA by repeat)."""
    s, b, h, d = q.shape
    rep = h // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("sbhd,tbhd->bhst", q, k) / math.sqrt(d)
    if causal:
        scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    out = torch.einsum("bhst,tbhd->sbhd", scores.softmax(-1), v)
    return out.reshape(s, b, h * d)


@pytest.fixture(scope="module")
def config():
    # No parallel_state needed: explicit pg_collection=None and cp_size 1.
    return to_transformer_config(get_preset("tiny"), tp=1, pp=1, cp=1)


def _qkv(heads: int, groups: int, s: int = 24, b: int = 3, d: int = 16):
    g = torch.Generator().manual_seed(heads * 10 + groups)
    return (torch.randn(s, b, n, d, generator=g) for n in (heads, groups, groups))


@pytest.mark.parametrize("heads,groups", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_causal_matches_naive(config, heads, groups):
    attn = SDPAttention(config, layer_number=1, attn_mask_type=AttnMaskType.causal).eval()
    q, k, v = _qkv(heads, groups)
    out = attn(q, k, v, None)
    assert out.shape == (q.shape[0], q.shape[1], heads * q.shape[3])
    torch.testing.assert_close(out, naive_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_no_mask_and_explicit_mask(config):
    attn = SDPAttention(config, layer_number=1, attn_mask_type=AttnMaskType.no_mask).eval()
    q, k, v = _qkv(4, 2)
    torch.testing.assert_close(
        attn(q, k, v, None), naive_attention(q, k, v, causal=False), rtol=1e-5, atol=1e-5
    )
    s, b = q.shape[:2]
    # megatron convention: True = masked out; shape [b, 1, s, s]
    mask = torch.rand(b, 1, s, s, generator=torch.Generator().manual_seed(5)) > 0.7
    mask[..., 0] = False  # keep one visible key per row
    got = attn(q, k, v, mask, attn_mask_type=AttnMaskType.arbitrary)
    torch.testing.assert_close(got, naive_attention(q, k, v, causal=False, mask=mask), rtol=1e-5, atol=1e-5)


def test_gradients_match_naive(config):
    attn = SDPAttention(config, layer_number=1, attn_mask_type=AttnMaskType.causal)
    q, k, v = (t.requires_grad_() for t in _qkv(4, 2))
    attn(q, k, v, None).square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    naive_attention(q, k, v).square().sum().backward()
    for got, t in zip(grads, (q, k, v), strict=True):
        torch.testing.assert_close(got, t.grad, rtol=1e-4, atol=1e-5)


def test_cp_chunk_reordering():
    assert cp_chunk_order(2) == [0, 3, 1, 2]
    assert cp_chunk_order(3) == [0, 5, 1, 4, 2, 3]
    gathered = torch.tensor(cp_chunk_order(3)).repeat_interleave(2)  # each chunk 2 long, labelled by id
    assert _to_global_order(gathered, 3).tolist() == sorted(gathered.tolist())
