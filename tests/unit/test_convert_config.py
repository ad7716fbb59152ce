"""config.json <-> ModelConfig in both RoPE dialects, refusals, and the key table (no megatron needed)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig

from megatron_endprompt.convert import key_map
from megatron_endprompt.convert.errors import ConversionError
from megatron_endprompt.convert.hf_config import HFSource, build_hf_config, ntk_scaled_theta, parse_hf_config
from megatron_endprompt.convert.testing import to_v4_dialect
from megatron_endprompt.model.config import ModelConfig, RopeScaling, get_preset

# As released with meta-llama/Llama-3.1-8B (transformers v4 dialect).
LLAMA31_V4 = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 128256,
}  # fmt: skip
# Llama-2 style: no rope_scaling, the older `type` key when present.
LLAMA2_V4 = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 11008,
    "max_position_embeddings": 4096, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 32, "rms_norm_eps": 1e-05, "rope_scaling": None, "torch_dtype": "float16",
    "vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
}  # fmt: skip

ROPES = [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "linear", "factor": 2.5, "rope_theta": 10000.0},
    {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192, "beta_fast": 16.0,
     "beta_slow": 2.0, "truncate": False, "attention_factor": 1.25, "rope_theta": 500000.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
     "original_max_position_embeddings": 8192, "rope_theta": 500000.0},
]  # fmt: skip


def _hf_dict(rope: dict) -> dict:
    cfg = LlamaConfig(
        hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=300, max_position_embeddings=65536, rope_parameters=dict(rope),
    )  # fmt: skip
    cfg.architectures = ["LlamaForCausalLM"]
    return cfg.to_dict()


def test_released_llama31_v4_config_round_trips():
    cfg, source = parse_hf_config(LLAMA31_V4)
    assert cfg == get_preset("llama3.1-8b").replace(init_method_std=0.02)
    assert (
        source.dialect == "v4" and source.torch_dtype == "bfloat16" and source.extra["bos_token_id"] == 128000
    )
    out = build_hf_config(cfg, source)
    assert out["rope_scaling"] == LLAMA31_V4["rope_scaling"] and out["rope_theta"] == 500000.0
    assert "rope_parameters" not in out and out["torch_dtype"] == "bfloat16"
    assert {k: out[k] for k in LLAMA31_V4 if k != "transformers_version"} == {
        k: v for k, v in LLAMA31_V4.items() if k != "transformers_version"
    }


def test_llama2_defaults_and_old_type_key():
    cfg, source = parse_hf_config(LLAMA2_V4)
    assert cfg.rope_theta == 10000.0 and cfg.rope_scaling == RopeScaling() and cfg.num_query_groups == 32
    raw = dict(LLAMA2_V4, rope_scaling={"type": "linear", "factor": 4.0})
    cfg, source = parse_hf_config(raw)
    assert cfg.rope_scaling == RopeScaling(type="linear", factor=4.0) and source.rope_type_key == "type"
    assert build_hf_config(cfg, source)["rope_scaling"] == {"type": "linear", "factor": 4.0}


@pytest.mark.parametrize("rope", ROPES, ids=lambda r: r["rope_type"])
@pytest.mark.parametrize("dialect", ["v5", "v4"])
def test_both_dialects_round_trip_and_transformers_agrees(rope, dialect):
    raw = _hf_dict(rope)
    if dialect == "v4":
        raw = to_v4_dialect(raw)
    cfg, source = parse_hf_config(raw)
    assert source.dialect == dialect and cfg.rope_theta == rope["rope_theta"]
    assert cfg.rope_scaling.type == {"default": "none"}.get(rope["rope_type"], rope["rope_type"])
    out = build_hf_config(cfg, source)
    assert parse_hf_config(out) == (cfg, source)
    if dialect == "v4":
        assert "rope_parameters" not in out and out["rope_theta"] == rope["rope_theta"]
    else:
        assert "rope_theta" not in out and out["rope_parameters"]["rope_theta"] == rope["rope_theta"]
    # transformers reads what we write into the same rope parameters as the original.
    expect = LlamaConfig.from_dict(raw).rope_parameters
    got = LlamaConfig.from_dict(out).rope_parameters
    for key, value in expect.items():
        if key != "type":
            assert got.get(key, value) == value, key


def test_ntk_exports_scaled_theta_and_imports_back():
    cfg = get_preset("tiny").replace(rope_scaling={"type": "ntk", "factor": 4.0})
    out = build_hf_config(cfg, HFSource(dialect="v4"))
    assert out["rope_scaling"] is None
    assert out["rope_theta"] == ntk_scaled_theta(10000.0, 4.0, 16) == 10000.0 * 4.0 ** (16 / 14)
    assert out["endprompt_rope_scaling"] == {"type": "ntk", "factor": 4.0, "rope_theta": 10000.0}
    back, _ = parse_hf_config(out)
    assert back == cfg
    tampered = dict(out, rope_theta=12345.0)  # note no longer matches: trust rope_theta alone
    assert parse_hf_config(tampered)[0].rope_scaling.type == "none"


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"architectures": ["MistralForCausalLM"]}, "architectures=['MistralForCausalLM']"),
        ({"architectures": None, "model_type": "gpt2"}, "model_type='gpt2'"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"attention_bias": True}, "attention_bias=True"),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "inference-time"),
        ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "unsupported rope type 'longrope'"),
        ({"num_key_value_heads": 3}, "num_query_groups"),
        ({"hidden_size": None}, "hidden_size"),
    ],
)
def test_refusals_name_the_problem(change, needle):
    raw = dict(LLAMA2_V4, **change)
    if raw.get("hidden_size") is None:
        del raw["hidden_size"]
    with pytest.raises(ConversionError, match="config.json") as err:
        parse_hf_config(raw)
    assert needle in str(err.value)


def test_key_table_packing_is_invertible_and_matches_megatron_layout():
    cfg = ModelConfig(
        num_layers=2, hidden_size=8, ffn_hidden_size=12, num_attention_heads=4, num_query_groups=2, vocab_size=5,
        kv_channels=3,
    )  # fmt: skip
    rule = key_map.match("decoder.layers.1.self_attention.linear_qkv.weight")[0]
    q = torch.arange(4 * 3 * 8.0).reshape(12, 8)
    k, v = -torch.arange(2 * 3 * 8.0).reshape(6, 8), 1000 + torch.arange(6 * 8.0).reshape(6, 8)
    qkv = key_map.to_megatron(rule, [q, k, v], cfg, padded_vocab=0)
    # group 0 = q heads 0,1 then k head 0 then v head 0 (3 rows each); group 1 likewise.
    expect = torch.cat([q[:6], k[:3], v[:3], q[6:], k[3:], v[3:]])
    assert torch.equal(qkv, expect)
    assert all(torch.equal(a, b) for a, b in zip(key_map.to_hf(rule, qkv, cfg), [q, k, v], strict=True))
    vocab_rule, layer = key_map.match("embedding.word_embeddings.weight")
    emb = torch.randn(5, 8)
    padded = key_map.to_megatron(vocab_rule, [emb], cfg, padded_vocab=key_map.padded_vocab_size(5, tp=2))
    assert padded.shape == (256, 8) and not padded[5:].any() and layer is None
    assert torch.equal(key_map.to_hf(vocab_rule, padded, cfg)[0], emb)
    fc1 = key_map.match("decoder.layers.0.mlp.linear_fc1.weight")[0]
    gate, up = torch.randn(12, 8), torch.randn(12, 8)
    assert torch.equal(key_map.to_megatron(fc1, [gate, up], cfg, 0), torch.cat([gate, up]))
    # Transformer Engine names of the norms map to the same HF tensors as the local ones.
    te = key_map.match("decoder.layers.3.self_attention.linear_qkv.layer_norm_weight")
    assert te[1] == 3 and key_map.hf_names(*te) == ("model.layers.3.input_layernorm.weight",)
    assert key_map.match("decoder.layers.0.mlp.linear_fc1._extra_state") is None
    assert key_map.padded_vocab_size(32000, 1) == 32000 and key_map.padded_vocab_size(128256, 8) == 126 * 1024
    assert not math.isnan(ntk_scaled_theta(1.0, 2.0, 4))
