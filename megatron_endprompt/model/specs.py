"""Transformer-layer specs: Transformer Engine when it is usable (importable and a CUDA device present, decided
in `te_choice`), else megatron's local modules with our self attention (`rope_fused.FusedRopeSelfAttention`:
megatron's, plus our fused per-token RoPE when `--model.rope_fusion` selects one), our SDPA core attention
(which also provides context parallelism) and our RMSNorm (which supports sequence parallelism). The TE spec is
megatron's unchanged: its RoPE stays megatron's unfused one (megatron's fused kernels take neither per-sample
positions nor YaRN's attention scaling, see `gpt.check_rope_unfused`)."""

from __future__ import annotations

import copy
import logging

from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_endprompt.model.attention import SDPAttention
from megatron_endprompt.model.norm import RMSNorm
from megatron_endprompt.model.rope_fused import FusedRopeSelfAttention
from megatron_endprompt.model.te_choice import resolve_use_te

logger = logging.getLogger(__name__)


def layer_spec(use_te: bool | None = None, cp: bool = False) -> ModuleSpec:
    """GPT layer spec for a LLaMA block (RMSNorm, SwiGLU, GQA).

    use_te: None picks Transformer Engine when usable (`te_choice.resolve_use_te`); True requires it. cp:
    context parallelism is wanted (our SDPA attention handles it on the local path; TE's attention natively).
    """
    return _layer_spec(resolve_use_te(use_te), cp)


def _layer_spec(te: bool, cp: bool) -> ModuleSpec:
    """`layer_spec` once the TE choice is made (block_spec resolves it once, so it is logged once)."""
    from megatron.core.models.gpt import gpt_layer_specs

    if te:
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    spec = copy.deepcopy(gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm"))
    spec.submodules.self_attention.module = FusedRopeSelfAttention
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    spec.submodules.input_layernorm = RMSNorm
    spec.submodules.pre_mlp_layernorm = RMSNorm
    logger.debug("local layer spec with fused-RoPE self attention and SDPA core attention (cp=%s)", cp)
    return spec


def block_spec(config, vp_stage: int | None = None, use_te: bool | None = None, cp: bool = False):
    """Decoder-block spec for this pipeline stage: `layer_spec` layers, plus our RMSNorm as the final norm
    on the local path (megatron's default final norm there refuses sequence parallelism)."""
    from megatron.core.transformer.transformer_block import (
        TransformerBlockSubmodules,
        get_num_layers_to_build,
    )

    use_te = resolve_use_te(use_te)
    layer = _layer_spec(use_te, cp)
    if use_te:
        return layer
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers, layer_norm=RMSNorm)
