"""EndPromptGPTModel on CPU: shapes, per-token positions, equality with upstream GPTModel and with HF Llama."""

from __future__ import annotations

import pytest
import torch

from megatron_endprompt.model.config import get_preset
from megatron_endprompt.model.gpt import (
    EndPromptGPTModel,
    build_model,
    padded_vocab_size,
    to_transformer_config,
)
from megatron_endprompt.parallel import initialize

B, S = 2, 48


@pytest.fixture(scope="module", autouse=True)
def _single_process():
    initialize(tp=1, pp=1, cp=1, seed=1234)


def _tokens(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (B, S), generator=torch.Generator().manual_seed(seed))


def _contiguous() -> torch.Tensor:
    return torch.arange(S).expand(B, S).contiguous()


def _pose_like() -> torch.Tensor:
    """Sample 0: 0..39 then 65528..65535 (a far terminal segment); sample 1: contiguous from 7."""
    return torch.stack([torch.cat([torch.arange(40), torch.arange(65528, 65536)]), torch.arange(7, 7 + S)])


def test_forward_shapes_loss_and_padded_vocab():
    cfg = get_preset("tiny")
    model = build_model(cfg).eval()
    assert isinstance(model, EndPromptGPTModel) and model.config_ep is cfg
    assert model.padded_vocab_size == padded_vocab_size(cfg.vocab_size) == 512
    ids = _tokens(cfg.vocab_size)
    with torch.no_grad():
        logits = model(ids, _pose_like())
        loss = model(ids, _pose_like(), labels=ids)
    assert logits.shape == (B, S, model.padded_vocab_size) and logits.dtype == torch.float32
    assert loss.shape == (B, S) and torch.isfinite(loss).all()
    # The loss is the per-token cross entropy of the returned logits.
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), ids.reshape(-1), reduction="none"
    )
    torch.testing.assert_close(loss.reshape(-1), ce, rtol=1e-5, atol=1e-5)
    assert padded_vocab_size(32000, tp=2) == 32000 and padded_vocab_size(32001, tp=2) == 32256


def test_positions_change_outputs_per_sample_only():
    cfg = get_preset("tiny")
    model = build_model(cfg).eval()
    ids = _tokens(cfg.vocab_size, 1)
    pos = _pose_like()
    shifted = pos.clone()
    shifted[0, 40:] -= 1000  # move sample 0's terminal segment only
    with torch.no_grad():
        a, b = model(ids, pos), model(ids, shifted)
    torch.testing.assert_close(a[:, :40], b[:, :40], rtol=0, atol=0)  # causal: earlier tokens unaffected
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)  # the other sample is untouched
    assert (a[0, 40:] - b[0, 40:]).abs().max() > 1e-4
    # A uniform shift of all positions leaves a RoPE model (nearly) invariant: relative positions only.
    moved = pos.clone()
    moved[1] += 20000
    with torch.no_grad():
        c = model(ids, moved)
    torch.testing.assert_close(a[1], c[1], rtol=1e-4, atol=1e-4)


def test_missing_or_out_of_range_positions_raise():
    cfg = get_preset("tiny")
    model = build_model(cfg).eval()
    ids = _tokens(cfg.vocab_size)
    with pytest.raises(ValueError, match="position_ids"):
        model(ids, None)
    bad = _contiguous().clone()
    bad[1, -1] = cfg.max_position_embeddings
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(ids, bad)


@pytest.mark.parametrize("local_attention", [False, True], ids=["sdpa-spec", "upstream-local-spec"])
def test_contiguous_positions_equal_upstream_gptmodel(local_attention):
    """Same weights, arange positions: our per-token RoPE equals megatron's own RoPE path."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from megatron_endprompt.model.specs import layer_spec

    cfg = get_preset("tiny").replace(rope_theta=50000.0)
    ours = build_model(cfg).eval()
    spec = get_gpt_layer_local_spec(normalization="RMSNorm") if local_attention else layer_spec(use_te=False)
    upstream = GPTModel(
        config=to_transformer_config(cfg),
        transformer_layer_spec=spec,
        vocab_size=ours.padded_vocab_size,
        max_sequence_length=cfg.max_position_embeddings,
        position_embedding_type="rope",
        rotary_base=int(cfg.rope_theta),
    ).eval()
    missing, unexpected = upstream.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("_extra_state" in k for k in missing)
    ids = _tokens(cfg.vocab_size, 2)
    with torch.no_grad():
        ref = upstream(ids, _contiguous(), None)
        got = ours(ids, _contiguous())
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    assert (got - ref).abs().max() < 2e-6


def _megatron_to_hf_state(model, cfg) -> dict[str, torch.Tensor]:
    """Minimal private weight mapping (the real converter is convert/); GQA qkv is grouped per KV head."""
    sd = model.state_dict()
    d, nq, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_query_groups
    out = {
        "model.embed_tokens.weight": sd["embedding.word_embeddings.weight"][: cfg.vocab_size],
        "model.norm.weight": sd["decoder.final_layernorm.weight"],
        "lm_head.weight": sd["output_layer.weight"][: cfg.vocab_size],
    }
    for i in range(cfg.num_layers):
        p, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        qkv = sd[p + "self_attention.linear_qkv.weight"].view(nkv, (nq // nkv + 2) * d, -1)
        q, k, v = qkv.split([nq // nkv * d, d, d], dim=1)
        fc1_gate, fc1_up = sd[p + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        out.update({
            h + "input_layernorm.weight": sd[p + "input_layernorm.weight"],
            h + "post_attention_layernorm.weight": sd[p + "pre_mlp_layernorm.weight"],
            h + "self_attn.q_proj.weight": q.reshape(nq * d, -1),
            h + "self_attn.k_proj.weight": k.reshape(nkv * d, -1),
            h + "self_attn.v_proj.weight": v.reshape(nkv * d, -1),
            h + "self_attn.o_proj.weight": sd[p + "self_attention.linear_proj.weight"],
            h + "mlp.gate_proj.weight": fc1_gate,
            h + "mlp.up_proj.weight": fc1_up,
            h + "mlp.down_proj.weight": sd[p + "mlp.linear_fc2.weight"],
        })  # fmt: skip
    return out


YARN = {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192, "attention_factor": 1.37}
HF_YARN = {
    "rope_type": "yarn",
    "factor": 8.0,
    "original_max_position_embeddings": 8192,
    "attention_factor": 1.37,
}


@pytest.mark.parametrize(
    "scaling,hf_params",
    [({"type": "none"}, {"rope_type": "default"}), (YARN, HF_YARN)],
    ids=["plain", "yarn-attention-factor"],
)
def test_matches_hf_llama_with_pose_positions(scaling, hf_params):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = get_preset("tiny").replace(rope_scaling=scaling)
    ours = build_model(cfg).eval()
    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups, max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.norm_eps, rope_parameters={"rope_theta": cfg.rope_theta, **hf_params},
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
    )  # fmt: skip
    hf = LlamaForCausalLM(hf_cfg).eval()
    hf.load_state_dict(_megatron_to_hf_state(ours, cfg))
    ids, pos = _tokens(cfg.vocab_size, 3), _pose_like()
    with torch.no_grad():
        got = ours(ids, pos)[..., : cfg.vocab_size]
        ref = hf(input_ids=ids, position_ids=pos).logits
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-5)


def test_bf16_build_keeps_every_parameter_in_bf16_and_tracks_fp32():
    cfg = get_preset("tiny")
    initialize(tp=1, pp=1, cp=1, seed=1234)
    ref = build_model(cfg).eval()
    initialize(tp=1, pp=1, cp=1, seed=1234)
    model = build_model(cfg, params_dtype=torch.bfloat16).eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config.bf16 and model.inv_freq(torch.device("cpu")).dtype == torch.float32
    model.load_state_dict(
        {k: v.to(torch.bfloat16) if torch.is_tensor(v) else v for k, v in ref.state_dict().items()}
    )
    ids = _tokens(cfg.vocab_size, 4)
    with torch.no_grad():
        got, want = model(ids, _pose_like()).float(), ref(ids, _pose_like())
    assert (got - want).abs().max() < 0.1 * want.abs().max()


@pytest.mark.parametrize(
    "scaling",
    [
        {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192},
        {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192, "attention_factor": 0.9},
        {"type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096, "mscale": 0.707,
         "mscale_all_dim": 1.0},
        {"type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192},
    ],
    ids=["yarn-default", "yarn-attention-factor", "yarn-deepseek-mscale", "llama3"],
)  # fmt: skip
def test_megatron_attention_uses_our_rope_scaling(scaling):
    """megatron's attention multiplies cos/sin by the concentration factor it reads from the config."""
    from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import (
        _yarn_get_concentration_factor_from_config,
    )

    from megatron_endprompt.model.rope import inv_freq_and_scaling

    cfg = get_preset("tiny").replace(rope_scaling=scaling)
    expected = inv_freq_and_scaling(cfg)[1]
    assert _yarn_get_concentration_factor_from_config(to_transformer_config(cfg)) == pytest.approx(
        expected, rel=1e-14
    )


def test_megatron_preprocess_tuple_layout_is_what_we_override():
    """EndPromptGPTModel._preprocess replaces one slot of megatron's private return tuple: fail here, not
    silently in the model, if upstream moves `rotary_pos_emb` or changes the tuple's length."""
    from megatron.core.models.gpt import GPTModel

    from megatron_endprompt.model.gpt import PREPROCESS_ROPE_SLOT
    from megatron_endprompt.model.specs import layer_spec

    cfg = get_preset("tiny")
    upstream = GPTModel(
        config=to_transformer_config(cfg),
        transformer_layer_spec=layer_spec(use_te=False),
        vocab_size=padded_vocab_size(cfg.vocab_size),
        max_sequence_length=cfg.max_position_embeddings,
        position_embedding_type="rope",
    ).eval()
    ids = _tokens(cfg.vocab_size)
    with torch.no_grad():
        out = upstream._preprocess(ids, _contiguous())
        expected = upstream.rotary_pos_emb(S)
    assert len(out) == 6  # megatron's forward unpacks exactly six (a seventh only with flashinfer RoPE)
    torch.testing.assert_close(out[PREPROCESS_ROPE_SLOT], expected, rtol=0, atol=0)
    assert out[0].shape == (S, B, cfg.hidden_size)  # decoder input, [s, b, h]
    ours = build_model(cfg).eval()
    with torch.no_grad():
        mine = ours._preprocess(ids, _contiguous())
    assert len(mine) == len(out) and mine[PREPROCESS_ROPE_SLOT].shape == (S, B, 1, cfg.head_dim)
