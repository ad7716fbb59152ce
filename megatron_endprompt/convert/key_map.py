"""The one declarative table between HF LLaMA tensor names and our megatron model's state-dict names.

Both directions read the same `RULES`: `to_megatron` packs HF tensors into one megatron tensor and
`to_hf` is its exact inverse. Megatron names are the model's own `state_dict` / `sharded_state_dict` keys
at TP=PP=1 (the checkpoint keys and sharding come from the model, see `megatron_io.py`). Layer rules are
relative to `decoder.layers.{i}.`; HF layer names use the same global layer index `{i}`.

Packing kinds:
- `copy`: same tensor.
- `qkv`: q/k/v projections -> megatron `linear_qkv`, interleaved per query group: rows
  [ng, (q_per_group + 2) * head_dim] = for each group its q heads, then its k head, then its v head.
- `concat`: gate and up projections stacked along rows -> `linear_fc1` ([gate; up], SwiGLU order).
- `vocab`: embedding / output rows; megatron pads the vocabulary with zero rows, HF keeps the true size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

from megatron_endprompt.model.config import ModelConfig
from megatron_endprompt.model.config import (
    padded_vocab_size as padded_vocab_size,  # the one rule, re-exported
)

Kind = Literal["copy", "qkv", "concat", "vocab"]
LAYER_PREFIX = "decoder.layers.{i}."
_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class KeyRule:
    """One megatron tensor and the HF tensors it is made of."""

    megatron: str
    """Megatron state-dict name (relative to `decoder.layers.{i}.` when `per_layer`)."""
    hf: tuple[str, ...]
    """HF tensor names, `{i}` = layer index; several for `qkv` (q, k, v) and `concat` (gate, up)."""
    kind: Kind = "copy"
    """How the HF tensors are packed into the megatron one."""
    per_layer: bool = True
    """Whether the rule repeats for every transformer layer."""
    aliases: tuple[str, ...] = ()
    """Other megatron names for the same tensor (Transformer Engine specs fuse norms into the next linear)."""


_L = "model.layers.{i}."
RULES: tuple[KeyRule, ...] = (
    KeyRule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab", per_layer=False),
    KeyRule(
        "input_layernorm.weight",
        (_L + "input_layernorm.weight",),
        aliases=("self_attention.linear_qkv.layer_norm_weight",),
    ),
    KeyRule(
        "self_attention.linear_qkv.weight",
        (_L + "self_attn.q_proj.weight", _L + "self_attn.k_proj.weight", _L + "self_attn.v_proj.weight"),
        "qkv",
    ),
    KeyRule("self_attention.linear_proj.weight", (_L + "self_attn.o_proj.weight",)),
    KeyRule(
        "pre_mlp_layernorm.weight",
        (_L + "post_attention_layernorm.weight",),
        aliases=("mlp.linear_fc1.layer_norm_weight",),
    ),
    KeyRule("mlp.linear_fc1.weight", (_L + "mlp.gate_proj.weight", _L + "mlp.up_proj.weight"), "concat"),
    KeyRule("mlp.linear_fc2.weight", (_L + "mlp.down_proj.weight",)),
    KeyRule("decoder.final_layernorm.weight", ("model.norm.weight",), per_layer=False),
    KeyRule("output_layer.weight", ("lm_head.weight",), "vocab", per_layer=False),
)
TIED_OUTPUT = "output_layer.weight"
"""Absent from the model (and from HF files) when `tie_word_embeddings` is set."""


def match(megatron_name: str) -> tuple[KeyRule, int | None] | None:
    """(rule, layer index or None) for a megatron state-dict name, or None when no rule covers it."""
    m = _LAYER_RE.match(megatron_name)
    for rule in RULES:
        if rule.per_layer and m:
            if m.group(2) in (rule.megatron, *rule.aliases):
                return rule, int(m.group(1))
        elif not rule.per_layer and megatron_name in (rule.megatron, *rule.aliases):
            return rule, None
    return None


def hf_names(rule: KeyRule, layer: int | None) -> tuple[str, ...]:
    """The HF tensor names of `rule` for `layer`."""
    return tuple(name.format(i=layer) for name in rule.hf)


def megatron_names(cfg: ModelConfig) -> list[str]:
    """Every megatron tensor name of a TP=PP=1 model (canonical names, not aliases), in table order."""
    names = []
    for rule in RULES:
        if rule.megatron == TIED_OUTPUT and cfg.tie_word_embeddings:
            continue
        if rule.per_layer:
            names += [LAYER_PREFIX.format(i=i) + rule.megatron for i in range(cfg.num_layers)]
        else:
            names.append(rule.megatron)
    return names


def expected_hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name the model needs, with its shape."""
    h, hd, ffn, v = cfg.hidden_size, cfg.head_dim, cfg.ffn_hidden_size, cfg.vocab_size
    q_rows, kv_rows = cfg.num_attention_heads * hd, cfg.num_query_groups * hd
    layer = {
        "input_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q_rows, h),
        "self_attn.k_proj.weight": (kv_rows, h),
        "self_attn.v_proj.weight": (kv_rows, h),
        "self_attn.o_proj.weight": (h, q_rows),
        "post_attention_layernorm.weight": (h,),
        "mlp.gate_proj.weight": (ffn, h),
        "mlp.up_proj.weight": (ffn, h),
        "mlp.down_proj.weight": (h, ffn),
    }
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, h)
    for i in range(cfg.num_layers):
        shapes.update({f"model.layers.{i}.{k}": s for k, s in layer.items()})
    return shapes


def to_megatron(
    rule: KeyRule, tensors: list[torch.Tensor], cfg: ModelConfig, padded_vocab: int
) -> torch.Tensor:
    """Pack the HF tensors of `rule` (in `rule.hf` order) into the megatron tensor."""
    if rule.kind == "copy":
        return tensors[0]
    if rule.kind == "concat":
        return torch.cat(tensors, dim=0)
    if rule.kind == "vocab":
        weight = tensors[0]
        pad = padded_vocab - weight.shape[0]
        return torch.cat([weight, weight.new_zeros(pad, *weight.shape[1:])]) if pad else weight
    q, k, v = tensors
    ng, hd = cfg.num_query_groups, cfg.head_dim
    per_group = cfg.num_attention_heads // ng
    parts = [q.reshape(ng, per_group * hd, -1), k.reshape(ng, hd, -1), v.reshape(ng, hd, -1)]
    return torch.cat(parts, dim=1).reshape(ng * (per_group + 2) * hd, -1)


def to_hf(rule: KeyRule, tensor: torch.Tensor, cfg: ModelConfig) -> list[torch.Tensor]:
    """Unpack a megatron tensor into the HF tensors of `rule` (inverse of `to_megatron`)."""
    if rule.kind == "copy":
        return [tensor]
    if rule.kind == "concat":
        return [t.contiguous() for t in torch.chunk(tensor, len(rule.hf), dim=0)]
    if rule.kind == "vocab":
        return [tensor[: cfg.vocab_size].contiguous()]
    ng, hd = cfg.num_query_groups, cfg.head_dim
    per_group = cfg.num_attention_heads // ng
    grouped = tensor.reshape(ng, (per_group + 2) * hd, -1)
    q, k, v = torch.split(grouped, [per_group * hd, hd, hd], dim=1)
    return [t.reshape(-1, t.shape[-1]).contiguous() for t in (q, k, v)]
