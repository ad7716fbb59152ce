"""Fused application of per-token RoPE: cos/sin of float32 angles computed inside one kernel.

Megatron's unfused RoPE (`_apply_rotary_pos_emb_bshd`) runs ~8 elementwise kernels per q/k tensor and keeps
cos/sin copies alive for backward; its TE-fused kernel takes neither per-sample positions nor YaRN's mscale.
`apply_rope` does the same maths (non-interleaved halves, `out = x cos + rotate_half(x) sin`, cos/sin scaled by
mscale) in one pass:

- `triton`: a Triton kernel (CUDA only). It reads the float32 angles [s, b, d/2] (one row per token, so every
  sample has its own positions), computes cos/sin in float32 in registers and rotates in float32, writing the
  input dtype. Backward is the inverse rotation (same kernel, negated sine), so nothing but the angles is saved.
- `compile`: `torch.compile` of the eager maths below (any device with a compiler; first call compiles).
- `none`: megatron's unfused path, unchanged.
- `auto`: `none` for now (the Triton kernel has not yet run on a GPU in our tests; see docs/performance.md).

The choice is `--model.rope_fusion`, the config field `EndPromptTransformerConfig.ep_rope_fusion`. It reaches
megatron through the layer spec: the local spec's self attention is `FusedRopeSelfAttention`, which applies the
fusion to q and k and otherwise defers to megatron's SelfAttention (and so to its unfused RoPE). Nothing in
megatron is patched. The Transformer Engine spec is megatron's own and keeps megatron's unfused RoPE (there the
flag has no effect).
"""

from __future__ import annotations

import functools
import importlib.util
import logging

import torch
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import (
    _yarn_get_concentration_factor_from_config,
)
from megatron.core.transformer.attention import SelfAttention

logger = logging.getLogger(__name__)

ROPE_FUSIONS: tuple[str, ...] = ("auto", "none", "triton", "compile")
"""Values of `--model.rope_fusion`."""


def check_rope_fusion(name: str, flag: str = "--model.rope_fusion") -> str:
    """Return `name` when it is a known RoPE fusion; ValueError naming `flag` otherwise."""
    if name not in ROPE_FUSIONS:
        raise ValueError(f"{flag}: unknown RoPE fusion {name!r}; choose one of {ROPE_FUSIONS}")
    return name


@functools.cache
def triton_available() -> bool:
    """True when CUDA is present and our Triton kernel module imports (Triton with libdevice)."""
    if not torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        return False
    try:
        import megatron_endprompt.model.rope_triton  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import problem means "not available"
        logger.warning("--model.rope_fusion triton unavailable: %s", err)
        return False
    return True


def resolve_rope_fusion(name: str, device: torch.device) -> str:
    """The implementation actually used on `device`: `none`, `triton` or `compile`."""
    check_rope_fusion(name)
    if name == "auto":
        return "none"
    if name == "triton" and (device.type != "cuda" or not triton_available()):
        raise ValueError(
            f"--model.rope_fusion triton needs CUDA and Triton (tensor on {device.type}, "
            f"kernel available: {triton_available()}); use none or compile"
        )
    return name


# ---------------------------------------------------------------------------------------------- eager maths


def rope_eager(t: torch.Tensor, freqs: torch.Tensor, mscale: float = 1.0) -> torch.Tensor:
    """megatron's unfused bshd RoPE: t [s, b, h, d], freqs [s, b|1, 1, d] float32 angles (halves duplicated)."""
    cos = (torch.cos(freqs) * mscale).to(t.dtype)
    sin = (torch.sin(freqs) * mscale).to(t.dtype)
    x1, x2 = torch.chunk(t, 2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return t * cos + rotated * sin


@functools.cache
def _compiled_rope():
    return torch.compile(rope_eager, dynamic=True)


def rotate_reference(x: torch.Tensor, angles: torch.Tensor, mscale: float, sign: float) -> torch.Tensor:
    """What the Triton kernel computes, in torch: rotate halves of x [n, h, d] by sign * angles [n, d/2].

    float32 inside, result in x's dtype. sign = -1 is the inverse rotation (the backward pass).
    """
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    cos = (torch.cos(angles) * mscale)[:, None, :]
    sin = (torch.sin(angles) * mscale * sign)[:, None, :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


class _FusedRope(torch.autograd.Function):
    """Rotation by per-token angles with a pluggable kernel (Triton on CUDA; `rotate_reference` in CPU tests)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, angles: torch.Tensor, mscale: float, kernel) -> torch.Tensor:
        ctx.save_for_backward(angles)
        ctx.mscale, ctx.kernel = mscale, kernel
        s, b, h, d = t.shape
        out = kernel(t.contiguous().view(s * b, h, d), angles, mscale, 1.0)
        return out.view(s, b, h, d)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (angles,) = ctx.saved_tensors
        s, b, h, d = grad.shape
        dx = ctx.kernel(grad.contiguous().view(s * b, h, d), angles, ctx.mscale, -1.0)
        return dx.view(s, b, h, d), None, None, None


def token_angles(freqs: torch.Tensor, s: int, b: int) -> torch.Tensor:
    """[s*b, d/2] float32 angles from megatron-layout freqs [s, b|1, 1, d] (first half; the halves are equal)."""
    half = freqs.shape[-1] // 2
    return freqs[..., :half].expand(s, b, 1, half).reshape(s * b, half).float().contiguous()


def apply_rope_with_kernel(t: torch.Tensor, freqs: torch.Tensor, mscale: float, kernel) -> torch.Tensor:
    """Fused RoPE of t [s, b, h, d] with `kernel(x [n, h, d], angles [n, d/2], mscale, sign)`."""
    s, b = t.shape[0], t.shape[1]
    return _FusedRope.apply(t, token_angles(freqs, s, b), float(mscale), kernel)


def apply_rope(
    t: torch.Tensor, freqs: torch.Tensor, mscale: float = 1.0, fusion: str = "auto"
) -> torch.Tensor:
    """RoPE of t [s, b, h, d] with angles freqs [s, b|1, 1, d] (float32) by the selected implementation."""
    impl = resolve_rope_fusion(fusion, t.device)
    if impl == "triton":
        from megatron_endprompt.model.rope_triton import rotate_triton

        return apply_rope_with_kernel(t, freqs, mscale, rotate_triton)
    if impl == "compile":
        return _compiled_rope()(t, freqs, mscale)
    return rope_eager(t, freqs, mscale)


# ------------------------------------------------------------------------------------ megatron integration


class FusedRopeSelfAttention(SelfAttention):
    """megatron's SelfAttention (the local layer spec's `self_attention`), with RoPE applied by our fusion.

    When `config.ep_rope_fusion` selects a fusion for this device and the call is one we handle, `forward`
    hands megatron `rotary_pos_emb=None` and `get_query_key_value_tensors` rotates q and k right after the
    projection, with the same angles and YaRN concentration factor megatron would use. Otherwise (`auto` /
    `none`, KV-cache inference, packed sequences, interleaved or partial rotary, no-RoPE layers) it is
    megatron's SelfAttention unchanged. The fusion is read per call: the engine may set it after building.
    """

    _pending_rope: tuple[torch.Tensor, str] | None = None

    def forward(self, hidden_states, attention_mask, *args, rotary_pos_emb=None, **kwargs):
        fusion = self._fusion_for(hidden_states, rotary_pos_emb, args, kwargs)
        if fusion is None:
            return super().forward(
                hidden_states, attention_mask, *args, rotary_pos_emb=rotary_pos_emb, **kwargs
            )
        self._pending_rope = (rotary_pos_emb, fusion)
        try:
            return super().forward(hidden_states, attention_mask, *args, rotary_pos_emb=None, **kwargs)
        finally:
            self._pending_rope = None

    def _fusion_for(self, hidden_states, rotary_pos_emb, args, kwargs) -> str | None:
        """The fusion to apply in this call, or None to leave RoPE to megatron."""
        config = self.config
        fusion = config.ep_rope_fusion
        if fusion == "auto" or args or not isinstance(rotary_pos_emb, torch.Tensor):
            return None  # positional extras: not the layer's call shape, leave it all to megatron
        if resolve_rope_fusion(fusion, hidden_states.device) == "none":
            return None
        unsupported = (
            kwargs.get("inference_context") is not None
            or kwargs.get("inference_params") is not None
            or kwargs.get("packed_seq_params") is not None
            or config.rotary_interleaved
            or config.multi_latent_attention
            or config.fused_single_qkv_rope
            or bool(config.no_rope_freq)
            or rotary_pos_emb.dim() != 4
            or rotary_pos_emb.shape[-1] != self.hidden_size_per_attention_head
        )
        return None if unsupported else fusion

    def get_query_key_value_tensors(
        self, hidden_states, key_value_states=None, output_gate=False, split_qkv=True
    ):
        out = super().get_query_key_value_tensors(
            hidden_states, key_value_states, output_gate=output_gate, split_qkv=split_qkv
        )
        if self._pending_rope is None:
            return out
        freqs, fusion = self._pending_rope
        mscale = _yarn_get_concentration_factor_from_config(self.config)  # what megatron's forward passes
        query, key = (apply_rope(t, freqs, mscale, fusion) for t in out[:2])
        return (query, key, *out[2:])
