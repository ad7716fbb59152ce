"""HF LlamaForCausalLM -> our converter -> load_model gives HF's logits, with per-sample non-contiguous
positions up to 64K, for every RoPE scaling type in both config dialects (reference: transformers itself)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from megatron_endprompt import load_model
from megatron_endprompt.convert import hf_to_megatron
from megatron_endprompt.convert.testing import save_tiny_hf_llama

S, T = 48, 65536

VARIANTS = {
    "default": ({"rope_type": "default", "rope_theta": 10000.0}, "v5"),
    "theta-500k": ({"rope_type": "default", "rope_theta": 500000.0}, "v4"),
    "linear-4": ({"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}, "v4"),
    "linear-2.5": ({"rope_type": "linear", "factor": 2.5, "rope_theta": 10000.0}, "v5"),
    "yarn": ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192,
              "rope_theta": 500000.0}, "v4"),
    "yarn-all-params": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16384,
                         "beta_fast": 16.0, "beta_slow": 2.0, "truncate": False, "attention_factor": 1.2,
                         "rope_theta": 10000.0}, "v5"),
    "llama3": ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
                "original_max_position_embeddings": 8192, "rope_theta": 500000.0}, "v4"),
}  # fmt: skip


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three samples, three position layouts: contiguous, EndPrompt (text then a cue ending at T-1), PoSE-like."""
    a, b = 40, S - 40
    endprompt = torch.cat([torch.arange(a), torch.arange(T - b, T)])
    pose = torch.cat([torch.arange(20), torch.arange(20, S) + 30000])
    positions = torch.stack([torch.arange(S), endprompt, pose])
    ids = torch.randint(0, 300, (3, S), generator=torch.Generator().manual_seed(1))
    return ids, positions


@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_transformers(name, tmp_path):
    rope, dialect = VARIANTS[name]
    hf_dir = save_tiny_hf_llama(tmp_path / "hf", rope_parameters=dict(rope), dialect=dialect)
    hf_to_megatron(hf_dir, tmp_path / "megatron")
    model = load_model(tmp_path / "megatron")
    reference = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids, positions = _batch()
    with torch.no_grad():
        expect = reference(input_ids=ids, position_ids=positions).logits
        got = model(ids, positions)
    assert got.shape == expect.shape == (3, S, 300) and got.dtype == torch.float32
    assert (got - expect).abs().max().item() <= 1e-4
    # Sanity: the positions matter (a model ignoring them would fail the layouts above anyway).
    assert (expect[1, -1] - reference(input_ids=ids[1:2]).logits[0, -1]).abs().max() > 1e-3
