"""The Triton RoPE kernel executed on CPU by Triton's interpreter, against megatron's unfused RoPE.

The kernel runs in a subprocess (tests/fixtures/rope_triton_interpret.py) with TRITON_INTERPRET=1, so the
setting never reaches the other tests; that file documents the one stand-in (libdevice cos/sin, which the
interpreter leaves unpatched). Per-sample positions up to 65535 and YaRN's mscale; forward and backward; fp32
and bf16; head counts and head dimensions that exercise every mask and a second block of heads.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

from megatron_endprompt.model.config import RopeScaling, get_preset
from megatron_endprompt.model.rope import inv_freq_and_scaling, rope_freqs

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed (pip install triton)"
)

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "fixtures" / "rope_triton_interpret.py"
S, B = 12, 3

# name -> (heads, head_dim, dtype). The kernel handles BLOCK_H = min(next_pow2(heads), 4096 // BLOCK_D) heads
# per program and BLOCK_D = next_pow2(head_dim / 2) lanes: 5 heads mask 3 of 8 rows; head_dim 96 masks 16 of
# 64 lanes; 40 heads of 256 take two head blocks of 32 (program_id(1) = 1, 24 rows masked).
CASES = {
    "h5_d128_fp32": (5, 128, torch.float32),
    "h5_d128_bf16": (5, 128, torch.bfloat16),
    "h3_d96_fp32": (3, 96, torch.float32),
    "h3_d96_bf16": (3, 96, torch.bfloat16),
    "h40_d256_fp32": (40, 256, torch.float32),
}


def yarn_freqs(head_dim: int) -> tuple[torch.Tensor, float]:
    """Angles [S, B, 1, d] of per-sample, non-contiguous positions reaching 65535, with YaRN x8 (mscale != 1)."""
    cfg = get_preset("tiny").replace(
        kv_channels=head_dim,
        rope_theta=500000.0,
        rope_scaling=RopeScaling(type="yarn", factor=8.0, original_max_position_embeddings=8192),
    )
    inv_freq, mscale = inv_freq_and_scaling(cfg)
    g = torch.Generator().manual_seed(head_dim)
    end_prompt = torch.cat([torch.arange(S - 4), torch.arange(65532, 65536)])  # text, then a far terminal cue
    shuffled = torch.randperm(65536, generator=g)[:S]
    descending = 65535 - torch.arange(S) * 997
    positions = torch.stack([end_prompt, shuffled, descending])
    return rope_freqs(positions, inv_freq), mscale


def make_case(heads: int, head_dim: int, dtype: torch.dtype) -> dict:
    freqs, mscale = yarn_freqs(head_dim)
    g = torch.Generator().manual_seed(heads)
    # A non-contiguous view, as megatron's split of the fused QKV projection hands q/k to RoPE.
    qkv = torch.randn(S, B, heads, 3 * head_dim, generator=g)
    t = qkv[..., :head_dim].to(dtype)
    grad_out = torch.randn(S, B, heads, head_dim, generator=g).to(dtype)
    return {"t": t, "grad_out": grad_out, "freqs": freqs, "mscale": mscale}


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> tuple[dict, dict]:
    """(cases, results of the kernel under the interpreter), one subprocess for all cases."""
    folder = tmp_path_factory.mktemp("rope_triton")
    cases = {name: make_case(*spec) for name, spec in CASES.items()}
    torch.save(cases, folder / "cases.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(folder / "cases.pt"), str(folder / "results.pt")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cases, torch.load(folder / "results.pt")


def megatron_unfused(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """megatron's unfused RoPE and its input gradient, in float32 (bf16 inputs upcast exactly)."""
    t = case["t"].float().requires_grad_(True)
    out = _apply_rotary_pos_emb_bshd(t, case["freqs"], mscale=case["mscale"])
    (dt,) = torch.autograd.grad(out, t, case["grad_out"].float())
    return out.detach(), dt


@pytest.mark.parametrize("name", CASES)
def test_triton_kernel_matches_megatron_unfused(interpreted, name: str) -> None:
    cases, results = interpreted
    case, got = cases[name], results[name]
    ref_out, ref_dt = megatron_unfused(case)
    assert case["mscale"] != 1.0 and int(case["freqs"].shape[1]) == B
    assert got["out"].dtype == case["t"].dtype and got["out"].shape == case["t"].shape
    assert got["dt"].dtype == case["t"].dtype
    if case["t"].dtype == torch.float32:
        # Same float32 angles on both sides; cos/sin and the rotation differ by an ulp or two (measured: at most
        # 9.6e-7 absolute on values up to ~6).
        tol = {"rtol": 1e-6, "atol": 4e-6}
    else:
        # The kernel computes in float32 and converts once to bf16. On a GPU that conversion rounds to nearest
        # (error <= 2^-8 relative); the interpreter's float32 -> bf16 cast truncates the low mantissa bits
        # (triton/runtime/interpreter.py `_convert_float` without a rounding mode), so here the bound is one bf16
        # ulp: < 2^-7 relative.
        tol = {"rtol": 2.0**-7, "atol": 1e-5}
    torch.testing.assert_close(got["out"].float(), ref_out, **tol)
    torch.testing.assert_close(got["dt"].float(), ref_dt, **tol)
