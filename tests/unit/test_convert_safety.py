"""Converter safety: --overwrite never deletes an input, weight files stay inside --hf-dir, an index cannot
smuggle in pickles, and rope-scaling keys are checked (issue 17). The CLI's exit 2:
tests/integration/test_convert_cli.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from megatron_endprompt.convert import ConversionError, hf_to_megatron, megatron_to_hf
from megatron_endprompt.convert.hf_config import parse_hf_config
from megatron_endprompt.convert.hf_io import SAFETENSORS_INDEX, HFReader
from megatron_endprompt.convert.testing import save_tiny_hf_llama


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return save_tiny_hf_llama(tmp_path_factory.mktemp("hf") / "model")


@pytest.fixture(scope="module")
def megatron_dir(hf_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mg") / "ckpt"
    hf_to_megatron(hf_dir, out)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --overwrite and overlapping directories -------------------------------------------------------------------


def test_overwrite_refuses_output_equal_to_input(hf_dir, tmp_path):
    src = _copy(hf_dir, tmp_path / "model")
    before = _listing(src)
    with pytest.raises(ConversionError, match="--megatron-dir .* is the same directory as --hf-dir"):
        hf_to_megatron(src, src, overwrite=True)
    assert _listing(src) == before


def test_overwrite_refuses_output_inside_input(hf_dir, tmp_path):
    src = _copy(hf_dir, tmp_path / "model")
    before = _listing(src)
    with pytest.raises(ConversionError, match="--megatron-dir .* lies inside --hf-dir"):
        hf_to_megatron(src, src / "megatron", overwrite=True)
    assert _listing(src) == before


def test_overwrite_refuses_input_inside_output(hf_dir, tmp_path):
    src = _copy(hf_dir, tmp_path / "work" / "model")
    before = _listing(tmp_path / "work")
    with pytest.raises(ConversionError, match="--megatron-dir .* contains --hf-dir"):
        hf_to_megatron(src, tmp_path / "work", overwrite=True)
    assert _listing(tmp_path / "work") == before


def test_overwrite_refuses_output_that_is_a_symlink_to_the_input(hf_dir, tmp_path):
    src = _copy(hf_dir, tmp_path / "model")
    (tmp_path / "alias").symlink_to(src, target_is_directory=True)
    before = _listing(src)
    with pytest.raises(ConversionError, match="is the same directory as --hf-dir"):
        hf_to_megatron(src, tmp_path / "alias", overwrite=True)
    assert _listing(src) == before


def test_export_overwrite_refuses_overlap_with_megatron_dir_and_reference(megatron_dir, hf_dir, tmp_path):
    ckpt = _copy(megatron_dir, tmp_path / "run" / "ckpt")
    before = _listing(tmp_path / "run")
    for out, needle in (
        (ckpt, "--hf-dir .* is the same directory as --megatron-dir"),
        (ckpt / "hf", "--hf-dir .* lies inside --megatron-dir"),
        (tmp_path / "run", "--hf-dir .* contains --megatron-dir"),
    ):
        with pytest.raises(ConversionError, match=needle):
            megatron_to_hf(ckpt, out, overwrite=True)
    assert _listing(tmp_path / "run") == before
    ref = _copy(hf_dir, tmp_path / "ref")
    with pytest.raises(ConversionError, match="--hf-dir .* is the same directory as --hf-reference"):
        megatron_to_hf(ckpt, ref, overwrite=True, hf_reference=ref)
    assert (ref / "model.safetensors").is_file()


def test_overwrite_of_an_unrelated_dir_still_works(hf_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    hf_to_megatron(hf_dir, out, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "endprompt_model.json").is_file()


# model.safetensors.index.json entries ----------------------------------------------------------------------


def _indexed(hf_dir: Path, dst: Path, fname: str) -> Path:
    """A copy of `hf_dir` whose index maps every tensor to `fname` (the weights file itself is left in place)."""
    _copy(hf_dir, dst)
    names = load_file(hf_dir / "model.safetensors").keys()
    (dst / SAFETENSORS_INDEX).write_text(json.dumps({"weight_map": dict.fromkeys(names, fname)}))
    return dst


def test_index_entry_with_path_traversal_is_refused(hf_dir, tmp_path):
    shutil.copy(hf_dir / "model.safetensors", tmp_path / "outside.safetensors")
    src = _indexed(hf_dir, tmp_path / "model", "../outside.safetensors")
    with pytest.raises(
        ConversionError, match="'../outside.safetensors' is an absolute path or contains '..'"
    ):
        HFReader(src)
    with pytest.raises(ConversionError, match="contains '..'"):
        hf_to_megatron(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_index_entry_with_absolute_path_is_refused(hf_dir, tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(hf_dir / "model.safetensors", outside)
    src = _indexed(hf_dir, tmp_path / "model", str(outside))
    with pytest.raises(ConversionError, match="is an absolute path"):
        HFReader(src)


def test_index_entry_symlink_escaping_hf_dir_is_refused(hf_dir, tmp_path):
    outside = tmp_path / "elsewhere" / "weights.safetensors"
    outside.parent.mkdir()
    shutil.copy(hf_dir / "model.safetensors", outside)
    src = _indexed(hf_dir, tmp_path / "model", "link.safetensors")
    (src / "link.safetensors").symlink_to(outside)
    with pytest.raises(ConversionError, match=r"'link.safetensors' is a symlink to .*elsewhere.*, outside"):
        HFReader(src)
    # The same escape without an index (a plain *.safetensors symlink) is refused too.
    plain = _copy(hf_dir, tmp_path / "plain")
    (plain / "model.safetensors").unlink()
    (plain / "model.safetensors").symlink_to(outside)
    with pytest.raises(ConversionError, match="is a symlink to"):
        HFReader(plain)


def test_hub_cache_snapshot_symlinks_into_blobs_are_followed(hf_dir, tmp_path):
    """The Hugging Face hub cache layout (snapshots/<rev>/file -> ../../blobs/<hash>) must keep working."""
    blobs, snap = tmp_path / "models--x" / "blobs", tmp_path / "models--x" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in hf_dir.iterdir():
        shutil.copy(f, blobs / f"hash-{f.name}")
        (snap / f.name).symlink_to(Path("../../blobs") / f"hash-{f.name}")
    reader = HFReader(snap)
    assert reader.names() == HFReader(hf_dir).names()


def test_index_entry_pointing_to_bin_needs_allow_pickle(hf_dir, tmp_path):
    src = _indexed(hf_dir, tmp_path / "model", "pytorch_model.bin")
    torch.save(load_file(hf_dir / "model.safetensors"), src / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="'pytorch_model.bin' is pickle weights.*--allow-pickle"):
        HFReader(src)
    with pytest.raises(ConversionError, match="--allow-pickle"):
        hf_to_megatron(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    reader, ref = HFReader(src, allow_pickle=True), HFReader(hf_dir)
    assert all(torch.equal(reader.get(n), ref.get(n)) for n in ref.names())


def test_index_entry_naming_a_missing_file_is_refused(hf_dir, tmp_path):
    src = _indexed(hf_dir, tmp_path / "model", "model-00001-of-00002.safetensors")
    with pytest.raises(ConversionError, match="'model-00001-of-00002.safetensors' does not exist"):
        HFReader(src)


def test_malformed_index_is_refused_naming_the_file(hf_dir, tmp_path):
    src = _copy(hf_dir, tmp_path / "model")
    (src / SAFETENSORS_INDEX).write_text('{"metadata": {}}')
    with pytest.raises(ConversionError, match=f"{SAFETENSORS_INDEX} is not a valid index"):
        HFReader(src)


# rope_scaling / rope_parameters keys ----------------------------------------------------------------------

BASE = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300, "max_position_embeddings": 4096,
}  # fmt: skip


def test_misspelt_rope_type_key_is_named_not_silently_default():
    raw = {**BASE, "rope_scaling": {"rope_tpye": "linear", "factor": 4.0}}
    with pytest.raises(ConversionError, match=r"rope_scaling: unknown key\(s\) \['factor', 'rope_tpye'\]"):
        parse_hf_config(raw)


def test_misspelt_rope_parameter_is_named():
    raw = {
        **BASE,
        "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "beta_fsat": 8.0, "rope_theta": 1e4},
    }
    with pytest.raises(ConversionError, match=r"rope_parameters: unknown key\(s\) \['beta_fsat'\] .*'yarn'"):
        parse_hf_config(raw)
    raw = {**BASE, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factr": 2.0}}
    with pytest.raises(ConversionError, match=r"\['low_freq_factr'\]"):
        parse_hf_config(raw)


def test_linear_scaling_without_factor_names_the_key():
    for raw in (
        {**BASE, "rope_scaling": {"rope_type": "linear"}},
        {**BASE, "rope_scaling": {"type": "linear", "factor": None}},
        {**BASE, "rope_parameters": {"rope_type": "linear", "rope_theta": 1e4}},
    ):
        with pytest.raises(ConversionError, match=r"rope type 'linear' needs key\(s\) \['factor'\]"):
            parse_hf_config(raw)
    with pytest.raises(ConversionError, match=r"rope type 'llama3' needs key\(s\) \['factor'\]"):
        parse_hf_config({**BASE, "rope_scaling": {"rope_type": "llama3", "low_freq_factor": 1.0}})


def test_partial_rotary_factor_inside_the_rope_block_is_checked():
    ok = {
        **BASE,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 1.0},
    }
    assert parse_hf_config(ok)[0].rope_scaling.type == "none"
    bad = {
        **BASE,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5},
    }
    with pytest.raises(ConversionError, match="partial_rotary_factor=0.5 is not supported"):
        parse_hf_config(bad)


def test_transformers_written_rope_blocks_still_parse():
    """Every rope block transformers itself writes for a LlamaConfig passes the key check."""
    from transformers import LlamaConfig

    for rope in (
        {"rope_type": "default", "rope_theta": 1e4},
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024, "rope_theta": 1e4},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 1024, "rope_theta": 5e5},
    ):  # fmt: skip
        cfg = LlamaConfig(
            **{k: v for k, v in BASE.items() if k != "architectures"}, rope_parameters=dict(rope)
        )
        parsed, _ = parse_hf_config({**cfg.to_dict(), "architectures": ["LlamaForCausalLM"]})
        assert parsed.rope_scaling.type == {"default": "none"}.get(rope["rope_type"], rope["rope_type"])
