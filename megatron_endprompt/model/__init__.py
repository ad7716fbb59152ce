"""LLaMA-family model on megatron-core with per-token RoPE: config, RoPE, SDPA attention, specs, GPT.

`config` and `rope` do not import megatron; `build_model`, `to_transformer_config` and `EndPromptGPTModel`
are loaded from `gpt` on first access (importing megatron-core costs seconds).
"""

from megatron_endprompt.model.config import PRESETS, ModelConfig, RopeScaling, get_preset

_LAZY = {"build_model", "to_transformer_config", "EndPromptGPTModel", "padded_vocab_size"}

__all__ = ["PRESETS", "ModelConfig", "RopeScaling", "get_preset", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        from megatron_endprompt.model import gpt

        return getattr(gpt, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
