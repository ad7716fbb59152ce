"""HF -> megatron (saved for TP=2 / PP=2) -> HF gives bit-identical tensors and an equivalent config.json in
both dialects; the export loads with transformers' AutoModelForCausalLM and generates."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from megatron_endprompt import load_model
from megatron_endprompt.convert import hf_to_megatron, megatron_to_hf
from megatron_endprompt.convert.hf_config import parse_hf_config
from megatron_endprompt.convert.hf_io import HFReader
from megatron_endprompt.convert.megatron_io import MODEL_JSON
from megatron_endprompt.convert.testing import save_tiny_hf_llama, write_random_hf_llama
from megatron_endprompt.model.config import get_preset

REPO = Path(__file__).resolve().parents[2]
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192, "rope_theta": 500000.0}  # fmt: skip


def _tensors(hf_dir) -> dict[str, torch.Tensor]:
    reader = HFReader(hf_dir)
    return {name: reader.get(name) for name in sorted(reader.names())}


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def _config(hf_dir) -> dict:
    return json.loads((hf_dir / "config.json").read_text())


@pytest.mark.parametrize("dialect", ["v4", "v5"])
def test_round_trip_tp2_is_bit_identical_and_loads_in_transformers(dialect, tmp_path):
    src = save_tiny_hf_llama(tmp_path / "src", rope_parameters=dict(LLAMA3), dialect=dialect)
    summary = hf_to_megatron(src, tmp_path / "megatron", tp=2)
    assert summary.padded_vocab_size == 512  # 300 padded to a multiple of 128 * TP
    megatron_to_hf(tmp_path / "megatron", tmp_path / "back")
    back = tmp_path / "back"
    _assert_identical(_tensors(src), _tensors(back))
    original, exported = _config(src), _config(back)
    assert parse_hf_config(exported) == parse_hf_config(original)
    rope_keys = ("rope_theta", "rope_scaling") if dialect == "v4" else ("rope_parameters",)
    for key in rope_keys:
        assert exported[key] == original[key]
    assert not ({"rope_parameters"} if dialect == "v4" else {"rope_theta", "rope_scaling"}) & exported.keys()
    assert (back / "generation_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(back).eval()
    out = model.generate(torch.tensor([[1, 5, 7]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)


def test_sharded_bf16_pp2_round_trip_with_dialect_switch(tmp_path):
    cfg = get_preset("tiny").replace(vocab_size=300)
    files = write_random_hf_llama(tmp_path / "src", cfg, dtype=torch.bfloat16, max_shard_bytes=40_000)
    assert len(files) > 2 and (tmp_path / "src" / "model.safetensors.index.json").is_file()
    hf_to_megatron(tmp_path / "src", tmp_path / "megatron", pp=2)
    megatron_to_hf(tmp_path / "megatron", tmp_path / "back", max_shard_bytes=40_000)
    _assert_identical(_tensors(tmp_path / "src"), _tensors(tmp_path / "back"))
    assert (tmp_path / "back" / "model.safetensors.index.json").is_file()
    assert _config(tmp_path / "back")["torch_dtype"] == "bfloat16"
    megatron_to_hf(tmp_path / "megatron", tmp_path / "v5", dialect="v5", dtype="float32")
    exported = _config(tmp_path / "v5")
    assert exported["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert exported["dtype"] == "float32" and "rope_theta" not in exported
    reference = {n: t.float() for n, t in _tensors(tmp_path / "src").items()}
    _assert_identical(reference, _tensors(tmp_path / "v5"))


def test_tied_embeddings_round_trip(tmp_path):
    src = save_tiny_hf_llama(tmp_path / "src", tie_word_embeddings=True)
    hf_to_megatron(src, tmp_path / "megatron")
    megatron_to_hf(tmp_path / "megatron", tmp_path / "back")
    back = _tensors(tmp_path / "back")
    assert "lm_head.weight" not in back
    _assert_identical({n: t for n, t in _tensors(src).items() if n != "lm_head.weight"}, back)
    ids = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        expect = AutoModelForCausalLM.from_pretrained(src).eval()(ids).logits
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()(ids).logits
        ours = load_model(tmp_path / "megatron")(ids)
    assert torch.equal(got, expect) and (ours - expect).abs().max() <= 1e-4


def test_static_ntk_exports_as_scaled_theta_with_same_logits(tmp_path):
    src = save_tiny_hf_llama(tmp_path / "src")
    hf_to_megatron(src, tmp_path / "megatron")
    # A training recipe switches the converted model to static NTK (factor 4): only the config changes.
    cfg_path = tmp_path / "megatron" / MODEL_JSON
    data = json.loads(cfg_path.read_text())
    data["rope_scaling"].update(type="ntk", factor=4.0)
    cfg_path.write_text(json.dumps(data))
    megatron_to_hf(tmp_path / "megatron", tmp_path / "ntk")
    exported = _config(tmp_path / "ntk")
    assert exported["rope_parameters"]["rope_type"] == "default"  # the source dialect (v5) is kept
    assert exported["rope_parameters"]["rope_theta"] == 10000.0 * 4.0 ** (16 / 14)
    positions = torch.cat([torch.arange(30), torch.arange(65520, 65536)])[None]
    ids = torch.randint(0, 300, (1, 46))
    with torch.no_grad():
        expect = (
            AutoModelForCausalLM.from_pretrained(tmp_path / "ntk").eval()(ids, position_ids=positions).logits
        )
        got = load_model(tmp_path / "megatron")(ids, positions)
    assert (got - expect).abs().max() <= 1e-4
    hf_to_megatron(tmp_path / "ntk", tmp_path / "again")
    assert json.loads((tmp_path / "again" / MODEL_JSON).read_text()) == data


def test_training_checkpoint_export_takes_source_details_from_a_reference(tmp_path):
    src = save_tiny_hf_llama(tmp_path / "src")  # v5 dialect, with generation_config.json
    hf_to_megatron(src, tmp_path / "converted")
    # A training save root: the iteration dir has the dist checkpoint and endprompt_model.json only.
    iter_dir = tmp_path / "save" / "iter_0000010"
    shutil.copytree(
        tmp_path / "converted", iter_dir, ignore=shutil.ignore_patterns("endprompt_source.json", "hf_*")
    )
    (iter_dir / "checkpoint_complete").touch()
    (tmp_path / "save" / "latest").write_text("iter_0000010")
    megatron_to_hf(tmp_path / "save", tmp_path / "plain")
    assert (
        "rope_theta" in _config(tmp_path / "plain")
        and not (tmp_path / "plain" / "generation_config.json").exists()
    )
    for i, reference in enumerate((tmp_path / "converted", src)):
        out = tmp_path / f"ref{i}"
        megatron_to_hf(tmp_path / "save", out, hf_reference=reference)
        assert _config(out)["rope_parameters"] == _config(src)["rope_parameters"]
        assert (out / "generation_config.json").read_text() == (src / "generation_config.json").read_text()
        _assert_identical(_tensors(src), _tensors(out))


def test_cli_main_both_directions(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("convert_cli", REPO / "tools" / "convert_checkpoint.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    src = save_tiny_hf_llama(tmp_path / "src")
    assert cli.main(["hf-to-megatron", "--hf-dir", str(src), "--megatron-dir", str(tmp_path / "m"), "--tp", "2",
                     "--no-progress"]) == 0  # fmt: skip
    assert "hf-to-megatron: wrote" in capsys.readouterr().out
    args = ["megatron-to-hf", "--megatron-dir", str(tmp_path / "m"), "--hf-dir", str(tmp_path / "out"),
            "--hf-dialect", "v4", "--dtype", "bfloat16", "--max-shard-gb", "0.0001", "--no-progress"]  # fmt: skip
    assert cli.main(args) == 0
    exported = _config(tmp_path / "out")
    assert exported["torch_dtype"] == "bfloat16" and exported["rope_theta"] == 10000.0
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    assert cli.main(args) == 2 and "pass --overwrite" in capsys.readouterr().err
    reference = {n: t.to(torch.bfloat16) for n, t in _tensors(src).items()}
    _assert_identical(reference, _tensors(tmp_path / "out"))
