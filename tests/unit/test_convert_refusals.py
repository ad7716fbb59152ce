"""Every refusal of the converters: a ConversionError whose message names the problem, and nothing written (the
CLI's exit 2 without a traceback: tests/integration/test_convert_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_endprompt.convert import ConversionError, hf_to_megatron, megatron_to_hf
from megatron_endprompt.convert.hf_io import HFReader
from megatron_endprompt.convert.testing import save_tiny_hf_llama


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return save_tiny_hf_llama(tmp_path_factory.mktemp("hf") / "model")


def _variant(hf_dir: Path, dst: Path, *, config: dict | None = None, tensors=None) -> Path:
    """A copy of `hf_dir` with config.json keys changed and/or the tensor dict transformed."""
    dst.mkdir(parents=True)
    raw = json.loads((hf_dir / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**raw, **(config or {})}))
    weights = load_file(hf_dir / "model.safetensors")
    save_file(tensors(weights) if tensors else weights, dst / "model.safetensors")
    return dst


def _assert_refused(fn, needle: str, target: Path) -> None:
    with pytest.raises(ConversionError) as err:
        fn()
    assert needle in str(err.value), str(err.value)
    assert not target.exists()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]


def test_unsupported_architecture(hf_dir, tmp_path):
    src = _variant(hf_dir, tmp_path / "mistral", config={"architectures": ["MistralForCausalLM"]})
    out = tmp_path / "out"
    _assert_refused(lambda: hf_to_megatron(src, out), "architectures=['MistralForCausalLM']", out)


def test_dynamic_rope_is_refused(hf_dir, tmp_path):
    rope = {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}
    src = _variant(hf_dir, tmp_path / "dyn", config={"rope_parameters": rope})
    out = tmp_path / "out"
    _assert_refused(
        lambda: hf_to_megatron(src, out), "'dynamic' (dynamic NTK) is an inference-time rule", out
    )


def test_missing_tensor(hf_dir, tmp_path):
    name = "model.layers.1.mlp.up_proj.weight"
    src = _variant(hf_dir, tmp_path / "missing", tensors=lambda w: {k: v for k, v in w.items() if k != name})
    out = tmp_path / "out"
    _assert_refused(lambda: hf_to_megatron(src, out), f"missing tensor(s) ['{name}']", out)


def test_misshaped_tensor_names_both_shapes(hf_dir, tmp_path):
    name = "model.layers.0.self_attn.k_proj.weight"
    src = _variant(hf_dir, tmp_path / "bad", tensors=lambda w: {**w, name: torch.zeros(48, 64)})
    out = tmp_path / "out"
    _assert_refused(
        lambda: hf_to_megatron(src, out), f"{name} has shape [48, 64], but config.json implies [32, 64]", out
    )


def test_pickle_weights_need_allow_pickle(hf_dir, tmp_path):
    src = tmp_path / "pickled"
    src.mkdir()
    (src / "config.json").write_text((hf_dir / "config.json").read_text())
    torch.save(load_file(hf_dir / "model.safetensors"), src / "pytorch_model.bin")
    out = tmp_path / "out"
    _assert_refused(lambda: hf_to_megatron(src, out), "pytorch_model.bin", out)
    with pytest.raises(ConversionError, match="--allow-pickle"):
        hf_to_megatron(src, out)
    hf_to_megatron(src, out, allow_pickle=True)
    megatron_to_hf(out, tmp_path / "back")
    back, ref = HFReader(tmp_path / "back"), HFReader(hf_dir)
    assert back.names() == ref.names() and all(torch.equal(back.get(n), ref.get(n)) for n in ref.names())


def test_existing_output_needs_overwrite(hf_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="not empty; pass --overwrite"):
        hf_to_megatron(hf_dir, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and len(list(tmp_path.iterdir())) == 1
    hf_to_megatron(hf_dir, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "endprompt_model.json").is_file()
    hf = tmp_path / "hf_out"
    hf.mkdir()
    (hf / "x").write_text("x")
    with pytest.raises(ConversionError, match="--hf-dir: output directory .* is not empty"):
        megatron_to_hf(out, hf)
    assert [p.name for p in hf.iterdir()] == ["x"]


def test_layout_refusals(hf_dir, tmp_path):
    out = tmp_path / "out"
    _assert_refused(
        lambda: hf_to_megatron(hf_dir, out, tp=4), "--tp 4 must divide the number of query groups (2", out
    )
    _assert_refused(lambda: hf_to_megatron(hf_dir, out, pp=3), "--pp 3 exceeds the number of layers (2", out)


def test_export_refuses_a_dir_that_is_not_our_checkpoint(hf_dir, tmp_path):
    out = tmp_path / "out"
    _assert_refused(lambda: megatron_to_hf(hf_dir, out), "has no endprompt_model.json", out)


def test_unexpected_tensor_and_mixed_dtypes(hf_dir, tmp_path):
    extra = _variant(
        hf_dir,
        tmp_path / "extra",
        tensors=lambda w: {**w, "model.layers.0.self_attn.q_norm.weight": w["model.norm.weight"].clone()},
    )
    out = tmp_path / "out"
    _assert_refused(
        lambda: hf_to_megatron(extra, out),
        "unexpected tensor(s) ['model.layers.0.self_attn.q_norm.weight']",
        out,
    )
    mixed = _variant(
        hf_dir,
        tmp_path / "mixed",
        tensors=lambda w: {**w, "model.norm.weight": w["model.norm.weight"].half()},
    )
    _assert_refused(lambda: hf_to_megatron(mixed, out), "one floating-point dtype", out)


def test_export_refuses_a_config_that_does_not_match_the_checkpoint(hf_dir, tmp_path):
    hf_to_megatron(hf_dir, tmp_path / "m")
    path = tmp_path / "m" / "endprompt_model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "ffn_hidden_size": 160}))
    out = tmp_path / "out"
    _assert_refused(
        lambda: megatron_to_hf(tmp_path / "m", out),
        "linear_fc1.weight has shape [2, 352, 64], but endprompt_model.json implies [2, 320, 64]",
        out,
    )


def test_converters_refuse_multi_rank_launches(hf_dir, tmp_path, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    out = tmp_path / "out"
    _assert_refused(lambda: hf_to_megatron(hf_dir, out), "run the converter as one process", out)
    _assert_refused(lambda: megatron_to_hf(tmp_path, out), "world size is 2", out)
