"""`megatron_endprompt.load_model`: API defaults, dtype, any saved vocabulary padding, training save roots,
and checkpoints whose model keys carry a prefix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from megatron_endprompt import load_model
from megatron_endprompt.convert import hf_to_megatron, megatron_io
from megatron_endprompt.convert.hf_config import read_hf_config
from megatron_endprompt.convert.testing import save_tiny_hf_llama


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("load")
    hf_dir = save_tiny_hf_llama(
        root / "hf", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    )
    hf_to_megatron(hf_dir, root / "megatron")
    return hf_dir, root / "megatron"


def _ids(s: int = 20) -> torch.Tensor:
    return torch.randint(0, 300, (2, s), generator=torch.Generator().manual_seed(3))


def test_api_defaults(converted):
    hf_dir, ckpt = converted
    model = load_model(ckpt)
    assert model.config == read_hf_config(hf_dir)[0]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    ids = _ids()
    with torch.no_grad():
        default = model(ids)
        explicit = model(ids, torch.arange(20).expand(2, 20))
        expect = AutoModelForCausalLM.from_pretrained(hf_dir).eval()(ids).logits
    assert default.shape == (2, 20, 300) and default.dtype == torch.float32
    assert torch.equal(default, explicit) and (default - expect).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="max_position_embeddings=65536"):
        model(ids[:, :2], torch.tensor([[0, 65536], [0, 1]]))


def test_bfloat16_weights_give_close_float_logits(converted):
    _, ckpt = converted
    ids = _ids()
    with torch.no_grad():
        full = load_model(ckpt)(ids)
        model = load_model(ckpt, dtype=torch.bfloat16, device="cpu")
        half = model(ids)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert half.dtype == torch.float32 and (half - full).abs().max() < 0.05


def test_checkpoint_padded_for_tp2_loads_in_one_process(converted, tmp_path):
    hf_dir, ckpt = converted
    hf_to_megatron(hf_dir, tmp_path / "tp2", tp=2)
    metadata = megatron_io.checkpoint_metadata(tmp_path / "tp2")
    assert metadata["embedding.word_embeddings.weight"].global_shape == (512, 64)
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "tp2")(ids), load_model(ckpt)(ids))


def test_training_save_root_follows_latest(converted, tmp_path):
    _, ckpt = converted
    save = tmp_path / "save"
    shutil.copytree(ckpt, save / "iter_0000007")
    (save / "iter_0000007" / "checkpoint_complete").touch()
    shutil.copytree(ckpt, save / "iter_0000003")  # older; `latest` must win over directory order
    (save / "latest").write_text("iter_0000007")
    model = load_model(save)
    assert model.checkpoint_dir == save / "iter_0000007"


def test_prefixed_model_keys_are_found(converted, tmp_path):
    """A checkpoint saved as `model.sharded_state_dict(prefix="model.")` still loads."""
    hf_dir, ckpt = converted
    reference = load_model(ckpt)
    prefixed = tmp_path / "prefixed"
    prefixed.mkdir()
    megatron_io.save_dist_checkpoint(reference.model.sharded_state_dict(prefix="model."), prefixed)
    shutil.copy(ckpt / megatron_io.MODEL_JSON, prefixed)
    assert "model.embedding.word_embeddings.weight" in megatron_io.checkpoint_metadata(prefixed)
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(load_model(prefixed)(ids), reference(ids))
