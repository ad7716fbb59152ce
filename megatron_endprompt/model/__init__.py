"""LLaMA-family model on megatron-core with per-token RoPE: config, RoPE, SDPA attention, specs, GPT.

Submodules import megatron lazily where it matters: `config` and `rope` do not import megatron.
"""

from megatron_endprompt.model.config import PRESETS, ModelConfig, RopeScaling, get_preset

__all__ = ["PRESETS", "ModelConfig", "RopeScaling", "get_preset"]
