"""Worker for test_eval_parallel.py: one 2-rank gloo launch comparing the TP=2 and CP=2 evaluation backends
with the single-process Megatron backend on the same checkpoint.

Usage: torchrun --nproc_per_node 2 tests/distributed/_eval_parallel_worker.py OUT_DIR
Every rank writes OUT_DIR/rank{r}.json; the pytest process asserts.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_endprompt.convert import megatron_io
from megatron_endprompt.eval.backends import MegatronBackend
from megatron_endprompt.eval.corpus import ByteTokenizer
from megatron_endprompt.eval.parallel_backend import ParallelMegatronBackend
from megatron_endprompt.eval.runner import evaluate
from megatron_endprompt.model.config import get_preset
from megatron_endprompt.model.gpt import build_model
from megatron_endprompt.parallel import initialize

EVAL = dict(
    tasks=["passkey"], lengths=[480], depths=[0.5], samples=1, seed=3, max_new_tokens=4, progress=False
)


def save_tiny_checkpoint(ckpt: Path) -> None:
    """Same seeded weights on both ranks (DP=2), saved collectively at TP=1."""
    initialize(1, 1, 1)
    cfg = get_preset("tiny").replace(max_position_embeddings=2048, vocab_size=500)  # padded to 512: masked
    model = build_model(cfg, use_te=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # larger than the init std: decisive argmaxes, non-trivial generations
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    if dist.get_rank() == 0:
        ckpt.mkdir(parents=True)
    dist.barrier()
    megatron_io.save_dist_checkpoint(model.sharded_state_dict(), ckpt)
    if dist.get_rank() == 0:
        megatron_io.write_json(ckpt / megatron_io.MODEL_JSON, cfg.to_dict())
    dist.barrier()


def measure(backend, prompts: list[list[int]]) -> dict:
    return {
        "nll": [backend.token_nll(p) for p in prompts],
        "gen": [backend.generate(p, 6, stop_ids=[2]) for p in prompts],
        "logits": backend.logits(torch.tensor([prompts[0][:21]])),
        "eval": [s["generated_ids"] for s in evaluate(backend, ByteTokenizer(), **EVAL)["samples"]],
        # the answer is scored first and its forward kept for generation's first step: same ids, same NLL
        "eval_nll": [
            (s["generated_ids"], s["answer_nll"])
            for s in evaluate(backend, ByteTokenizer(), answer_nll=True, **EVAL)["samples"]
        ],
    }


def main(out: Path) -> dict:
    ckpt = out / "ckpt"
    save_tiny_checkpoint(ckpt)
    gen = torch.Generator().manual_seed(1)
    # 37: CP padding; 10: with a 5-token draft the tail rows straddle the two CP ranks' chunks
    prompts = [torch.randint(3, 500, (n,), generator=gen).tolist() for n in (37, 64, 10)]
    # the reference recomputes every step (no KV cache); TP=2 decodes through its KV cache, CP=2 recomputes
    ref = measure(MegatronBackend.from_checkpoint(ckpt, kv_cache=False), prompts)
    res = {
        "generated_something": any(ref["gen"]) and any(ref["eval"]),
        "gen_lengths": [len(g) for g in ref["gen"]],
    }
    for tp, cp in ((2, 1), (1, 2)):
        backend = ParallelMegatronBackend.from_checkpoint(ckpt, tp=tp, cp=cp)
        got = measure(backend, prompts)
        name = f"tp{tp}_cp{cp}"
        res[f"{name}_nll"] = max(
            float((a - b).abs().max()) for a, b in zip(ref["nll"], got["nll"], strict=True)
        )
        res[f"{name}_logits"] = float((ref["logits"] - got["logits"]).abs().max())
        res[f"{name}_gen_equal"] = ref["gen"] == got["gen"]
        res[f"{name}_eval_equal"] = ref["eval"] == got["eval"]
        res[f"{name}_eval_nll_equal"] = all(
            g == h and g == e and abs(a - b) < 1e-4
            for (g, a), (h, b), e in zip(ref["eval_nll"], got["eval_nll"], ref["eval"], strict=True)
        )
        drafted = [
            backend.generate(p, 6, stop_ids=[2], draft=g) for p, g in zip(prompts, ref["gen"], strict=True)
        ]
        res[f"{name}_draft_gen_equal"] = drafted == ref["gen"]
        res[f"{name}_kv_cache"] = backend._cached is not None
    # the same TP=2 model without its cache: bit-identical answer NLLs and the same generations
    tp2_recompute = ParallelMegatronBackend.from_checkpoint(ckpt, tp=2, cp=1, kv_cache=False)
    recomputed, cached = (
        measure(tp2_recompute, prompts),
        measure(ParallelMegatronBackend.from_checkpoint(ckpt, tp=2, cp=1), prompts),
    )
    res["tp2_cache_equals_recompute"] = (
        recomputed["gen"] == cached["gen"]
        and recomputed["eval_nll"] == cached["eval_nll"]
        and all(torch.equal(a, b) for a, b in zip(recomputed["nll"], cached["nll"], strict=True))
    )
    return res


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    try:
        result = main(out_dir)
    except Exception:  # report to the pytest process instead of hanging the other rank
        result = {"error": traceback.format_exc()}
    rank = dist.get_rank() if dist.is_initialized() else 0
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
