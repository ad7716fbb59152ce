"""Per-token rotary position embeddings (RoPE) with the scaling variants of LLaMA-family models.

Megatron-core builds RoPE angles from the sequence LENGTH only; EndPrompt needs angles from explicit,
per-sample position ids (a terminal segment placed far from the physical sequence). This module computes
the inverse frequencies exactly as Hugging Face transformers does for each scaling type, and the angles
`position * inv_freq` in float32 from integer positions, in megatron's [s, b, 1, d] layout.
"""

from __future__ import annotations

import math

import torch

from megatron_endprompt.model.config import ModelConfig


def _base_inv_freq(base: float, dim: int) -> torch.Tensor:
    """1 / base^(2i/d) for i in [0, d/2), float32, computed in HF's arithmetic order."""
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float32) / dim
    return 1.0 / (base**exponents)


def _yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def yarn_attention_factor(cfg: ModelConfig) -> float:
    """YaRN attention temperature (HF `attention_factor`): cos and sin are multiplied by it."""
    rs = cfg.rope_scaling
    if rs.attention_factor is not None:
        return float(rs.attention_factor)
    if rs.mscale and rs.mscale_all_dim:
        return float(_yarn_get_mscale(rs.factor, rs.mscale) / _yarn_get_mscale(rs.factor, rs.mscale_all_dim))
    return _yarn_get_mscale(rs.factor)


def _yarn_inv_freq(cfg: ModelConfig, dim: int) -> torch.Tensor:
    """YaRN: blend interpolated and extrapolated frequencies with a linear ramp over dimensions."""
    rs = cfg.rope_scaling
    base, factor = cfg.rope_theta, rs.factor
    original = rs.original_max_position_embeddings
    beta_fast = rs.beta_fast or 32
    beta_slow = rs.beta_slow or 1

    def correction_dim(num_rotations: float) -> float:
        # Dimension whose wavelength fits `num_rotations` times into the original window.
        return (dim * math.log(original / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp

    pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype=torch.float32) / dim)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1 = extrapolate (keep the original frequency), 0 = interpolate
    return interpolation * (1 - keep) + extrapolation * keep


def _llama3_inv_freq(cfg: ModelConfig, dim: int) -> torch.Tensor:
    """Llama 3.1: divide low frequencies by `factor`, keep high ones, smooth in between."""
    rs = cfg.rope_scaling
    inv_freq = _base_inv_freq(cfg.rope_theta, dim)
    old_len = rs.original_max_position_embeddings
    low_freq_wavelen = old_len / rs.low_freq_factor
    high_freq_wavelen = old_len / rs.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rs.factor, inv_freq)
    smooth = (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def inv_freq_and_scaling(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (float32, [head_dim/2]) and the cos/sin scaling (YaRN attention factor, else 1).

    Matches transformers' `ROPE_INIT_FUNCTIONS` for none/linear/yarn/llama3. `ntk` is the static NTK-aware
    base change base' = base * factor^(d/(d-2)) (HF's `dynamic` applies it only past the original window).
    """
    cfg.rope_scaling.validate("model.rope_scaling")
    dim, kind, factor = cfg.head_dim, cfg.rope_scaling.type, cfg.rope_scaling.factor
    if kind == "none":
        return _base_inv_freq(cfg.rope_theta, dim), 1.0
    if kind == "linear":
        return _base_inv_freq(cfg.rope_theta, dim) / factor, 1.0
    if kind == "ntk":
        return _base_inv_freq(cfg.rope_theta * factor ** (dim / (dim - 2)), dim), 1.0
    if kind == "yarn":
        return _yarn_inv_freq(cfg, dim), yarn_attention_factor(cfg)
    if kind == "llama3":
        return _llama3_inv_freq(cfg, dim), 1.0
    raise ValueError(f"model.rope_scaling.type: unsupported {kind!r}")


# Name used in docs/architecture.md; same function.
inv_freq_and_mscale = inv_freq_and_scaling


def check_positions(position_ids: torch.Tensor, max_position_embeddings: int) -> None:
    """Raise ValueError when a position id is negative or >= max_position_embeddings."""
    if position_ids.numel() == 0:
        return
    lo, hi = torch.stack([position_ids.min(), position_ids.max()]).tolist()  # one device sync
    if lo < 0 or hi >= max_position_embeddings:
        raise ValueError(
            f"position ids must lie in [0, model.max_position_embeddings={max_position_embeddings}); "
            f"got min {lo}, max {hi}. Raise model.max_position_embeddings (and the rope scaling) "
            f"or shorten the target window."
        )


def rope_freqs(
    position_ids: torch.Tensor, inv_freq: torch.Tensor, max_position_embeddings: int | None = None
) -> torch.Tensor:
    """RoPE angles [s, b, 1, head_dim] (float32) for integer `position_ids` [b, s].

    Angles are position * inv_freq in float32 (one rounding, as HF's outer product), duplicated over
    both halves of the head dimension (non-interleaved RoPE). Megatron's unfused RoPE broadcasts this
    shape against q/k [s, b, h, d], so every sample gets its own positions.
    """
    if position_ids.dim() != 2:
        raise ValueError(f"position_ids must be [batch, seq], got shape {tuple(position_ids.shape)}")
    if position_ids.dtype.is_floating_point:
        raise ValueError("position_ids must be an integer tensor")
    if max_position_embeddings is not None:
        check_positions(position_ids, max_position_embeddings)
    inv_freq = inv_freq.to(device=position_ids.device, dtype=torch.float32)
    pos = position_ids.t().to(torch.float32)  # [s, b]
    freqs = pos[:, :, None] * inv_freq[None, None, :]  # [s, b, d/2]
    return torch.cat((freqs, freqs), dim=-1).unsqueeze(2)  # [s, b, 1, d]
