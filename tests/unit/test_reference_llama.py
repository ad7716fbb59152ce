"""The benchmark's plain-PyTorch reference model must be a faithful LLaMA: same logits as HF transformers."""

import pytest
import torch

from benchmarks.reference_llama import ReferenceLlama, hf_config_dict
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
