"""FLOPs / memory estimates: the analytic counts against real references (HF model, torch's FLOP counter)."""

import pytest
import torch

from megatron_endprompt.model.config import get_preset
from megatron_endprompt.training import flops
from megatron_endprompt.training.config import load_config

transformers = pytest.importorskip("transformers")


def hf_llama(cfg):
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        attn_implementation="eager",
    )
    return transformers.LlamaForCausalLM(hf_cfg)


@pytest.mark.parametrize("preset", ["tiny", "tiny-mha"])
def test_param_counts_match_hf_llama(preset: str) -> None:
    cfg = get_preset(preset)
    model = hf_llama(cfg)
    assert sum(p.numel() for p in model.parameters()) == flops.total_params(cfg)
    embed = model.model.embed_tokens.weight.numel()
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert flops.matmul_params(cfg) == flops.total_params(cfg) - embed - norms


def test_6n_term_matches_torch_flop_counter() -> None:
    """Training FLOPs measured by torch on a real forward+backward = 6N per token + the attention matmuls.

    The eager HF attention multiplies the full s x s square (the mask does not save work), i.e. twice our causal
    term; subtracting that leaves exactly 6N per token.
    """
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    cfg = get_preset("tiny")
    model = hf_llama(cfg)
    b, s = 2, 32
    ids = torch.randint(0, cfg.vocab_size, (b, s))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    tokens = b * s
    attention_full_square = 2 * (flops.flops_per_token(cfg, s) - 6 * flops.matmul_params(cfg)) * tokens
    assert counter.get_total_flops() - attention_full_square == 6 * flops.matmul_params(cfg) * tokens


def test_llama3_8b_matches_the_paper() -> None:
    cfg = get_preset("llama3-8b")
    assert flops.total_params(cfg) == 8_030_261_248  # Meta-Llama-3-8B
    assert flops.flops_per_token(cfg, 8192) / 1e9 == pytest.approx(51.5, abs=0.05)
    assert flops.flops_per_token(cfg, 65536) / 1e9 == pytest.approx(96.6, abs=0.05)


def test_peak_flops_and_mfu() -> None:
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_flops("NVIDIA H200", "fp8") == 1979e12
    assert flops.peak_flops("cpu") is None and flops.peak_flops(None) is None
    assert flops.mfu(1000.0, 1e9, None) is None
    assert flops.mfu(1000.0, 1e9, 1e13) == pytest.approx(0.1)


def _memory(*overrides: str, world: int = 8):
    cfg = load_config(
        None,
        ["--model.preset", "llama3-8b", "--data.paths", "x", "--training.train_steps", "1", *overrides],
    )
    cfg.validate(world_size=world, check_environment=False)
    return flops.estimate_memory(cfg)


def test_memory_estimate_responds_to_the_layout() -> None:
    base = _memory()
    assert base.params_per_gpu == flops.total_params(get_preset("llama3-8b"))
    assert base.weights == 2 * base.params_per_gpu  # bf16
    assert base.grads == 4 * base.params_per_gpu  # fp32 gradient accumulation
    assert base.optimizer == 12 * base.params_per_gpu  # fp32 master + Adam m, v
    sharded = _memory("--optimizer.use_distributed_optimizer", "true")
    assert sharded.optimizer == pytest.approx(base.optimizer / 8)
    tp2 = _memory("--parallel.tensor_parallel", "2", "--parallel.sequence_parallel")
    assert tp2.params_per_gpu < 0.51 * base.params_per_gpu
    assert tp2.activations == pytest.approx(base.activations / 2)
    full = _memory("--recompute.granularity", "full")
    assert full.activations < base.activations / 5
    cp = _memory("--parallel.context_parallel", "4")
    assert cp.activations == pytest.approx(base.activations / 4) and cp.logits == pytest.approx(
        base.logits / 4
    )
    assert base.total == pytest.approx(
        base.weights + base.grads + base.optimizer + base.activations + base.logits
    )
