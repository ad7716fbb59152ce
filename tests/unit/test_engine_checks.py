"""Input checks of the engine and the checkpoint loader that need no process group."""

from __future__ import annotations

import json

import pytest
import torch

from megatron_endprompt.model.config import RopeScaling, get_preset
from megatron_endprompt.training.checkpoint import _check_model_config, resolve_checkpoint_dir
from megatron_endprompt.training.checkpoint_io import begin_save, commit_save
from megatron_endprompt.training.config import TrainConfig
from megatron_endprompt.training.engine import check_micro_batches
from megatron_endprompt.training.engine_build import config_overrides


def _mb(b: int = 1, p: int = 16) -> dict[str, torch.Tensor]:
    z = torch.zeros(b, p, dtype=torch.long)
    return {"tokens": z, "labels": z, "loss_weights": torch.ones(b, p), "position_ids": z}


def test_micro_batches_must_share_one_shape_and_have_every_key():
    cfg = TrainConfig()
    assert check_micro_batches([_mb(2, 16), _mb(2, 16)], cfg) == (2, 16)
    with pytest.raises(ValueError, match="no micro-batches"):
        check_micro_batches([], cfg)
    with pytest.raises(ValueError, match="lacks"):
        check_micro_batches([{k: v for k, v in _mb().items() if k != "position_ids"}], cfg)
    bad = _mb()
    bad["position_ids"] = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="position_ids"):
        check_micro_batches([bad], cfg)


def test_context_parallel_needs_seq_divisible_by_2cp():
    cfg = TrainConfig()
    cfg.parallel.context_parallel = 4
    with pytest.raises(ValueError, match="--data.seq_length"):
        check_micro_batches([_mb(1, 12)], cfg)
    assert check_micro_batches([_mb(1, 16)], cfg) == (1, 16)


def test_sequence_parallel_needs_local_seq_divisible_by_tp():
    cfg = TrainConfig()
    cfg.parallel.tensor_parallel, cfg.parallel.sequence_parallel, cfg.parallel.context_parallel = 4, True, 2
    with pytest.raises(ValueError, match="tensor_parallel = 4"):
        check_micro_batches([_mb(1, 12)], cfg)
    assert check_micro_batches([_mb(1, 16)], cfg) == (1, 16)


def test_recompute_and_loss_settings_reach_the_model_builder():
    cfg = TrainConfig()
    assert config_overrides(cfg) == {"calculate_per_token_loss": True}
    cfg.recompute.granularity, cfg.recompute.method, cfg.recompute.num_layers = "full", "block", 2
    assert config_overrides(cfg)["recompute_method"] == "block"
    cfg.recompute.granularity = "selective"
    assert config_overrides(cfg)["recompute"] == "selective"


def test_architecture_must_match_but_rope_may_change(tmp_path):
    tiny = get_preset("tiny")
    (tmp_path / "endprompt_model.json").write_text(json.dumps(tiny.to_dict()))
    extended = tiny.replace(
        rope_scaling=RopeScaling(type="linear", factor=8.0), max_position_embeddings=131072
    )
    _check_model_config(extended, tmp_path)  # context extension: allowed
    with pytest.raises(ValueError, match="hidden_size"):
        _check_model_config(tiny.replace(hidden_size=128), tmp_path)


def test_resolve_accepts_checkpoint_dirs_and_save_roots(tmp_path):
    conv = tmp_path / "converted"
    conv.mkdir()
    (conv / "metadata.json").write_text("{}")
    assert resolve_checkpoint_dir(conv) == conv
    root = tmp_path / "run"
    tmp = begin_save(root, 5)
    (tmp / "metadata.json").write_text("{}")
    final = commit_save(root, 5)
    assert resolve_checkpoint_dir(root) == final
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_checkpoint_dir(tmp_path / "empty")


def test_resume_refuses_other_dtype_or_optimizer_kind(tmp_path):
    from types import SimpleNamespace

    from megatron_endprompt.training.checkpoint import FORMAT_VERSION, _check_same_optimizer_layout

    engine = SimpleNamespace(cfg=TrainConfig())
    engine.cfg.precision.dtype = "fp32"
    state = {"format_version": FORMAT_VERSION, "dtype": "bf16", "use_distributed_optimizer": False}
    with pytest.raises(ValueError, match="--precision.dtype"):
        _check_same_optimizer_layout(engine, state, tmp_path)
    state["dtype"], state["use_distributed_optimizer"] = "fp32", True
    with pytest.raises(ValueError, match="use_distributed_optimizer"):
        _check_same_optimizer_layout(engine, state, tmp_path)
    with pytest.raises(ValueError, match="format"):
        _check_same_optimizer_layout(engine, {**state, "format_version": 99}, tmp_path)
