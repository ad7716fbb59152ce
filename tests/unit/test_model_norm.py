"""Our RMSNorm (local spec) against HF Llama's, plus the properties megatron relies on."""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from megatron_endprompt.model.config import get_preset
from megatron_endprompt.model.gpt import to_transformer_config
from megatron_endprompt.model.norm import RMSNorm


def test_matches_hf_llama_rmsnorm_fp32_and_bf16():
    config = to_transformer_config(get_preset("tiny"), tp=1, pp=1, cp=1)
    ours, ref = RMSNorm(config, 64, eps=1e-5), LlamaRMSNorm(64, eps=1e-5)
    with torch.no_grad():
        w = torch.randn(64, generator=torch.Generator().manual_seed(0))
        ours.weight.copy_(w)
        ref.weight.copy_(w)
    x = torch.randn(5, 2, 64, generator=torch.Generator().manual_seed(1)) * 3
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    xb = x.bfloat16()
    torch.testing.assert_close(ours(xb), ref(xb), rtol=0, atol=0)


def test_dtype_and_sequence_parallel_tag_follow_config():
    config = to_transformer_config(
        get_preset("tiny"), tp=2, pp=1, cp=1, params_dtype=torch.bfloat16, bf16=True, sequence_parallel=True
    )
    norm = RMSNorm(config, 64)
    assert norm.weight.dtype == torch.bfloat16 and norm.weight.device.type == "cpu"
    assert norm.weight.sequence_parallel is True  # finalize_model_grads all-reduces it over TP
    plain = RMSNorm(to_transformer_config(get_preset("tiny"), tp=1, pp=1, cp=1), 64)
    assert plain.weight.sequence_parallel is False and plain.weight.dtype == torch.float32
