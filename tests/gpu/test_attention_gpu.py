"""On CUDA: SDPA core attention under each SDPA backend matches a float32 reference, and long sequences
never allocate an s x s score matrix."""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

from megatron.core.transformer.enums import AttnMaskType  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from megatron_endprompt.model.attention import SDPAttention  # noqa: E402
from megatron_endprompt.model.config import get_preset  # noqa: E402
from megatron_endprompt.model.gpt import to_transformer_config  # noqa: E402


def _reference(q, k, v):
    """float32 causal attention with explicit softmax; q [s, b, h, d], k/v [s, b, g, d]."""
    q, k, v = (t.float() for t in (q, k, v))
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("sbhd,tbhd->bhst", q, k) / math.sqrt(q.shape[-1])
    s = q.shape[0]
    scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.einsum("bhst,tbhd->sbhd", scores.softmax(-1), v).reshape(s, q.shape[1], -1)


def _attention(d: int = 64) -> SDPAttention:
    cfg = get_preset("tiny").replace(hidden_size=4 * d)
    return SDPAttention(to_transformer_config(cfg, tp=1, pp=1, cp=1), 1, AttnMaskType.causal).eval()


@pytest.mark.parametrize(
    "backend,groups",
    [(SDPBackend.FLASH_ATTENTION, 2), (SDPBackend.CUDNN_ATTENTION, 2), (SDPBackend.EFFICIENT_ATTENTION, 4),
     (SDPBackend.MATH, 2)],
    ids=["flash-gqa", "cudnn-gqa", "efficient-mha", "math-gqa"],
)  # fmt: skip
def test_backends_match_fp32_reference(backend, groups):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(256, 2, n, 64, device="cuda", generator=g, dtype=torch.bfloat16)
        for n in (4, groups, groups)
    )
    with sdpa_kernel([backend]):
        out = _attention()(q, k, v, None)
    assert out.shape == (256, 2, 4 * 64) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), _reference(q, k, v), rtol=0, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_long_sequence_memory_is_linear(dtype):
    s, h, d = 32768, 4, 64
    q, k, v = (torch.randn(s, 1, n, d, device="cuda", dtype=dtype) for n in (h, 2, 2))
    attn = _attention(d)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = attn(q, k, v, None)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert torch.isfinite(out.float()).all()
    assert extra < (s * s * 2) // 16, f"attention used {extra / 2**20:.0f} MiB extra: an s x s buffer?"
