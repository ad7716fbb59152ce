"""Which layer spec is used (Transformer Engine only when importable AND a CUDA device is present), the guard
that keeps per-sample RoPE frequencies away from megatron's fused RoPE, and the spec-portable weight loading.

The same checks against the real Transformer Engine are in tests/te (run in its venv, see docs/development.md).
"""

from __future__ import annotations

import logging

import pytest
import torch

from megatron_endprompt.model import te_choice
from megatron_endprompt.model.attention import SDPAttention
from megatron_endprompt.model.config import get_preset
from megatron_endprompt.model.gpt import build_model, to_transformer_config
from megatron_endprompt.model.portable_state import (
    CheckpointMismatchError,
    is_extra_state_key,
    load_sharded_model_state,
)
from megatron_endprompt.model.specs import layer_spec
from megatron_endprompt.parallel import initialize


@pytest.fixture(scope="module", autouse=True)
def _single_process():
    initialize(tp=1, pp=1, cp=1, seed=1234)


@pytest.fixture()
def machine(monkeypatch):
    """Set what this 'machine' has: machine(te=True, cuda=False)."""

    def set_(te: bool, cuda: bool) -> None:
        monkeypatch.setattr(te_choice, "te_installed", lambda: te)
        monkeypatch.setattr(te_choice, "cuda_present", lambda: cuda)
        te_choice._LOGGED.clear()

    return set_


def test_auto_picks_te_only_with_a_cuda_device(machine, caplog) -> None:
    caplog.set_level(logging.INFO, logger=te_choice.__name__)
    machine(te=True, cuda=False)  # a CPU login node with TE wheels
    assert te_choice.resolve_use_te(None) is False
    assert "no CUDA device" in caplog.text
    machine(te=False, cuda=True)
    assert te_choice.resolve_use_te(None) is False
    machine(te=True, cuda=True)
    assert te_choice.resolve_use_te(None) is True
    assert "layer spec: Transformer Engine" in caplog.text
    assert te_choice.resolve_use_te(False) is False


@pytest.mark.parametrize(
    ("te", "cuda", "why"), [(True, False, "no CUDA device"), (False, True, "not installed")]
)
def test_use_te_true_refused_naming_flag_and_reason(machine, te, cuda, why) -> None:
    machine(te=te, cuda=cuda)
    with pytest.raises(ValueError, match=f"--model.use_te true: .*{why}"):
        te_choice.resolve_use_te(True)


def test_layer_spec_is_local_where_te_is_installed_without_cuda(machine) -> None:
    machine(te=True, cuda=False)
    spec = layer_spec(None)
    assert spec.submodules.self_attention.submodules.core_attention is SDPAttention


def test_fused_megatron_rope_is_refused() -> None:
    """Even a config that got past megatron's own check (it needs TE >= 1.4 for the fusion) is refused."""
    cfg = get_preset("tiny")
    config = to_transformer_config(cfg, params_dtype=torch.float32)
    config.apply_rope_fusion = True
    with pytest.raises(ValueError, match="apply_rope_fusion=True: megatron's fused RoPE"):
        build_model(cfg, use_te=False, config=config)


def test_per_sample_freqs_never_reach_a_fused_kernel(monkeypatch) -> None:
    """A forward with batch-varying positions goes through megatron's unfused RoPE only."""
    from megatron.core.models.common.embeddings import rope_utils

    def refuse(*args, **kwargs):
        raise AssertionError("per-sample frequencies reached megatron's fused RoPE")

    for name in ("fused_apply_rotary_pos_emb", "fused_apply_rotary_pos_emb_thd"):
        if hasattr(rope_utils, name):
            monkeypatch.setattr(rope_utils, name, refuse)
    calls = []
    unfused = rope_utils._apply_rotary_pos_emb_bshd
    monkeypatch.setattr(
        rope_utils,
        "_apply_rotary_pos_emb_bshd",
        lambda t, freqs, *a, **k: calls.append(freqs.shape) or unfused(t, freqs, *a, **k),
    )
    cfg = get_preset("tiny")
    model = build_model(cfg, use_te=False).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    positions = torch.stack([torch.arange(16), torch.cat([torch.arange(8), torch.arange(65528, 65536)])])
    with torch.no_grad():
        model(ids, positions)
    assert calls and all(shape[1] == 2 for shape in calls), calls  # [s, b=2, 1, d]: one row per sample


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("decoder.layers.self_attention.linear_qkv._extra_state", True),
        ("decoder.final_layernorm._extra_state/shard_0_1", True),
        ("decoder.layers.0.mlp.linear_fc1._extra_state", True),
        ("decoder.layers.self_attention.linear_qkv.weight", False),
        ("decoder.layers.self_attention.linear_qkv.layer_norm_weight", False),
        ("embedding._extra_state_like.weight", False),
    ],
)
def test_extra_state_keys(key, expected) -> None:
    assert is_extra_state_key(key) is expected


def test_checkpoint_lacking_a_weight_names_the_dir(tmp_path) -> None:
    """Only TE metadata may be absent: a missing weight is an error naming the checkpoint and the key."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor

    from megatron_endprompt.convert.megatron_io import cpu_safe_checkpointing

    saved = {"w": ShardedTensor.from_rank_offsets("w", torch.ones(4))}
    with cpu_safe_checkpointing():
        dist_checkpointing.save(saved, str(tmp_path))
        wanted = {
            "w": ShardedTensor.from_rank_offsets("w", torch.zeros(4)),
            "v": ShardedTensor.from_rank_offsets("decoder.extra.weight", torch.zeros(4)),
        }
        with pytest.raises(CheckpointMismatchError, match=rf"{tmp_path}.*decoder\.extra\.weight"):
            load_sharded_model_state(wanted, tmp_path)
        state = load_sharded_model_state(
            {"w": ShardedTensor.from_rank_offsets("w", torch.zeros(4))}, tmp_path
        )
    assert torch.equal(state["w"], torch.ones(4))


def test_absent_extra_state_is_skipped(tmp_path) -> None:
    """A `_extra_state` object the checkpoint lacks (megatron's own load raises 'Missing key') is skipped."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedObject, ShardedTensor

    from megatron_endprompt.convert.megatron_io import cpu_safe_checkpointing

    key = "decoder.final_layernorm._extra_state"
    with cpu_safe_checkpointing():
        dist_checkpointing.save({"w": ShardedTensor.from_rank_offsets("w", torch.ones(4))}, str(tmp_path))
        wanted = {
            "w": ShardedTensor.from_rank_offsets("w", torch.zeros(4)),
            key: ShardedObject(key, None, (1,), (0,), replica_id=0),
        }
        state = load_sharded_model_state(wanted, tmp_path)
    assert torch.equal(state["w"], torch.ones(4)) and key not in state
