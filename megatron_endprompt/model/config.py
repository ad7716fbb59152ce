"""LLaMA-family model configuration: presets and validation.

`ModelConfig` is the single description of an architecture shared by the model builder, the HF converter,
training recipes and evaluation. It speaks Hugging Face's vocabulary (the true `vocab_size`, `rope_theta`,
a rope-scaling block) so that configs round-trip through HF `config.json`; the mapping to megatron-core's
`TransformerConfig` lives in `model/gpt.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

RopeType = Literal["none", "linear", "ntk", "yarn", "llama3"]
ROPE_TYPES: tuple[str, ...] = ("none", "linear", "ntk", "yarn", "llama3")


@dataclass(frozen=True)
class RopeScaling:
    """How RoPE angles are scaled to serve positions beyond the original context window."""

    type: RopeType = "none"
    """`none`, `linear` (position interpolation), `ntk` (static base change), `yarn`, or `llama3`."""
    factor: float = 1.0
    """Scale factor s (e.g. T / C = 8.0 for 8K -> 64K); fractional values such as 2.5 are allowed."""
    original_max_position_embeddings: int | None = None
    """Context window C of the base model; required by `yarn` and `llama3`."""
    low_freq_factor: float = 1.0
    """llama3: wavelengths above C / low_freq_factor are fully interpolated."""
    high_freq_factor: float = 4.0
    """llama3: wavelengths below C / high_freq_factor are kept as they are."""
    beta_fast: float = 32.0
    """yarn: rotations-per-window above which a dimension extrapolates."""
    beta_slow: float = 1.0
    """yarn: rotations-per-window below which a dimension interpolates."""
    attention_factor: float | None = None
    """yarn: attention temperature (mscale); None means HF's default 0.1 * ln(factor) + 1."""
    mscale: float | None = None
    """yarn (DeepSeek-style): numerator mscale; only used together with `mscale_all_dim`."""
    mscale_all_dim: float | None = None
    """yarn (DeepSeek-style): denominator mscale; only used together with `mscale`."""
    truncate: bool = True
    """yarn: round the correction range to whole dimensions (HF default True)."""

    def validate(self, flag: str = "--rope-scaling") -> None:
        """Raise ValueError naming `flag` when the combination is impossible."""
        if self.type not in ROPE_TYPES:
            raise ValueError(f"{flag}: unknown rope scaling type {self.type!r}; choose one of {ROPE_TYPES}")
        if self.type != "none" and not self.factor > 0:
            raise ValueError(f"{flag}: factor must be > 0, got {self.factor}")
        if self.type in ("yarn", "llama3") and not self.original_max_position_embeddings:
            raise ValueError(
                f"{flag}: {self.type} needs original_max_position_embeddings (the base context C)"
            )
        if self.type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ValueError(f"{flag}: llama3 needs high_freq_factor > low_freq_factor")


@dataclass(frozen=True)
class ModelConfig:
    """A LLaMA-family decoder (RMSNorm, SwiGLU, GQA, no biases, RoPE)."""

    num_layers: int
    """Number of transformer blocks."""
    hidden_size: int
    """Model width d."""
    ffn_hidden_size: int
    """SwiGLU inner width (HF `intermediate_size`)."""
    num_attention_heads: int
    """Query heads."""
    num_query_groups: int
    """Key/value heads (GQA groups; equal to num_attention_heads for MHA)."""
    vocab_size: int
    """True vocabulary size as in HF; megatron pads it internally and we slice logits back."""
    max_position_embeddings: int = 4096
    """Largest position id + 1 the model is configured to serve; larger positions are refused."""
    rope_theta: float = 10000.0
    """RoPE base."""
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    """RoPE scaling (PI, NTK, YaRN, Llama-3)."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    kv_channels: int | None = None
    """Head dimension; None means hidden_size // num_attention_heads."""
    tie_word_embeddings: bool = False
    """Share the input embedding with the output head (Llama-2/3: False)."""
    init_method_std: float = 0.02
    """Std of the normal initialisation for freshly built models."""

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        """Raise ValueError naming the offending field."""
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"model.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"model.num_query_groups ({self.num_query_groups})"
            )
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise ValueError("model.hidden_size must be divisible by model.num_attention_heads")
        if self.head_dim % 2:
            raise ValueError(f"model head dimension must be even for RoPE, got {self.head_dim}")
        self.rope_scaling.validate("model.rope_scaling")

    def replace(self, **changes) -> ModelConfig:
        """A copy with some fields changed (nested `rope_scaling` may be given as a dict)."""
        if isinstance(changes.get("rope_scaling"), dict):
            changes["rope_scaling"] = RopeScaling(**changes["rope_scaling"])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        data["rope_scaling"] = RopeScaling(**(data.get("rope_scaling") or {}))
        return cls(**data)


VOCAB_PAD_MULTIPLE = 128
"""megatron pads the vocabulary to a multiple of this times TP."""


def padded_vocab_size(vocab_size: int, tp: int = 1) -> int:
    """Vocabulary padded to a multiple of 128 * TP (megatron's convention), so TP shards are equal."""
    multiple = VOCAB_PAD_MULTIPLE * tp
    return -(-vocab_size // multiple) * multiple


ARCHITECTURE_FIELDS = (
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "vocab_size",
    "kv_channels", "tie_word_embeddings",
)  # fmt: skip
"""ModelConfig fields that fix the weight shapes: a checkpoint loads only into a model that agrees on all of them
(RoPE / position fields may differ: context extension changes them on purpose)."""

PRESETS: dict[str, ModelConfig] = {
    "llama2-7b": ModelConfig(
        num_layers=32, hidden_size=4096, ffn_hidden_size=11008, num_attention_heads=32, num_query_groups=32,
        vocab_size=32000, max_position_embeddings=4096, rope_theta=10000.0, norm_eps=1e-5,
    ),
    "llama3-8b": ModelConfig(
        num_layers=32, hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32, num_query_groups=8,
        vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0, norm_eps=1e-5,
    ),
    "llama3.1-8b": ModelConfig(
        num_layers=32, hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32, num_query_groups=8,
        vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0, norm_eps=1e-5,
        rope_scaling=RopeScaling(
            type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
    ),
    # Tiny configs for tests and the CPU demo: 2 layers, width 64, GQA.
    "tiny": ModelConfig(
        num_layers=2, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4, num_query_groups=2,
        vocab_size=512, max_position_embeddings=65536, rope_theta=10000.0, norm_eps=1e-5,
    ),
    "tiny-mha": ModelConfig(
        num_layers=2, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4, num_query_groups=4,
        vocab_size=512, max_position_embeddings=65536, rope_theta=10000.0, norm_eps=1e-5,
    ),
}  # fmt: skip


def get_preset(name: str) -> ModelConfig:
    """Look up a preset by name; the error lists the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"--model: unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def small_llama_fields(
    *, num_layers: int, hidden_size: int, vocab_size: int, max_position_embeddings: int
) -> dict:
    """ModelConfig fields of a small LLaMA for CPU experiments (demo, toy reproduction), applied over `tiny`.

    Head dimension 32, GQA 2:1 (at least 2 heads), SwiGLU width 8/3 d rounded up to a multiple of 8 (LLaMA's rule).
    """
    heads = max(2, hidden_size // 32)
    return {
        "num_layers": num_layers,
        "hidden_size": hidden_size,
        "ffn_hidden_size": (hidden_size * 8 // 3 + 7) // 8 * 8,
        "num_attention_heads": heads,
        "num_query_groups": heads // 2,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings,
    }
