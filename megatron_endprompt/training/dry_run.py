"""`--dry-run`: resolve and validate a recipe for a given world size, then report layout, FLOPs and memory.

Needs no GPU, no process group and no data files (missing data is a warning, not an error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from megatron_endprompt.training import flops
from megatron_endprompt.training.config import TrainConfig
from megatron_endprompt.training.validation import environment_problems

DATA_SUFFIXES = (".bin", ".idx")


def missing_data(cfg: TrainConfig) -> list[str]:
    """Dataset prefixes whose .bin/.idx files are not there (mock data needs none)."""
    if cfg.data.mock:
        return []
    return [p for p in cfg.data.paths if not all(Path(p + s).is_file() for s in DATA_SUFFIXES)]


def fp8_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The FP8 settings the run will use: none without fp8, the amax ones only for the delayed recipe (the only
    one that reads them)."""
    pr = cfg.precision
    if pr.fp8 is None:
        return {}
    out: dict[str, Any] = {"fp8_recipe": pr.fp8_recipe}
    if pr.fp8_recipe == "delayed":
        out.update(
            fp8_amax_history_len=pr.fp8_amax_history_len,
            fp8_amax_compute_algo=pr.fp8_amax_compute_algo,
            fp8_margin=pr.fp8_margin,
        )
    out["fp8_bf16_layers"] = [pr.fp8_bf16_layers_at_start, pr.fp8_bf16_layers_at_end]
    return out


def _format_precision(pr: dict[str, Any]) -> str:
    """'precision bf16 + fp8 hybrid (recipe delayed, amax history 1024 (max), margin 0, ...); recompute none'."""
    text = f"precision {pr['dtype']}"
    if pr["fp8"]:
        details = [f"recipe {pr['fp8_recipe']}"]
        if "fp8_amax_history_len" in pr:
            details.append(
                f"amax history {pr['fp8_amax_history_len']} ({pr['fp8_amax_compute_algo']}),"
                f" margin {pr['fp8_margin']}"
            )
        start, end = pr["fp8_bf16_layers"]
        details.append(f"bf16 layers: first {start}, last {end}")
        text += f" + fp8 {pr['fp8']} ({', '.join(details)})"
    return text + f"; recompute {pr['recompute']}"


def report(cfg: TrainConfig) -> dict[str, Any]:
    """Everything the dry run prints, as a dict (cfg must be validated)."""
    model = cfg.model_config()
    p, d = cfg.parallel, cfg.data
    per_token = flops.flops_per_token(model, d.seq_length)
    memory = flops.estimate_memory(cfg)
    peak_name = "bf16" if cfg.precision.dtype == "bf16" else cfg.precision.dtype
    return {
        "layout": {
            "world_size": cfg.world_size,
            "tensor_parallel": p.tensor_parallel,
            "pipeline_parallel": p.pipeline_parallel,
            "virtual_pipeline_parallel": p.virtual_pipeline_parallel,
            "context_parallel": p.context_parallel,
            "data_parallel": cfg.data_parallel_size,
            "sequence_parallel": p.sequence_parallel,
            "distributed_optimizer": cfg.optimizer.use_distributed_optimizer,
        },
        "batch": {
            "seq_length": d.seq_length,
            "micro_batch_size": d.micro_batch_size,
            "num_micro_batches": cfg.num_micro_batches,
            "global_batch_size": d.global_batch_size,
            "tokens_per_step": cfg.tokens_per_step,
            "train_steps": cfg.train_steps,
            "train_tokens": cfg.tokens_per_step * cfg.train_steps,
        },
        "model": {
            "max_position_embeddings": model.max_position_embeddings,
            "rope_scaling": model.rope_scaling.type,
            "params_total": flops.total_params(model),
            "params_matmul_N": flops.matmul_params(model),
            "params_per_gpu": memory.params_per_gpu,
        },
        "flops": {
            "formula": "6*N + 6*L*(heads*head_dim)*seq_length per token (fwd+bwd, causal attention)",
            "per_token": per_token,
            "per_step": per_token * cfg.tokens_per_step,
            "per_gpu_per_step": per_token * cfg.tokens_per_step / cfg.world_size,
            "total": per_token * cfg.tokens_per_step * cfg.train_steps,
            "peak_per_gpu_H100": flops.PEAK_FLOPS["H100"].get("fp8" if cfg.precision.fp8 else peak_name),
        },
        "memory_gib_per_gpu": memory.as_gib(),
        "precision": {
            "dtype": cfg.precision.dtype,
            "fp8": cfg.precision.fp8,
            **fp8_settings(cfg),
            "recompute": cfg.recompute.granularity,
        },
        "missing_data": missing_data(cfg),
        "environment_warnings": environment_problems(cfg),
    }


def _si(value: float, unit: str) -> str:
    """1.5e9, 'FLOP' -> '1.50 GFLOP' (SI prefixes up to exa)."""
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.2f} {unit}"


def format_report(r: dict[str, Any]) -> str:
    """Human-readable multi-line summary of `report`."""
    lay, b, m, f, mem = r["layout"], r["batch"], r["model"], r["flops"], r["memory_gib_per_gpu"]
    lines = [
        "== dry run: resolved layout ==",
        f"world {lay['world_size']} = TP {lay['tensor_parallel']} x PP {lay['pipeline_parallel']}"
        f" x CP {lay['context_parallel']} x DP {lay['data_parallel']}"
        + (f" (virtual PP {lay['virtual_pipeline_parallel']})" if lay["virtual_pipeline_parallel"] else "")
        + f"; sequence parallel {lay['sequence_parallel']}; distributed optimizer {lay['distributed_optimizer']}",
        f"batch: P={b['seq_length']} x micro {b['micro_batch_size']} x {b['num_micro_batches']} micro-batches"
        f" x DP {lay['data_parallel']} = global {b['global_batch_size']} samples"
        f" = {b['tokens_per_step']:,} tokens/step; {b['train_steps']:,} steps = {b['train_tokens']:,} tokens",
        f"model: {_si(m['params_total'], 'params')} (N for 6N: {_si(m['params_matmul_N'], '')}),"
        f" {_si(m['params_per_gpu'], 'params')} per GPU; positions up to {m['max_position_embeddings']:,}"
        f" (rope scaling {m['rope_scaling']})",
        f"FLOPs ({f['formula']}): {_si(f['per_token'], 'FLOP')}/token, {_si(f['per_step'], 'FLOP')}/step,"
        f" {_si(f['per_gpu_per_step'], 'FLOP')}/GPU/step, {_si(f['total'], 'FLOP')} total",
        f"memory per GPU (GiB, estimate): weights {mem['weights']}, grads {mem['grads']},"
        f" optimizer {mem['optimizer']}, activations {mem['activations']}, logits {mem['logits']}"
        f" -> total {mem['total']}",
        _format_precision(r["precision"]),
    ]
    if f["peak_per_gpu_H100"]:
        seconds = f["per_gpu_per_step"] / (0.4 * f["peak_per_gpu_H100"])
        lines.append(f"step time on H100 at 40% MFU: {seconds:.3g} s")
    for problem in r["environment_warnings"]:
        lines.append(f"WARNING (this machine): {problem}")
    for prefix in r["missing_data"]:
        lines.append(f"WARNING: --data.paths {prefix}: .bin/.idx not found (a real run would stop here)")
    return "\n".join(lines)
