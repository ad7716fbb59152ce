"""`EndPromptTransformerConfig`: megatron's TransformerConfig plus the fields our modules read.

megatron-core extends its config by subclassing it (`MLATransformerConfig`); we do the same, so every setting our
layers read is a typed, documented dataclass field instead of an attribute stuck on after construction.
`model.gpt.to_transformer_config` builds it; the engine may change the `ep_*` performance fields later (through
`model.gpt.set_performance_options`), which is why the readers look them up on every call.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron.core.transformer.transformer_config import TransformerConfig


@dataclass
class EndPromptTransformerConfig(TransformerConfig):
    """TransformerConfig with EndPrompt's performance knobs and YaRN's attention factor as fields."""

    ep_sdpa_backend: str = "auto"
    """SDPA kernel of the local spec's core attention (`attention.SDPAttention`; `--model.attention_backend`):
    one of `attention.SDPA_BACKENDS`."""

    ep_rope_fusion: str = "auto"
    """Per-token RoPE implementation of the local spec's self attention (`rope_fused.FusedRopeSelfAttention`;
    `--model.rope_fusion`): one of `rope_fused.ROPE_FUSIONS`."""

    ep_ce_chunk_size: int = 0
    """Tokens per chunk of the chunked output layer + cross entropy (`chunked_ce.py`, read by
    `EndPromptGPTModel`; `--model.ce_chunk_size`); 0 = megatron's own output layer and loss."""

    yarn_rotary_scaling_factor: float = 1.0
    """megatron's name (read by `_yarn_get_concentration_factor_from_config`, which megatron's attention uses
    to scale cos/sin): with `yarn_mscale*` it encodes YaRN's attention factor (`gpt._yarn_config_fields`).
    1.0 = no scaling (megatron's mscale(s <= 1) is 1)."""

    yarn_mscale: float | None = None
    """megatron's name: the numerator's m in mscale(s, m) / mscale(s, m_all); None = megatron's default
    attention factor 0.1 ln(s) + 1."""

    yarn_mscale_all_dim: float | None = None
    """megatron's name: the denominator's m_all (see `yarn_mscale`)."""
