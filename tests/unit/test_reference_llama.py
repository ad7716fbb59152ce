"""The benchmark's plain-PyTorch reference model must be a faithful LLaMA: same logits as HF transformers."""

from pathlib import Path

import pytest
import torch

from benchmarks.reference_llama import ReferenceLlama, hf_config_dict, rope_inv_freq
from megatron_endprompt import positions
from megatron_endprompt.model.config import RopeScaling, get_preset
from megatron_endprompt.training import flops

transformers = pytest.importorskip("transformers")

SCALINGS = [
    RopeScaling(),
    RopeScaling(type="linear", factor=8.0),
    RopeScaling(type="llama3", factor=8.0, original_max_position_embeddings=8192),
]


@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda r: r.type)
def test_logits_match_hf_llama_with_jumping_positions(scaling: RopeScaling) -> None:
    torch.manual_seed(0)
    # Llama-3's theta and a 64K window: angles at positions near 65535 must match too.
    cfg = get_preset("tiny").replace(max_position_embeddings=65536, rope_theta=500000.0, rope_scaling=scaling)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config_dict(cfg))).eval()
    ref = ReferenceLlama(cfg).eval()
    missing, unexpected = ref.load_state_dict(hf.state_dict(), strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    ids = torch.randint(0, cfg.vocab_size, (2, 24))
    # EndPrompt-like positions: a text segment, then a terminal segment near the end of the window.
    pos = torch.stack([torch.cat([torch.arange(16), torch.arange(65528, 65536)]),
                       torch.cat([torch.arange(20), torch.arange(1000, 1004)])])  # fmt: skip
    with torch.no_grad():
        want = hf(input_ids=ids, position_ids=pos).logits
        got = ref(ids, pos)
    torch.testing.assert_close(got, want, atol=5e-5, rtol=1e-4)


def test_refuses_positions_beyond_window() -> None:
    cfg = get_preset("tiny").replace(max_position_embeddings=64)
    ref = ReferenceLlama(cfg)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ref(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[0, 64]]))


def test_parameter_count_matches_flops_module() -> None:
    """training/flops.py counts parameters analytically; a real module must agree (Llama-3-8B shapes)."""
    cfg = get_preset("llama3-8b").replace(num_layers=2)
    with torch.device("meta"):  # count without allocating
        ref = ReferenceLlama(cfg)
    assert sum(p.numel() for p in ref.parameters()) == flops.total_params(cfg)
    matmuls = sum(p.numel() for n, p in ref.named_parameters() if p.dim() == 2 and "embed_tokens" not in n)
    assert matmuls == flops.matmul_params(cfg)
    # docs/METHOD.md: 51.5 GFLOP/token at 8K, 96.6 at 64K for Llama-3-8B.
    full = get_preset("llama3-8b")
    assert flops.flops_per_token(full, 8192) / 1e9 == pytest.approx(51.5, abs=0.1)
    assert flops.flops_per_token(full, 65536) / 1e9 == pytest.approx(96.6, abs=0.1)


def test_inv_freq_stays_float32_under_dtype_casts() -> None:
    """`.to(bf16)` casts buffers: bf16 frequencies put position 65535's angle ~100 rad off."""
    cfg = get_preset("tiny").replace(max_position_embeddings=65536, rope_theta=500000.0)
    ref = ReferenceLlama(cfg).to(torch.bfloat16).half().to(torch.bfloat16)
    assert ref.lm_head.weight.dtype == torch.bfloat16  # the cast did happen to the weights
    assert ref.inv_freq.dtype == torch.float32
    torch.testing.assert_close(ref.inv_freq, rope_inv_freq(cfg), rtol=0, atol=0)
    cos, _ = ref.rope(torch.tensor([[65535]]), torch.float32)
    want = (65535.0 * rope_inv_freq(cfg).double()).cos()
    torch.testing.assert_close(cos[0, 0, 0, : cfg.head_dim // 2].double(), want, atol=1e-3, rtol=0)


# Llama-3-like small model: GQA, llama3 rope scaling from an 8K window, head_dim 128 like the real thing.
BF16_CFG = get_preset("llama3-8b").replace(
    num_layers=2, hidden_size=512, ffn_hidden_size=1408, num_attention_heads=4, num_query_groups=2,
    vocab_size=4096, max_position_embeddings=65536,
    rope_scaling=RopeScaling(type="llama3", factor=8.0, original_max_position_embeddings=8192),
)  # fmt: skip


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm())


def test_reference_model_matches_hf_in_bf16(tmp_path: Path) -> None:
    """In bf16 the reference is as close to HF's fp32 logits as HF's own bf16 model (EndPrompt positions to 64K).

    HF is loaded with `from_pretrained(torch_dtype=bf16)`, which keeps its RoPE frequencies in float32: the
    reference must too, or its error doubles (0.020 vs HF's 0.0096 before the fix).
    """
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config_dict(BF16_CFG))).eval()
    hf.save_pretrained(tmp_path)
    ref = ReferenceLlama(BF16_CFG)
    assert not ref.load_state_dict(hf.state_dict(), strict=False).unexpected_keys
    ref = ref.to(torch.bfloat16).eval()
    hf_bf16 = transformers.LlamaForCausalLM.from_pretrained(
        tmp_path, torch_dtype=torch.bfloat16, attn_implementation="sdpa"
    ).eval()
    seq, g = 2048, torch.Generator().manual_seed(1)
    ids = torch.randint(0, BF16_CFG.vocab_size, (2, seq), generator=g)
    ep = positions.position_ids(positions.endprompt(seq, 65536, 16))
    pos = torch.stack([torch.from_numpy(ep), torch.arange(seq)])
    with torch.no_grad():
        truth = hf(input_ids=ids, position_ids=pos).logits.float()
        hf_err = _rel_err(hf_bf16(input_ids=ids, position_ids=pos).logits.float(), truth)
        got = ref(ids, pos).float()
    assert _rel_err(got, truth) < 1.5 * hf_err + 1e-3, (_rel_err(got, truth), hf_err)


def test_chunked_loss_equals_full_cross_entropy() -> None:
    """The 64K cases' chunked CE is the same loss and gradients as CE on the full logits (fp32)."""
    torch.manual_seed(0)
    cfg = get_preset("tiny").replace(max_position_embeddings=64)
    ref = ReferenceLlama(cfg)
    ids, labels = torch.randint(0, cfg.vocab_size, (2, 2, 24))
    pos = torch.arange(24).expand(2, -1)
    full = torch.nn.functional.cross_entropy(ref(ids, pos).flatten(0, 1), labels.flatten())
    want = torch.autograd.grad(full, list(ref.parameters()))
    chunked = ref.chunked_loss(ids, pos, labels, chunk=10)  # 48 tokens: chunks of 10, 10, 10, 10, 8
    got = torch.autograd.grad(chunked, list(ref.parameters()))
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=1e-6)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)
