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

The choice is `--model.rope_fusion`, stored on the TransformerConfig as `ep_rope_fusion`; `install()` reroutes
megatron's `apply_rotary_pos_emb` (called by its attention) through `dispatch`, which defers to megatron's own
function unless a fusion is selected and the call is one we handle (bshd layout, full rotary dimension, not
interleaved, no multi-latent attention).
"""

from __future__ import annotations

import functools
import importlib.util
import logging

import torch

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


def _handles(t: torch.Tensor, freqs: torch.Tensor, config, cu_seqlens) -> bool:
    return (
        cu_seqlens is None
        and not getattr(config, "rotary_interleaved", False)
        and not getattr(config, "multi_latent_attention", False)
        and t.dim() == 4
        and freqs.dim() == 4
        and freqs.shape[-1] == t.shape[-1]
    )


def make_dispatch(original):
    """megatron-compatible `apply_rotary_pos_emb` that uses our fusion when the config selects one."""

    @functools.wraps(original)
    def dispatch(t, freqs, config, cu_seqlens=None, mscale=1.0, cp_group=None):
        fusion = config.ep_rope_fusion
        if (
            fusion != "auto"
            and resolve_rope_fusion(fusion, t.device) != "none"
            and _handles(t, freqs, config, cu_seqlens)
        ):
            return apply_rope(t, freqs, mscale, fusion)
        return original(t, freqs, config=config, cu_seqlens=cu_seqlens, mscale=mscale, cp_group=cp_group)

    dispatch._ep_original = original
    return dispatch


def install() -> None:
    """Route megatron attention's RoPE calls through `dispatch` (idempotent; a no-op unless a fusion is set)."""
    from megatron.core.transformer import attention as mcore_attention

    current = mcore_attention.apply_rotary_pos_emb
    if getattr(current, "_ep_original", None) is None:
        mcore_attention.apply_rotary_pos_emb = make_dispatch(current)
