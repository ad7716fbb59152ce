"""RoPE inverse frequencies and per-token angles against Hugging Face transformers."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from megatron_endprompt.model.config import ModelConfig, RopeScaling
from megatron_endprompt.model.rope import inv_freq_and_mscale, inv_freq_and_scaling, rope_freqs

BASE = ModelConfig(
    num_layers=2,
    hidden_size=256,
    ffn_hidden_size=64,
    num_attention_heads=2,
    num_query_groups=1,
    vocab_size=100,
    max_position_embeddings=65536,
    rope_theta=10000.0,
)  # fmt: skip  (head_dim 128: the full Llama frequency range)


def hf_config(cfg: ModelConfig, rope_parameters: dict) -> LlamaConfig:
    params = {"rope_theta": cfg.rope_theta, **rope_parameters}
    return LlamaConfig(
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters=params,
    )


def hf_inv_freq(cfg: ModelConfig, rope_parameters: dict) -> tuple[torch.Tensor, float]:
    hf = hf_config(cfg, rope_parameters)
    kind = rope_parameters["rope_type"]
    if kind == "default":
        return LlamaRotaryEmbedding.compute_default_rope_parameters(hf)
    return ROPE_INIT_FUNCTIONS[kind](hf, "cpu")


CASES = [
    ("none", {}, {"rope_type": "default"}),
    ("none-theta", {"rope_theta": 500000.0}, {"rope_type": "default"}),
    ("linear-4", {"rope_scaling": {"type": "linear", "factor": 4.0}}, {"rope_type": "linear", "factor": 4.0}),
    ("linear-2.5", {"rope_scaling": {"type": "linear", "factor": 2.5}}, {"rope_type": "linear", "factor": 2.5}),
    (
        "yarn-default",
        {"rope_scaling": {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192}},
        {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192},
    ),
    (
        "yarn-custom",
        {"rope_theta": 500000.0, "rope_scaling": {
            "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096, "attention_factor": 1.3,
            "beta_fast": 16.0, "beta_slow": 2.0, "truncate": False}},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096, "attention_factor": 1.3,
         "beta_fast": 16.0, "beta_slow": 2.0, "truncate": False},
    ),
    (
        "yarn-mscale",
        {"rope_scaling": {"type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096,
                          "mscale": 0.707, "mscale_all_dim": 1.0}},
        {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096,
         "mscale": 0.707, "mscale_all_dim": 1.0},
    ),
    (
        "llama3-default",
        {"rope_theta": 500000.0, "rope_scaling": {"type": "llama3", "factor": 8.0,
                                                  "original_max_position_embeddings": 8192}},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 8192},
    ),
    (
        "llama3-custom",
        {"rope_theta": 200000.0, "rope_scaling": {"type": "llama3", "factor": 3.0, "low_freq_factor": 2.0,
                                                  "high_freq_factor": 8.0, "original_max_position_embeddings": 2048}},
        {"rope_type": "llama3", "factor": 3.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
         "original_max_position_embeddings": 2048},
    ),
]  # fmt: skip


@pytest.mark.parametrize("name,ours,theirs", CASES, ids=[c[0] for c in CASES])
def test_inv_freq_matches_transformers(name, ours, theirs):
    cfg = BASE.replace(**ours)
    inv_freq, scaling = inv_freq_and_scaling(cfg)
    ref_inv_freq, ref_scaling = hf_inv_freq(cfg, theirs)
    assert inv_freq.dtype == torch.float32 and inv_freq.shape == (cfg.head_dim // 2,)
    torch.testing.assert_close(inv_freq, ref_inv_freq.float(), rtol=0, atol=0)
    assert scaling == pytest.approx(ref_scaling, rel=1e-15)


def test_yarn_scaling_is_not_trivial():
    cfg = BASE.replace(rope_scaling={"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192})
    assert inv_freq_and_scaling(cfg)[1] == pytest.approx(0.1 * math.log(8.0) + 1.0)
    assert inv_freq_and_mscale is inv_freq_and_scaling


def test_ntk_static_formula():
    factor, d = 4.0, BASE.head_dim
    cfg = BASE.replace(rope_scaling={"type": "ntk", "factor": factor})
    inv_freq, scaling = inv_freq_and_scaling(cfg)
    base = 10000.0 * factor ** (d / (d - 2))
    expected = torch.tensor([1.0 / base ** (2 * i / d) for i in range(d // 2)], dtype=torch.float64)
    torch.testing.assert_close(inv_freq.double(), expected, rtol=1e-6, atol=0)
    assert scaling == 1.0
    # The lowest frequency is divided by exactly `factor` (NTK-aware interpolation), the highest kept.
    plain, _ = inv_freq_and_scaling(BASE)
    assert inv_freq[0] == plain[0]
    assert (plain[-1] / inv_freq[-1]).item() == pytest.approx(factor, rel=1e-5)


POSE_POSITIONS = torch.stack(
    [
        torch.cat([torch.arange(0, 40), torch.arange(65516, 65536)]),
        torch.arange(100, 160),
        torch.cat([torch.arange(0, 10), torch.arange(30000, 30050)]),
    ]
)


@pytest.mark.parametrize("case", [CASES[0], CASES[4], CASES[5], CASES[7]], ids=lambda c: c[0])
def test_per_token_rotation_matches_transformers(case):
    _, ours, theirs = case
    cfg = BASE.replace(**ours)
    inv_freq, scaling = inv_freq_and_scaling(cfg)
    freqs = rope_freqs(POSE_POSITIONS, inv_freq, cfg.max_position_embeddings)  # [s, b, 1, d]
    b, s = POSE_POSITIONS.shape
    assert freqs.shape == (s, b, 1, cfg.head_dim) and freqs.dtype == torch.float32

    torch.manual_seed(0)
    q = torch.randn(b, 2, s, cfg.head_dim)
    k = torch.randn(b, 1, s, cfg.head_dim)
    rotary = LlamaRotaryEmbedding(hf_config(cfg, theirs))
    cos, sin = rotary(q, POSE_POSITIONS)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos, sin)

    # Megatron's unfused formula: t * cos * m + rotate_half(t) * sin * m, with t as [s, b, h, d].
    def rotate(t):
        t = t.permute(2, 0, 1, 3)
        half = t.shape[-1] // 2
        rot = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
        out = t * (torch.cos(freqs) * scaling) + rot * (torch.sin(freqs) * scaling)
        return out.permute(1, 2, 0, 3)

    torch.testing.assert_close(rotate(q), q_ref, rtol=0, atol=2e-6)
    torch.testing.assert_close(rotate(k), k_ref, rtol=0, atol=2e-6)


def test_positions_out_of_range_raise():
    inv_freq, _ = inv_freq_and_scaling(BASE)
    with pytest.raises(ValueError, match="max_position_embeddings=65536"):
        rope_freqs(torch.tensor([[0, 65536]]), inv_freq, 65536)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        rope_freqs(torch.tensor([[-1, 3]]), inv_freq, 65536)
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        rope_freqs(torch.arange(4), inv_freq, 65536)
    rope_freqs(torch.tensor([[0, 65535]]), inv_freq, 65536)  # the last valid position is fine


def test_invalid_scaling_is_refused():
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        inv_freq_and_scaling(BASE.replace(rope_scaling=RopeScaling(type="yarn", factor=4.0)))
