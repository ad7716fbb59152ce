"""Worker for test_chunked_ce_tp.py: chunked vocab-parallel cross entropy at TP=2 (gloo, one launch).

Usage: torchrun --nproc_per_node 2 tests/distributed/_perf_worker.py OUT_DIR
Every rank writes OUT_DIR/rank{r}.json with {check name: max abs difference}; the pytest process asserts.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_endprompt.model.chunked_ce import chunked_cross_entropy
from megatron_endprompt.model.config import get_preset
from megatron_endprompt.model.gpt import build_model, set_performance_options
from megatron_endprompt.parallel import initialize

B, S = 2, 24


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def check_function(results: dict) -> None:
    """Vocabulary-sharded chunked CE vs F.cross_entropy on the full weight: loss, dx (summed), dW shard."""
    from megatron.core import parallel_state as ps

    g = torch.Generator().manual_seed(5)
    n, h, v = 30, 8, 64
    x = 0.5 * torch.randn(n, h, generator=g)
    w = 0.5 * torch.randn(v, h, generator=g)
    labels = torch.randint(0, v, (n,), generator=g)
    weights = torch.rand(n, generator=g)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = F.cross_entropy(xr @ wr.t(), labels, reduction="none")
    (ref * weights).sum().backward()
    rank, tp = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    shard = v // tp
    xl = x.clone().requires_grad_()
    wl = w[rank * shard : (rank + 1) * shard].clone().requires_grad_()
    out = chunked_cross_entropy(xl, wl, labels, 7, ps.get_tensor_model_parallel_group(), rank * shard)
    (out * weights).sum().backward()
    dx = xl.grad.clone()
    dist.all_reduce(dx, group=ps.get_tensor_model_parallel_group())  # the caller's TP region does this
    results["fn_loss"] = _max_diff(out, ref)
    results["fn_dx"] = _max_diff(dx, xr.grad)
    results["fn_dw"] = _max_diff(wl.grad, wr.grad[rank * shard : (rank + 1) * shard])


def _loss_and_grads(model, tokens, positions, weights):
    model.zero_grad(set_to_none=True)
    per_token = model(tokens, positions, labels=tokens.roll(-1, dims=1))
    ((per_token * weights).sum() / weights.sum()).backward()
    return per_token.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def check_model(results: dict, sequence_parallel: bool, tied: bool) -> None:
    """TP=2 model: chunked loss and every gradient equal the unchunked (megatron vocab-parallel CE) path."""
    cfg = get_preset("tiny").replace(tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = build_model(cfg, sequence_parallel=sequence_parallel)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (B, S), generator=g)
    positions = torch.stack(
        [torch.cat([torch.arange(S - 4), torch.arange(60000, 60004)]), torch.arange(S) * 7]
    )
    weights = torch.rand(B, S, generator=g)
    ref_loss, ref_grads = _loss_and_grads(model, tokens, positions, weights)
    set_performance_options(model.config, ce_chunk_size=5)
    loss, grads = _loss_and_grads(model, tokens, positions, weights)
    tag = f"model_sp{int(sequence_parallel)}_tied{int(tied)}"
    results[f"{tag}_loss"] = _max_diff(loss, ref_loss)
    results[f"{tag}_grads"] = max(_max_diff(grads[k], ref_grads[k]) for k in ref_grads)


def main() -> None:
    out_dir = Path(sys.argv[1])
    results: dict = {}
    try:
        initialize(tp=2, pp=1, cp=1, seed=1234)
        check_function(results)
        check_model(results, sequence_parallel=False, tied=False)
        check_model(results, sequence_parallel=True, tied=True)
    except Exception:  # report instead of hanging the other rank's assertions
        results["error"] = traceback.format_exc()
    (out_dir / f"rank{dist.get_rank()}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
