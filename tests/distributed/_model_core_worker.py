"""Worker for test_cp_attention.py: one 2-rank gloo launch checking context-parallel attention and
pipeline-parallel position plumbing against single-rank computations.

Usage: torchrun --nproc_per_node 2 tests/distributed/_model_core_worker.py OUT_DIR
Every rank writes OUT_DIR/rank{r}.json with {check name: max abs difference}; the pytest process asserts.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_endprompt.model.attention import SDPAttention
from megatron_endprompt.model.config import get_preset
from megatron_endprompt.model.gpt import build_model, to_transformer_config
from megatron_endprompt.parallel import initialize, slice_batch_for_cp

B, S = 2, 32


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _cp_slice(t: torch.Tensor, dim: int) -> torch.Tensor:
    """This rank's CP chunks of `t` along `dim` (via slice_batch_for_cp, which works on dim 1)."""
    moved = t.movedim(dim, 1)
    return slice_batch_for_cp({"x": moved})["x"].movedim(1, dim)


def check_cp_attention(results: dict) -> None:
    """SDPAttention at CP=2 vs plain SDPA on the full sequence: outputs and q/k/v gradients (GQA)."""
    config = to_transformer_config(get_preset("tiny"))
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(S, B, n, 16, generator=g) for n in (4, 2, 2))  # [s, b, h, d]
    grad_out = torch.randn(S, B, 4 * 16, generator=g)

    full = SDPAttention(config, layer_number=1, attn_mask_type=_causal())
    full.cp_group = None
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = full(*ref_in, None)
    ref.backward(grad_out)

    cp_attn = SDPAttention(config, layer_number=1, attn_mask_type=_causal())
    assert cp_attn.cp_group is not None, "CP group not picked up"
    local_in = [_cp_slice(t, 0).clone().requires_grad_() for t in (q, k, v)]
    out = cp_attn(*local_in, None)
    out.backward(_cp_slice(grad_out, 0))
    results["cp_attention_forward"] = _max_diff(out, _cp_slice(ref.detach(), 0))
    for name, local, ref_t in zip("qkv", local_in, ref_in, strict=True):
        results[f"cp_attention_grad_{name}"] = _max_diff(local.grad, _cp_slice(ref_t.grad, 0))


def _causal():
    from megatron.core.transformer.enums import AttnMaskType

    return AttnMaskType.causal


def check_cp_model(results: dict) -> None:
    """Whole model at CP=2 with PoSE-like positions: per-token loss and parameter gradients."""
    cfg = get_preset("tiny")
    model = build_model(cfg)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, cfg.vocab_size, (B, S), generator=g)
    positions = torch.stack(
        [torch.arange(S), torch.cat([torch.arange(S // 2), torch.arange(65000, 65000 + S // 2)])]
    )
    attns = [m for m in model.modules() if isinstance(m, SDPAttention)]
    groups = [m.cp_group for m in attns]

    for m in attns:  # single-rank reference: same weights, full sequence, no CP
        m.cp_group = None
    ref_loss = model(tokens, positions, labels=tokens)
    ref_loss.sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    for m, grp in zip(attns, groups, strict=True):
        m.cp_group = grp
    local = slice_batch_for_cp({"tokens": tokens, "position_ids": positions})
    loss = model(local["tokens"], local["position_ids"], labels=local["tokens"])
    loss.sum().backward()
    results["cp_model_loss"] = _max_diff(loss, slice_batch_for_cp({"x": ref_loss.detach()})["x"])
    worst = 0.0
    for n, p in model.named_parameters():
        grad = p.grad.clone()
        dist.all_reduce(grad)  # each CP rank holds the gradient of its own tokens' losses
        worst = max(worst, _max_diff(grad, ref_grads[n]))
    results["cp_model_grads"] = worst


def _load_stage(stage, full_state: dict, layer_offset: int) -> None:
    """Load a PP stage chunk from a full (PP=1) state dict, shifting local layer numbers by `layer_offset`."""
    state = {}
    for key in stage.state_dict():
        src = key
        if key.startswith("decoder.layers."):
            idx, rest = key[len("decoder.layers.") :].split(".", 1)
            src = f"decoder.layers.{int(idx) + layer_offset}.{rest}"
        state[key] = full_state[src]
    stage.load_state_dict(state)


def check_pp_positions(results: dict, vp: int | None) -> None:
    """PP=2 (optionally interleaved, vp chunks per rank) forward through megatron's schedule: position_ids
    reach every stage and chunk; per-token losses equal the PP=1 model's."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    cfg = get_preset("tiny").replace(num_layers=4)
    initialize(tp=1, pp=1, cp=1, seed=5)
    full = build_model(cfg).eval()
    g = torch.Generator().manual_seed(4)
    batches = []
    for _ in range(2):
        tokens = torch.randint(0, cfg.vocab_size, (B, S), generator=g)
        positions = torch.stack(
            [torch.arange(S), torch.cat([torch.arange(S // 2), torch.arange(60000, 60000 + S // 2)])]
        )
        batches.append({"tokens": tokens, "position_ids": positions})
    with torch.no_grad():
        refs = [full(b["tokens"], b["position_ids"], labels=b["tokens"]) for b in batches]
    full_state = full.state_dict()

    initialize(tp=1, pp=2, cp=1, seed=5, vp=vp)
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    chunks = []
    for v in range(vp or 1):
        stage = build_model(cfg, vp_stage=v if vp else None).eval()
        per_chunk = cfg.num_layers // (2 * (vp or 1))
        _load_stage(stage, full_state, (v * 2 + pp_rank) * per_chunk)
        chunks.append(stage)

    def forward_step(data_iterator, module):
        batch = next(data_iterator)
        out = module(batch["tokens"], batch["position_ids"], labels=batch["tokens"])
        return out, lambda per_token: (per_token.sum(), {"per_token": per_token.detach().clone()})

    iterators = [iter(batches) for _ in chunks]
    out = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iterators if vp else iterators[0],
        model=chunks,
        num_microbatches=len(batches),
        seq_length=S,
        micro_batch_size=B,
        forward_only=True,
    )
    if parallel_state.is_pipeline_last_stage():
        name = f"pp_vp{vp}_loss" if vp else "pp_loss"
        results[name] = max(_max_diff(o["per_token"], r) for o, r in zip(out, refs, strict=True))


def main() -> None:
    out_dir = Path(sys.argv[1])
    results: dict = {}
    try:
        initialize(tp=1, pp=1, cp=2, seed=1234)
        check_cp_attention(results)
        check_cp_model(results)
        check_pp_positions(results, vp=None)
        check_pp_positions(results, vp=2)
    except Exception:  # report instead of hanging the other rank's assertions
        results["error"] = traceback.format_exc()
    (out_dir / f"rank{dist.get_rank()}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
