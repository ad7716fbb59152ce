"""On CUDA with Transformer Engine: the TE layer spec computes what the local spec computes, FP8 trains, CP=2.

Written before any GPU with TE was lent to this project: these tests have NOT run yet (see
docs/performance.md, "What has run where"). Tolerances are bf16-sized, judged against an fp32 local-spec run:
- logits: TE bf16 error vs the fp32 truth within 1.5x the local spec's own bf16 error + 1e-3;
- loss: within 2e-2 absolute of the fp32 loss (both bf16 paths);
- gradients: relative L2 error of every parameter's gradient vs fp32 within 5e-2 (bf16 backward);
- FP8 (hybrid, delayed scaling): one Engine step finite, loss within 5% of the BF16 step's.
Positions are per sample and non-contiguous (EndPrompt to 32K) and RoPE scaling is YaRN (mscale != 1).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.te]
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("transformer_engine.pytorch", reason="needs Transformer Engine")

from megatron_endprompt import positions  # noqa: E402
from megatron_endprompt.model.config import RopeScaling, get_preset  # noqa: E402

T, SEQ = 32768, 2048
CFG = get_preset("llama3-8b").replace(
    num_layers=2, hidden_size=512, ffn_hidden_size=1408, num_attention_heads=4, num_query_groups=2,
    vocab_size=4096, max_position_embeddings=T,
    rope_scaling=RopeScaling(type="yarn", factor=4.0, original_max_position_embeddings=8192),
)  # fmt: skip
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    from megatron_endprompt.convert import hf_to_megatron
    from megatron_endprompt.convert.testing import write_random_hf_llama

    root = tmp_path_factory.mktemp("te_gpu")
    write_random_hf_llama(root / "hf", CFG, seed=5)
    hf_to_megatron(root / "hf", root / "ckpt")
    return root / "ckpt"


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, CFG.vocab_size, (2, SEQ + 1), generator=g)
    ep = torch.from_numpy(positions.position_ids(positions.endprompt(SEQ, T, 16)))
    pose_like = torch.cat([torch.arange(SEQ // 2), torch.arange(T - SEQ // 2, T)])
    return {
        "tokens": ids[:, :-1].cuda(),
        "labels": ids[:, 1:].cuda(),
        "position_ids": torch.stack([ep, pose_like]).cuda(),
    }


def _model(ckpt: Path, use_te: bool, dtype: torch.dtype):
    from megatron_endprompt.model.gpt import build_model
    from megatron_endprompt.model.portable_state import load_model_state, load_sharded_model_state
    from megatron_endprompt.parallel import initialize

    initialize(tp=1, pp=1, cp=1)
    model = build_model(CFG, use_te=use_te, params_dtype=dtype)
    load_model_state(model, load_sharded_model_state(model.sharded_state_dict(), ckpt))
    return model


def _run(model, batch, dtype):
    """(logits float, mean loss, {param name: grad float})."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        logits = model(batch["tokens"], batch["position_ids"]).float()
        loss = model(batch["tokens"], batch["position_ids"], labels=batch["labels"]).float().mean()
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), float(loss), grads


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm().clamp_min(1e-12))


def test_te_spec_matches_local_spec_with_per_sample_positions_and_yarn(converted) -> None:
    from tests.te.te_support import local_name

    batch = _batch()
    torch.backends.cuda.matmul.allow_tf32 = False
    truth_logits, truth_loss, truth_grads = _run(
        _model(converted, False, torch.float32), batch, torch.float32
    )
    local_logits, _, _ = _run(_model(converted, False, torch.bfloat16), batch, torch.bfloat16)
    te_logits, te_loss, te_grads = _run(_model(converted, True, torch.bfloat16), batch, torch.bfloat16)
    local_err, te_err = _rel(local_logits, truth_logits), _rel(te_logits, truth_logits)
    assert te_err < 1.5 * local_err + 1e-3, (te_err, local_err)
    assert abs(te_loss - truth_loss) < 2e-2, (te_loss, truth_loss)
    bad = {n: _rel(g, truth_grads[local_name(n)]) for n, g in te_grads.items()}
    assert all(err < 5e-2 for err in bad.values()), {n: e for n, e in bad.items() if e >= 5e-2}
    assert len(te_grads) == len(truth_grads)


def _engine_step(ckpt: Path, fp8: str | None) -> float:
    from megatron_endprompt.parallel import initialize
    from megatron_endprompt.training.checkpoint import load_checkpoint
    from megatron_endprompt.training.config import from_dict
    from megatron_endprompt.training.engine import Engine

    precision = {"dtype": "bf16", **({"fp8": fp8} if fp8 else {})}
    cfg = from_dict(
        {
            "model": {"config_file": str(ckpt / "endprompt_model.json"), "use_te": True},
            "precision": precision,
            "optimizer": {"lr": 1e-5, "warmup_steps": 0},
            "data": {"seq_length": SEQ, "micro_batch_size": 2, "global_batch_size": 2, "mock": True},
            "training": {"train_steps": 1},
        }
    )
    cfg.validate(1)
    initialize(tp=1, pp=1, cp=1)
    engine = Engine(cfg)
    load_checkpoint(engine, ckpt, weights_only=True)
    batch = {**_batch(), "loss_weights": torch.ones(2, SEQ, device="cuda")}
    result = engine.train_step([batch])
    assert torch.isfinite(torch.tensor([result.loss, result.grad_norm])).all(), result
    return result.loss


def test_one_fp8_step_is_finite_and_close_to_bf16(converted) -> None:
    bf16 = _engine_step(converted, None)
    fp8 = _engine_step(converted, "hybrid")
    assert abs(fp8 - bf16) < 0.05 * abs(bf16), (fp8, bf16)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="CP=2 needs 2 GPUs")
def test_context_parallel_2_under_te_equals_cp_1(converted, tmp_path) -> None:
    worker = Path(__file__).with_name("_te_cp_worker.py")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(worker), str(converted),
           str(tmp_path / "cp.txt")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cp1, cp2 = (float(x) for x in (tmp_path / "cp.txt").read_text().split())
    assert abs(cp2 - cp1) < 1e-2 * abs(cp1), (cp1, cp2)
