"""A plain-PyTorch LLaMA decoder, written from the architecture description, for side-by-side GPU timing.

It is the yardstick of `benchmarks/train_throughput.py`: what a careful single-file implementation gets from
PyTorch alone (SDPA attention with GQA, RMSNorm, SwiGLU, RoPE angles in float32 from explicit position ids,
bf16 weights, fused AdamW; `chunked_loss` for 128K-vocabulary losses over 64K tokens), so that our
megatron-core model can be judged against it. Parameter names follow Hugging Face's `LlamaForCausalLM`, so an
HF state dict loads with `load_state_dict` and `tests/unit/test_reference_llama.py` can check the logits
against transformers.

Configured by our `ModelConfig`; RoPE scaling types `none`, `linear` (PI) and `llama3` are supported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from megatron_endprompt.model.config import ModelConfig

# `enable_gqa` arrived in torch 2.5; older versions need explicit K/V repetition.
_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies [head_dim/2] in float32 after the configured scaling (PI included)."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    rs = cfg.rope_scaling
    if rs.type in ("none", "linear"):
        pass
    elif rs.type == "llama3":
        inv_freq = _llama3_inv_freq(
            inv_freq, rs.factor, rs.low_freq_factor, rs.high_freq_factor, rs.original_max_position_embeddings
        )
    else:
        raise ValueError(
            f"reference model: rope scaling {rs.type!r} is not implemented; use none, linear or llama3"
        )
    if rs.type == "linear":
        inv_freq = inv_freq / rs.factor  # PI: angle(pos / s) == (pos) * (inv_freq / s)
    return inv_freq.float()


def _llama3_inv_freq(
    inv_freq: torch.Tensor, factor: float, low: float, high: float, orig: int
) -> torch.Tensor:
    """Llama-3 rule: keep short wavelengths, divide long ones by `factor`, blend linearly in between."""
    wavelen = 2 * math.pi / inv_freq
    low_wavelen, high_wavelen = orig / low, orig / high
    smooth = (orig / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    middle = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    return torch.where(middle, blended, out)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 and cast back."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    """Causal GQA self-attention through `scaled_dot_product_attention` (flash / cuDNN / math backends)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.h, self.kv, self.d = cfg.num_attention_heads, cfg.num_query_groups, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.h * self.d, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.kv * self.d, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.kv * self.d, bias=False)
        self.o_proj = nn.Linear(self.h * self.d, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.h, self.d).transpose(1, 2)  # (B, H, S, D)
        k = self.k_proj(x).view(b, s, self.kv, self.d).transpose(1, 2)  # (B, KV, S, D)
        v = self.v_proj(x).view(b, s, self.kv, self.d).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        kwargs = {}
        if self.kv != self.h and _HAS_GQA:
            kwargs["enable_gqa"] = True  # the kernel shares K/V across query groups: no copy
        elif self.kv != self.h:
            k = k.repeat_interleave(self.h // self.kv, dim=1)
            v = v.repeat_interleave(self.h // self.kv, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, **kwargs)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.h * self.d))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaBody(nn.Module):
    """Embedding, decoder layers, final norm (HF's `LlamaModel` naming)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)


class ReferenceLlama(nn.Module):
    """`forward(input_ids [b,s], position_ids [b,s]) -> logits [b,s,vocab]` in the parameters' dtype."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.model = LlamaBody(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self.apply(self._init_weights)

    def _apply(self, fn, recurse: bool = True):
        """Move / cast as `nn.Module` does, then restore float32 `inv_freq` on its new device.

        `.to(torch.bfloat16)` casts floating buffers too, and bf16 frequencies put the angle at position 65535
        ~100 rad off; recomputing (rather than casting back) recovers the exact float32 values.
        """
        super()._apply(fn, recurse)
        self.inv_freq = rope_inv_freq(self.config).to(self.inv_freq.device)
        return self

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_method_std)

    def rope(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [b, 1, s, d] from integer positions; angles in float32 (bf16 angles are wrong at 64K)."""
        if int(position_ids.max()) >= self.config.max_position_embeddings:
            raise ValueError(
                f"position id {int(position_ids.max())} >= max_position_embeddings "
                f"{self.config.max_position_embeddings}"
            )
        angles = position_ids.float()[..., None] * self.inv_freq  # (B, S, D/2), float32 (see _apply)
        emb = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, S, D)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def hidden_states(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The final-norm output [b, s, hidden]: everything but the LM head."""
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.rope(position_ids, x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.model.norm(x)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.lm_head(self.hidden_states(input_ids, position_ids))

    def chunked_loss(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        """Mean next-token cross entropy without the full [tokens, vocab] logits (what a careful PyTorch
        implementation does at 64K tokens x 128K vocabulary, where logits + CE alone need ~50 GB).

        Each chunk's LM head + float32 CE runs under activation checkpointing: forward keeps no logits, and
        backward recomputes one chunk's logits at a time.
        """
        h = self.hidden_states(input_ids, position_ids).flatten(0, 1)  # (B*S, H)
        flat = labels.flatten()
        total = h.new_zeros((), dtype=torch.float32)
        for start in range(0, h.shape[0], chunk):
            total = total + checkpoint(
                _chunk_ce_sum, h[start : start + chunk], self.lm_head.weight, flat[start : start + chunk],
                use_reentrant=False,
            )  # fmt: skip
        return total / flat.numel()


def _chunk_ce_sum(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(h, weight).float(), labels, reduction="sum")


def hf_config_dict(cfg: ModelConfig) -> dict:
    """The matching HF `LlamaConfig` keyword arguments (for tests and for loading HF weights)."""
    rs = cfg.rope_scaling
    rope_scaling = None
    if rs.type == "linear":
        rope_scaling = {"rope_type": "linear", "factor": rs.factor}
    elif rs.type == "llama3":
        rope_scaling = {
            "rope_type": "llama3",
            "factor": rs.factor,
            "low_freq_factor": rs.low_freq_factor,
            "high_freq_factor": rs.high_freq_factor,
            "original_max_position_embeddings": rs.original_max_position_embeddings,
        }
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_query_groups,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
    }
