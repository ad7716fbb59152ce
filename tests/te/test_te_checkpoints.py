"""Checkpoints across layer specs with the REAL Transformer Engine (run in its venv: tools/te_cpu_venv.sh).

- A checkpoint converted from HF (local spec, no `_extra_state`) loads under the TE spec as
  `--checkpoint.init_from` does, at TP/PP (1, 1), (2, 1), (1, 2) over gloo: every TE parameter equals its
  local-spec counterpart exactly, the fused layernorm weights equal the HF norms.
- A checkpoint saved by a TE-spec engine (with TE's `_extra_state`) exports with `megatron-to-hf` to weights
  equal to the TE model's, unpacked by megatron's documented fused layouts (no converter code in the check);
  it loads with `load_model` on the local spec (logits equal transformers' on the export) and evaluates.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip(
    "transformer_engine.pytorch",
    reason="Transformer Engine is not installed (bash tools/te_cpu_venv.sh builds a venv with it)",
)

from megatron_endprompt.model.config import get_preset  # noqa: E402
from tests.distributed._launch import run_two_ranks  # noqa: E402

pytestmark = [pytest.mark.te, pytest.mark.distributed]

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_te_checkpoint_worker.py")
LAYOUTS = ("tp1pp1", "tp2", "pp2")


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def te_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    from megatron_endprompt.convert.testing import write_random_hf_llama

    root = tmp_path_factory.mktemp("te_ckpt")
    write_random_hf_llama(root / "hf", get_preset("tiny"), seed=3)
    _cli("tools/convert_checkpoint.py", "hf-to-megatron", "--hf-dir", str(root / "hf"),
         "--megatron-dir", str(root / "converted"))  # fmt: skip
    (root / "out").mkdir()
    (root / "work").mkdir()
    ranks = run_two_ranks(WORKER, root / "out", 900, root / "converted", root / "work", root / "hf")
    return root, ranks


@pytest.mark.parametrize("layout", LAYOUTS)
def test_converted_checkpoint_loads_under_te_spec(te_run, layout) -> None:
    _, ranks = te_run
    for rank, res in enumerate(ranks):
        got = res[layout]
        assert got["te_modules"] > 0, f"rank {rank}: no Transformer Engine module: not the TE spec"
        assert got["extra_state_keys"] > 0, f"rank {rank}: the TE model requests no _extra_state"
        assert got["mismatched"] == [], (
            f"rank {rank}: TE parameters unlike the local spec's: {got['mismatched']}"
        )
        assert got["compared"] == got["local_params"], got
        assert got["norms_vs_hf"] == [], f"rank {rank}: fused norm weights unlike HF: {got['norms_vs_hf']}"


def _fused_to_hf(te: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The TE model's parameters under HF names, split by megatron's fused layouts: linear_qkv rows are
    per query group [q heads of the group, k, v]; linear_fc1 rows are [gate; up]."""
    cfg = get_preset("tiny")
    heads, groups = cfg.num_attention_heads, cfg.num_query_groups
    head_dim, per_group = cfg.hidden_size // heads, heads // groups
    out = {
        "model.embed_tokens.weight": te["embedding.word_embeddings.weight"][: cfg.vocab_size],
        "lm_head.weight": te["output_layer.weight"][: cfg.vocab_size],
        "model.norm.weight": te["decoder.final_layernorm.weight"],
    }
    for i in range(cfg.num_layers):
        m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        qkv = te[m + "self_attention.linear_qkv.weight"].view(groups, per_group + 2, head_dim, -1)
        gate, up = te[m + "mlp.linear_fc1.weight"].chunk(2)
        out.update({
            h + "self_attn.q_proj.weight": qkv[:, :per_group].reshape(heads * head_dim, -1),
            h + "self_attn.k_proj.weight": qkv[:, per_group].reshape(groups * head_dim, -1),
            h + "self_attn.v_proj.weight": qkv[:, per_group + 1].reshape(groups * head_dim, -1),
            h + "self_attn.o_proj.weight": te[m + "self_attention.linear_proj.weight"],
            h + "mlp.gate_proj.weight": gate, h + "mlp.up_proj.weight": up,
            h + "mlp.down_proj.weight": te[m + "mlp.linear_fc2.weight"],
            h + "input_layernorm.weight": te[m + "self_attention.linear_qkv.layer_norm_weight"],
            h + "post_attention_layernorm.weight": te[m + "mlp.linear_fc1.layer_norm_weight"],
        })  # fmt: skip
    return out


@pytest.fixture(scope="module")
def te_export(te_run) -> tuple[Path, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    root, _ = te_run
    _cli("tools/convert_checkpoint.py", "megatron-to-hf", "--megatron-dir", str(root / "work" / "te_run"),
         "--hf-dir", str(root / "export"))  # fmt: skip
    return root / "export", load_file(str(root / "work" / "te_params.safetensors"))


def test_te_checkpoint_exports_to_hf_exactly(te_export) -> None:
    from safetensors.torch import load_file

    export_dir, te_params = te_export
    exported = {}
    for file in sorted(export_dir.glob("*.safetensors")):
        exported.update(load_file(str(file)))
    expected = _fused_to_hf(te_params)
    assert set(exported) == set(expected)
    unequal = [k for k in expected if not torch.equal(exported[k], expected[k].to(exported[k].dtype))]
    assert unequal == [], f"exported weights differ from the TE model's: {unequal}"


def test_te_checkpoint_loads_on_local_spec_and_evaluates(te_run, te_export, tmp_path) -> None:
    from transformers import LlamaForCausalLM

    from megatron_endprompt import load_model
    from megatron_endprompt.data.tokenizers import train_sentencepiece

    root, _ = te_run
    export_dir, _ = te_export
    model = load_model(root / "work" / "te_run")
    hf = LlamaForCausalLM.from_pretrained(export_dir, torch_dtype=torch.float32).eval()
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    positions = torch.stack([torch.arange(24), torch.cat([torch.arange(16), torch.arange(65528, 65536)])])
    with torch.no_grad():
        ours, ref = model(ids, position_ids=positions), hf(ids, position_ids=positions).logits
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)

    sp = train_sentencepiece((f"story number {i} about the cat and the key {i * 7}" for i in range(400)),
                             tmp_path / "sp", vocab_size=300)  # fmt: skip
    _cli("tools/eval_long_context.py", "--checkpoint", str(root / "work" / "te_run"), "--tokenizer", str(sp),
         "--tasks", "passkey", "--lengths", "320", "--samples", "2", "--out", str(tmp_path / "eval"),
         "--no-progress")  # fmt: skip
    assert any((tmp_path / "eval").iterdir()), "the evaluation wrote nothing"
