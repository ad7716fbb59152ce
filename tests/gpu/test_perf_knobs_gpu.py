"""On CUDA: the performance knobs agree with the default paths (fused RoPE via Triton and torch.compile, chunked
cross entropy in bf16, forced SDPA backends in the model). CPU exactness is in tests/unit/test_performance_knobs.py;
these cover the kernels that exist only on a GPU."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd  # noqa: E402

from megatron_endprompt.model import rope_fused  # noqa: E402
from megatron_endprompt.model.chunked_ce import chunked_cross_entropy  # noqa: E402
from megatron_endprompt.model.config import RopeScaling, get_preset  # noqa: E402
from megatron_endprompt.model.gpt import build_model, set_performance_options  # noqa: E402
from megatron_endprompt.model.rope import inv_freq_and_scaling, rope_freqs  # noqa: E402
from megatron_endprompt.parallel import initialize  # noqa: E402

DEV = torch.device("cuda")


@pytest.fixture(scope="module", autouse=True)
def _single_process():
    initialize(tp=1, pp=1, cp=1, seed=1234)


def _angles(s: int, b: int, head_dim: int):
    """YaRN angles for per-sample, non-contiguous positions up to 65535."""
    cfg = get_preset("llama3-8b").replace(
        max_position_embeddings=65536,
        rope_scaling=RopeScaling(type="yarn", factor=8.0, original_max_position_embeddings=8192),
    )
    inv_freq, mscale = inv_freq_and_scaling(cfg)
    g = torch.Generator().manual_seed(0)
    first = torch.cat([torch.arange(s - 16), torch.arange(65536 - 16, 65536)])
    pos = torch.stack([first] + [torch.randperm(65536, generator=g)[:s] for _ in range(b - 1)])
    return rope_freqs(pos.to(DEV), inv_freq.to(DEV)), mscale


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("heads", [32, 8, 5])
def test_triton_rope_matches_unfused(dtype, tol, heads):
    s, b, d = 1024, 2, 128
    freqs, mscale = _angles(s, b, d)
    g = torch.Generator(device=DEV).manual_seed(1)
    # A non-contiguous view like megatron's split of the fused QKV projection.
    base = torch.randn(s, b, heads, 3 * d, device=DEV, generator=g, dtype=torch.float32)
    t = base[..., :d].to(dtype).detach().requires_grad_(True)
    grad_out = torch.randn(s, b, heads, d, device=DEV, generator=g).to(dtype)
    # Reference: the unfused maths in float32 (bf16 inputs upcast), cast back.
    t32 = t.detach().float().requires_grad_(True)
    ref = _apply_rotary_pos_emb_bshd(t32, freqs, mscale=mscale)
    (ref_dt,) = torch.autograd.grad(ref, t32, grad_out.float())
    out = rope_fused.apply_rope(t, freqs, mscale, "triton")
    (dt,) = torch.autograd.grad(out, t, grad_out)
    assert out.dtype == dtype and out.shape == t.shape
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(dt.float(), ref_dt, rtol=tol, atol=tol)


def test_compiled_rope_matches_unfused():
    s, b, h, d = 512, 2, 8, 128
    freqs, mscale = _angles(s, b, d)
    t = torch.randn(s, b, h, d, device=DEV).requires_grad_(True)
    grad_out = torch.randn_like(t)
    ref = _apply_rotary_pos_emb_bshd(t, freqs, mscale=mscale)
    (ref_dt,) = torch.autograd.grad(ref, t, grad_out)
    out = rope_fused.apply_rope(t, freqs, mscale, "compile")
    (dt,) = torch.autograd.grad(out, t, grad_out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dt, ref_dt, rtol=1e-5, atol=1e-5)


def test_chunked_ce_bf16_matches_unchunked():
    g = torch.Generator(device=DEV).manual_seed(2)
    n, h, v = 2048, 512, 32768
    x = (0.5 * torch.randn(n, h, device=DEV, generator=g)).bfloat16().requires_grad_(True)
    w = (0.05 * torch.randn(v, h, device=DEV, generator=g)).bfloat16().requires_grad_(True)
    labels = torch.randint(0, v, (n,), device=DEV, generator=g)
    ref = torch.nn.functional.cross_entropy((x @ w.t()).float(), labels, reduction="none")
    ref_dx, ref_dw = torch.autograd.grad(ref.sum(), (x, w))
    out = chunked_cross_entropy(x, w, labels, 256)
    dx, dw = torch.autograd.grad(out.sum(), (x, w))
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
    for got, want in ((dx, ref_dx), (dw, ref_dw)):
        scale = want.float().abs().max()
        assert scale > 0 and (got.float() - want.float()).abs().max() / scale < 2e-2


@pytest.mark.parametrize("backend", ["cudnn", "flash", "efficient", "math"])
def test_model_loss_under_each_forced_backend(backend):
    cfg = get_preset("tiny").replace(hidden_size=256, num_attention_heads=4, num_query_groups=2)
    torch.manual_seed(0)
    model = build_model(cfg, params_dtype=torch.bfloat16, use_te=False).to(DEV, torch.bfloat16)
    g = torch.Generator(device=DEV).manual_seed(3)
    tokens = torch.randint(0, cfg.vocab_size, (2, 256), device=DEV, generator=g)
    pos = torch.stack([torch.arange(256), torch.arange(256) * 200]).to(DEV)
    with torch.no_grad():
        ref = model(tokens, pos, labels=tokens).float()
        set_performance_options(model.config, sdpa_backend=backend, ce_chunk_size=128)
        got = model(tokens, pos, labels=tokens).float()
    torch.testing.assert_close(got, ref, rtol=3e-2, atol=3e-2)
