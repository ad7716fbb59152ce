"""LLaMA-family GPT on megatron-core with per-token RoPE positions.

`EndPromptGPTModel` is megatron's `GPTModel` built without its own position embedding
(`position_embedding_type='none'`); `_preprocess` then builds RoPE angles [s, b, 1, d] from the explicit
`position_ids` of every sample (see `rope.py`) and hands them to the decoder, where megatron's unfused RoPE
applies them per sample and per token. YaRN's attention factor reaches the attention through megatron's own
`yarn_*` config fields (it multiplies cos/sin, as in HF).

The config is `EndPromptTransformerConfig` (transformer_config.py), megatron's TransformerConfig with typed fields
for the performance knobs (set by `to_transformer_config`'s `sdpa_backend`, `rope_fusion` and `ce_chunk_size`
arguments, or later by the engine through `set_performance_options`): `ep_sdpa_backend` (read by
`attention.SDPAttention`), `ep_rope_fusion` (read by `rope_fused.FusedRopeSelfAttention`) and `ep_ce_chunk_size`
(read here: with labels, the output layer and the cross entropy run in chunks, see `chunked_ce.py`).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_endprompt.model import rope_fused
from megatron_endprompt.model.attention import check_sdpa_backend
from megatron_endprompt.model.chunked_ce import chunked_cross_entropy
from megatron_endprompt.model.config import ModelConfig, padded_vocab_size
from megatron_endprompt.model.rope import inv_freq_and_scaling, rope_freqs
from megatron_endprompt.model.specs import block_spec
from megatron_endprompt.model.transformer_config import EndPromptTransformerConfig

logger = logging.getLogger(__name__)

PREPROCESS_ROPE_SLOT = 1
"""Index of `rotary_pos_emb` in the tuple megatron-core 0.16.1's private `GPTModel._preprocess` returns (and its
`forward` unpacks): (decoder_input, rotary_pos_emb, rotary_pos_cos, rotary_pos_sin, sequence_len_offset,
padding_mask[, rotary_pos_cos_sin]). Pinned by tests/unit/test_model_forward.py against megatron itself."""


def _yarn_config_fields(cfg: ModelConfig, attention_scaling: float) -> dict:
    """megatron `yarn_*` config fields whose concentration factor equals HF's attention_factor exactly.

    megatron computes mscale(factor, m) / mscale(factor, m_all) with mscale(s, m) = 0.1 m ln(s) + 1.
    An explicit attention_factor a is expressed with s = e, m = 10 (a - 1), m_all = 0.
    """
    if attention_scaling == 1.0:
        return {}
    rs = cfg.rope_scaling
    if rs.attention_factor is None:
        mscale, mscale_all = (
            (rs.mscale, rs.mscale_all_dim) if rs.mscale and rs.mscale_all_dim else (None, None)
        )
        return {
            "yarn_rotary_scaling_factor": rs.factor,
            "yarn_mscale": mscale,
            "yarn_mscale_all_dim": mscale_all,
        }
    return {"yarn_rotary_scaling_factor": math.e, "yarn_mscale": 10.0 * (attention_scaling - 1.0),
            "yarn_mscale_all_dim": 0.0}  # fmt: skip


def set_performance_options(
    config: EndPromptTransformerConfig,
    *,
    sdpa_backend: str = "auto",
    rope_fusion: str = "auto",
    ce_chunk_size: int = 0,
) -> EndPromptTransformerConfig:
    """Store the performance knobs on `config` (validated; errors name the --model flag); returns config.

    sdpa_backend: auto|cudnn|flash|efficient|math (local spec's SDPA attention). rope_fusion: auto|none|triton|
    compile (local spec's self attention). ce_chunk_size: tokens per chunk of the chunked output layer + cross
    entropy; 0 = off.
    """
    check_config_type(config)
    check_sdpa_backend(sdpa_backend)
    rope_fused.check_rope_fusion(rope_fusion)
    if ce_chunk_size is None or ce_chunk_size < 0:
        raise ValueError(f"--model.ce_chunk_size must be >= 0 (0 = off), got {ce_chunk_size}")
    config.ep_sdpa_backend = sdpa_backend
    config.ep_rope_fusion = rope_fusion
    config.ep_ce_chunk_size = int(ce_chunk_size)
    return config


def check_config_type(config: TransformerConfig) -> None:
    """TypeError unless `config` is an EndPromptTransformerConfig (our layers read its fields)."""
    if not isinstance(config, EndPromptTransformerConfig):
        raise TypeError(
            f"expected an EndPromptTransformerConfig (build it with model.gpt.to_transformer_config), "
            f"got {type(config).__name__}"
        )


def to_transformer_config(
    cfg: ModelConfig,
    *,
    tp: int | None = None,
    pp: int | None = None,
    cp: int | None = None,
    vp: int | None = None,
    params_dtype: torch.dtype = torch.float32,
    bf16: bool = False,
    fp16: bool = False,
    sequence_parallel: bool = False,
    recompute: str | None = None,
    recompute_num_layers: int = 1,
    sdpa_backend: str = "auto",
    rope_fusion: str = "auto",
    ce_chunk_size: int = 0,
    **overrides,
) -> EndPromptTransformerConfig:
    """`EndPromptTransformerConfig` for `cfg`; parallel sizes default to the initialised parallel_state.

    recompute: None, "full" (uniform, `recompute_num_layers` per chunk) or "selective" (core attention).
    sdpa_backend / rope_fusion / ce_chunk_size: see `set_performance_options`.
    Extra keyword arguments are passed to TransformerConfig unchanged.
    """
    from megatron.core import parallel_state

    cfg.validate()
    if parallel_state.model_parallel_is_initialized():
        tp = tp or parallel_state.get_tensor_model_parallel_world_size()
        pp = pp or parallel_state.get_pipeline_model_parallel_world_size()
        cp = cp or parallel_state.get_context_parallel_world_size()
        vp = vp or parallel_state.get_virtual_pipeline_model_parallel_world_size()
    if recompute not in (None, "full", "selective"):
        raise ValueError(f"--recompute: expected none, full or selective, got {recompute!r}")
    kwargs = dict(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        kv_channels=cfg.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=cfg.init_method_std,
        tensor_model_parallel_size=tp or 1,
        pipeline_model_parallel_size=pp or 1,
        virtual_pipeline_model_parallel_size=vp,
        context_parallel_size=cp or 1,
        sequence_parallel=sequence_parallel,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=bf16,
        fp16=fp16,
        use_cpu_initialization=not torch.cuda.is_available(),
        gradient_accumulation_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
    )
    if recompute == "full":
        kwargs.update(
            recompute_granularity="full",
            recompute_method="uniform",
            recompute_num_layers=recompute_num_layers,
        )
    elif recompute == "selective":
        kwargs.update(recompute_granularity="selective", recompute_modules=["core_attn"])
    _, attention_scaling = inv_freq_and_scaling(cfg)
    kwargs.update(_yarn_config_fields(cfg, attention_scaling))
    kwargs.update(overrides)
    config = EndPromptTransformerConfig(**kwargs)
    return set_performance_options(
        config, sdpa_backend=sdpa_backend, rope_fusion=rope_fusion, ce_chunk_size=ce_chunk_size
    )


def _rope_positions(position_ids: torch.Tensor, inference_context) -> torch.Tensor:
    """Positions to build RoPE angles for: the input's, or with a KV cache those of every cached slot (megatron
    indexes its rotary rows by cache slot, see model/kv_cache.py)."""
    if inference_context is None:
        return position_ids
    from megatron_endprompt.model.kv_cache import KVCacheContext

    if not isinstance(inference_context, KVCacheContext):
        raise NotImplementedError(
            "EndPromptGPTModel decodes with a KV cache through model.kv_cache.KVCacheContext only (it keeps "
            f"the per-token RoPE position of every cache slot); got {type(inference_context).__name__}"
        )
    return inference_context.rope_positions(position_ids)


class EndPromptGPTModel(GPTModel):
    """GPTModel whose RoPE angles come from per-sample `position_ids` [b, s] (required on every PP stage).

    Attributes: `config_ep` (the ModelConfig), `padded_vocab_size`, `attention_scaling`.
    """

    def __init__(
        self, config: EndPromptTransformerConfig, cfg: ModelConfig, *, padded_vocab: int, **kwargs
    ) -> None:
        check_config_type(config)
        super().__init__(
            config=config,
            vocab_size=padded_vocab,
            max_sequence_length=cfg.max_position_embeddings,
            share_embeddings_and_output_weights=cfg.tie_word_embeddings,
            position_embedding_type="none",
            **kwargs,
        )
        self.config_ep = cfg
        self.padded_vocab_size = padded_vocab
        inv_freq, self.attention_scaling = inv_freq_and_scaling(cfg)
        # A plain attribute, not a buffer: model.to(bfloat16) must not round the frequencies.
        self._inv_freq = {inv_freq.device: inv_freq}

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        """float32 inverse frequencies on `device` (cached per device)."""
        if device not in self._inv_freq:
            self._inv_freq[device] = next(iter(self._inv_freq.values())).to(device)
        return self._inv_freq[device]

    def _preprocess(
        self,
        input_ids,
        position_ids,
        decoder_input=None,
        inference_context=None,
        packed_seq_params=None,
        padding_mask=None,
    ):
        """Upstream preprocessing (embedding, no RoPE), then RoPE angles from `position_ids`."""
        if position_ids is None:
            raise ValueError(
                "EndPromptGPTModel needs position_ids [batch, seq] on every pipeline stage (RoPE positions)"
            )
        if packed_seq_params is not None:
            raise NotImplementedError("packed sequences (thd) are not supported with per-token RoPE")
        out = super()._preprocess(
            input_ids,
            position_ids,
            decoder_input=decoder_input,
            inference_context=inference_context,
            packed_seq_params=packed_seq_params,
            padding_mask=padding_mask,
        )
        freqs = rope_freqs(
            _rope_positions(position_ids, inference_context),
            self.inv_freq(position_ids.device),
            self.config_ep.max_position_embeddings,
        )
        out = list(out)
        out[PREPROCESS_ROPE_SLOT] = freqs
        return tuple(out)

    def _postprocess(self, hidden_states, input_ids, position_ids, labels, *args, **kwargs):
        """Upstream postprocessing, except that the training loss may run in chunks (`ep_ce_chunk_size`)."""
        chunk = self.config.ep_ce_chunk_size
        if labels is None or not chunk or not self.post_process or self.config.mtp_num_layers is not None:
            return super()._postprocess(hidden_states, input_ids, position_ids, labels, *args, **kwargs)
        return self._chunked_loss(hidden_states, labels, chunk)

    def _chunked_loss(self, hidden_states: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
        """Per-token CE [b, s] of the output layer applied to `hidden_states` [s(/TP), b, h], in chunks."""
        from megatron.core import parallel_state, tensor_parallel

        layer = self.output_layer
        weight = (
            self.shared_embedding_or_output_weight() if self.share_embeddings_and_output_weights else None
        )
        weight = layer.weight if weight is None else weight
        # Same input-side TP regions as ColumnParallelLinear: the backward all-reduces (or reduce-scatters)
        # this shard's partial input gradient.
        if layer.sequence_parallel:
            x = tensor_parallel.gather_from_sequence_parallel_region(hidden_states)
        else:
            x = tensor_parallel.copy_to_tensor_model_parallel_region(hidden_states)
        s, b, h = x.shape
        tp_group = parallel_state.get_tensor_model_parallel_group()
        vocab_start = parallel_state.get_tensor_model_parallel_rank() * weight.shape[0]
        flat_labels = labels.transpose(0, 1).reshape(s * b)  # [b, s] -> token order of x ([s, b])
        loss = chunked_cross_entropy(x.reshape(s * b, h), weight, flat_labels, chunk, tp_group, vocab_start)
        return loss.view(s, b).transpose(0, 1).contiguous()

    def forward(self, input_ids, position_ids, attention_mask=None, labels=None, **kwargs):
        """logits [b, s, padded_vocab / TP] when labels is None, else per-token loss [b, s]."""
        return super().forward(input_ids, position_ids, attention_mask, labels=labels, **kwargs)


def check_rope_unfused(config: TransformerConfig) -> None:
    """Refuse megatron's fused RoPE: per-sample [s, b, 1, d] frequencies must never reach it.

    Its kernels (TE's `fused_apply_rotary_pos_emb`, apex's) take one frequency row per position shared by
    the whole batch and drop YaRN's mscale, so with EndPrompt positions they would silently rotate every
    sample by the first sample's angles. Our own fusions (`--model.rope_fusion`) handle per-sample angles.
    """
    if config.apply_rope_fusion:
        raise ValueError(
            "apply_rope_fusion=True: megatron's fused RoPE takes neither per-sample positions nor YaRN's "
            "mscale; leave it False (use --model.rope_fusion triton|compile for a fused per-token RoPE)"
        )


def build_model(
    cfg: ModelConfig,
    *,
    pre_process: bool | None = None,
    post_process: bool | None = None,
    params_dtype: torch.dtype = torch.float32,
    sequence_parallel: bool = False,
    use_te: bool | None = None,
    vp_stage: int | None = None,
    config: EndPromptTransformerConfig | None = None,
    **config_overrides,
) -> EndPromptGPTModel:
    """Build the model chunk for this rank's pipeline stage (needs parallel_state initialised).

    pre_process / post_process default to whether this rank (and `vp_stage`) is the first / last stage.
    `config` replaces the TransformerConfig derived from `cfg` (then `config_overrides` are ignored).
    """
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError("call megatron_endprompt.parallel.initialize() before build_model()")
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    if config is None:
        config = to_transformer_config(
            cfg, params_dtype=params_dtype, bf16=params_dtype == torch.bfloat16,
            fp16=params_dtype == torch.float16, sequence_parallel=sequence_parallel, **config_overrides,
        )  # fmt: skip
    check_rope_unfused(config)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    spec = block_spec(config, vp_stage=vp_stage, use_te=use_te, cp=config.context_parallel_size > 1)
    model = EndPromptGPTModel(
        config,
        cfg,
        padded_vocab=padded_vocab_size(cfg.vocab_size, tp),
        transformer_layer_spec=spec,
        pre_process=pre_process,
        post_process=post_process,
        vp_stage=vp_stage,
    )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())  # anything megatron left on the CPU
    return model
