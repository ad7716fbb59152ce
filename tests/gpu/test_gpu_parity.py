"""On CUDA: our model (HF weights converted, loaded with `load_model`) matches HF LlamaForCausalLM in bf16,
with EndPrompt positions reaching 64K, under every SDPA backend; the benchmark's reference model matches too.

bf16 parity is judged against an fp32 HF run: our bf16 error must be of the same size as HF's own bf16 error
(two bf16 implementations never agree bitwise; both must be as close to the fp32 truth as bf16 allows).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

transformers = pytest.importorskip("transformers")

from benchmarks.reference_llama import ReferenceLlama, hf_config_dict  # noqa: E402
from megatron_endprompt import positions  # noqa: E402
from megatron_endprompt.model.config import RopeScaling, get_preset  # noqa: E402

T = 65536
# Llama-3-like small model: GQA, llama3 rope scaling from an 8K window, head_dim 128 like the real thing.
CFG = get_preset("llama3-8b").replace(
    num_layers=2, hidden_size=512, ffn_hidden_size=1408, num_attention_heads=4, num_query_groups=2,
    vocab_size=4096, max_position_embeddings=T,
    rope_scaling=RopeScaling(type="llama3", factor=8.0, original_max_position_embeddings=8192),
)  # fmt: skip


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config_dict(CFG)))
    out = tmp_path_factory.mktemp("hf")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def ours(hf_dir: Path, tmp_path_factory):
    from megatron_endprompt import load_model
    from megatron_endprompt.convert import hf_to_megatron

    mdir = tmp_path_factory.mktemp("mcore") / "ckpt"
    hf_to_megatron(hf_dir, mdir)
    return load_model(mdir, device="cuda", dtype=torch.bfloat16)


def _batch(seq: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, CFG.vocab_size, (2, seq), generator=g)
    ep = positions.position_ids(positions.endprompt(seq, T, 16))
    contiguous = positions.position_ids(positions.contiguous(seq))
    pos = torch.stack([torch.from_numpy(ep), torch.from_numpy(contiguous)])
    return ids.cuda(), pos.cuda()


def _hf_logits(hf_dir: Path, dtype: torch.dtype, ids, pos) -> torch.Tensor:
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir, torch_dtype=dtype, attn_implementation="sdpa")
    with torch.no_grad():
        return hf.cuda().eval()(input_ids=ids, position_ids=pos).logits.float()


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm())


@pytest.mark.parametrize("backend", ["default", "cudnn", "flash", "math"])
def test_bf16_logits_match_hf(hf_dir: Path, ours, backend: str) -> None:
    from benchmarks.train_throughput import sdpa_backend

    ids, pos = _batch()
    truth = _hf_logits(hf_dir, torch.float32, ids, pos)
    hf_bf16 = _hf_logits(hf_dir, torch.bfloat16, ids, pos)
    with torch.no_grad(), sdpa_backend(backend, torch.device("cuda")):
        got = ours(ids, pos)
    assert got.shape == truth.shape
    hf_err, our_err = _rel_err(hf_bf16, truth), _rel_err(got, truth)
    assert our_err < 1.5 * hf_err + 1e-3, (backend, our_err, hf_err)
    # The EndPrompt sample (row 0) is no worse than the contiguous one (row 1): positions up to 64K are exact.
    assert _rel_err(got[0], truth[0]) < 2 * _rel_err(got[1], truth[1]) + 1e-3


def test_fp32_logits_match_hf_tightly(hf_dir: Path) -> None:
    from megatron_endprompt import load_model
    from megatron_endprompt.convert import hf_to_megatron

    mdir = hf_dir.parent / "mcore_fp32"
    if not mdir.exists():
        hf_to_megatron(hf_dir, mdir)
    ours32 = load_model(mdir, device="cuda", dtype=torch.float32)
    ids, pos = _batch(1024)
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        got = ours32(ids, pos)
    torch.testing.assert_close(got, _hf_logits(hf_dir, torch.float32, ids, pos), atol=2e-4, rtol=1e-3)


def test_reference_model_matches_hf_in_bf16(hf_dir: Path) -> None:
    ref = ReferenceLlama(CFG)
    state = transformers.LlamaForCausalLM.from_pretrained(hf_dir).state_dict()
    ref.load_state_dict(state, strict=False)
    ref = ref.cuda().to(torch.bfloat16).eval()
    ids, pos = _batch()
    truth = _hf_logits(hf_dir, torch.float32, ids, pos)
    hf_err = _rel_err(_hf_logits(hf_dir, torch.bfloat16, ids, pos), truth)
    with torch.no_grad():
        got = ref(ids, pos).float()
    assert _rel_err(got, truth) < 1.5 * hf_err + 1e-3
