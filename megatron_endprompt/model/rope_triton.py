"""Triton kernel for per-token RoPE (CUDA only; imported lazily by `rope_fused.apply_rope`).

One program handles one token row (a (position, sample) pair) and a block of heads: it loads the row's float32
angles [d/2], computes cos/sin in float32, rotates both halves of every head in float32 and stores the input
dtype. The same kernel with `sign = -1` is the backward pass (rotation by the negative angle).
Checked against megatron's unfused RoPE on CPU under Triton's interpreter, with libdevice cos/sin stood in
(tests/integration/test_rope_triton_interpret.py), and on a GPU (tests/gpu/test_perf_knobs_gpu.py); `rotate_reference`
in rope_fused.py is the same maths in torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

try:  # Triton >= 3.0
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - older layouts
    from triton.language.extra.cuda import libdevice


@triton.jit
def _rope_rotate_kernel(
    x_ptr,
    ang_ptr,
    out_ptr,
    n_heads,
    mscale,
    sign,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    head_block = tl.program_id(1)
    offs_h = head_block * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HALF
    ang = tl.load(ang_ptr + row * HALF + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    # libdevice's cosf/sinf reduce the argument exactly, like torch.cos; tl.cos may lower to the approximate
    # PTX instruction, which is inaccurate far from zero (angles reach 65535 rad here).
    cos = libdevice.cos(ang) * mscale
    sin = libdevice.sin(ang) * mscale * sign
    base = row * n_heads * (2 * HALF) + offs_h[:, None] * (2 * HALF) + offs_d[None, :]
    mask = (offs_h[:, None] < n_heads) & mask_d[None, :]
    x1 = tl.load(x_ptr + base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + base + HALF, mask=mask, other=0.0).to(tl.float32)
    out1 = x1 * cos[None, :] - x2 * sin[None, :]
    out2 = x2 * cos[None, :] + x1 * sin[None, :]
    tl.store(out_ptr + base, out1.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + base + HALF, out2.to(out_ptr.dtype.element_ty), mask=mask)


def rotate_triton(x: torch.Tensor, angles: torch.Tensor, mscale: float, sign: float) -> torch.Tensor:
    """Rotate x [n, h, d] (contiguous, CUDA) by sign * angles [n, d/2] (float32); see `rotate_reference`."""
    n, h, d = x.shape
    half = d // 2
    if angles.shape != (n, half) or angles.dtype != torch.float32:
        raise ValueError(f"angles must be float32 [{n}, {half}], got {angles.dtype} {tuple(angles.shape)}")
    x = x.contiguous()
    angles = angles.contiguous()
    out = torch.empty_like(x)
    block_d = triton.next_power_of_2(half)
    block_h = min(triton.next_power_of_2(h), max(1, 4096 // block_d))
    grid = (n, triton.cdiv(h, block_h))
    _rope_rotate_kernel[grid](
        x, angles, out, h, float(mscale), float(sign), HALF=half, BLOCK_H=block_h, BLOCK_D=block_d
    )
    return out
