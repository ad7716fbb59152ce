"""Constructing real Transformer Engine (TE) modules on a machine without CUDA, for the `te` test group.

TE's base module refuses to construct without CUDA (`TransformerEngineBaseModule.__init__` checks
`torch.cuda.is_available()`), although with `device="cpu"` (megatron passes it under
`use_cpu_initialization`, which our TransformerConfig sets without CUDA) nothing else in construction needs a
GPU. `te_on_cpu()` makes exactly that check pass, inside that constructor only, and makes the project's device
check (`te_choice.cuda_present`) answer yes so that `use_te=True` is accepted. State dicts and sharded state
dicts are then TE's real ones (`_extra_state` objects, fused layernorm weights). Forward and backward need
CUDA kernels and are left to tests/gpu.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from unittest import mock

import torch  # before TE: torch loads the CUDA libraries TE's core library links against

NORM_NAMES = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}
"""TE's fused layernorm weights -> the local spec's norm modules (same tensors, same checkpoint keys)."""


@contextlib.contextmanager
def te_on_cpu() -> Iterator[None]:
    """TE modules construct on CPU and `--model.use_te true` is accepted, for the duration."""
    from transformer_engine.pytorch.module import base

    from megatron_endprompt.model import te_choice

    original = base.TransformerEngineBaseModule.__init__

    @functools.wraps(original)
    def init(self, *args, **kwargs):
        with mock.patch.object(torch.cuda, "is_available", lambda: True):
            original(self, *args, **kwargs)

    with (
        mock.patch.object(base.TransformerEngineBaseModule, "__init__", init),
        mock.patch.object(te_choice, "cuda_present", lambda: True),
    ):
        yield


def local_name(te_name: str) -> str:
    """The local-spec parameter name of a TE-spec parameter."""
    for te_suffix, local_suffix in NORM_NAMES.items():
        if te_name.endswith(te_suffix):
            return te_name[: -len(te_suffix)] + local_suffix
    return te_name


def compare_parameters(te_model: torch.nn.Module, local_model: torch.nn.Module) -> dict:
    """Every TE parameter against the local model's (exact); returns counts and mismatching names."""
    local = dict(local_model.named_parameters())
    compared, mismatched = 0, []
    for name, param in te_model.named_parameters():
        other = local.get(local_name(name))
        if other is None or other.shape != param.shape or not torch.equal(other.detach(), param.detach()):
            mismatched.append(name)
        compared += 1
    return {"compared": compared, "local_params": len(local), "mismatched": mismatched}
