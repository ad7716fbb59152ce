"""Construction of the engine's megatron pieces: model chunks in DDP, the optimizer, the schedule hooks.

One model chunk per rank, or `virtual_pipeline_parallel` chunks for the interleaved 1F1B schedule. All chunks
share one TransformerConfig (the schedules read their hooks from it).
"""

from __future__ import annotations

import torch

from megatron_endprompt.model.config import ModelConfig
from megatron_endprompt.training.config import TrainConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
NO_CLIP = 1e30
"""clip_grad stand-in when clipping is off: megatron only computes the grad norm when it clips."""


def check_initialised_layout(cfg: TrainConfig) -> None:
    """The initialised parallel_state must be the layout the config asks for."""
    from megatron.core import parallel_state as ps

    p = cfg.parallel
    got = (
        ps.get_tensor_model_parallel_world_size(),
        ps.get_pipeline_model_parallel_world_size(),
        ps.get_context_parallel_world_size(),
        ps.get_virtual_pipeline_model_parallel_world_size(),
    )
    want = (p.tensor_parallel, p.pipeline_parallel, p.context_parallel, p.virtual_pipeline_parallel)
    if got != want:
        raise ValueError(
            f"--parallel: initialised layout (tp, pp, cp, vp) = {got} differs from the config's {want}; "
            "call parallel.initialize with the config's sizes"
        )


def config_overrides(cfg: TrainConfig) -> dict:
    """TransformerConfig settings the engine owns (passed to `model.gpt.to_transformer_config`)."""
    # Per-token loss mode: the schedule leaves our (already global) loss alone and DDP sums gradients.
    overrides: dict = {"calculate_per_token_loss": True}
    recompute = cfg.recompute
    if recompute.granularity == "full":
        overrides.update(
            recompute="full", recompute_method=recompute.method, recompute_num_layers=recompute.num_layers
        )
    elif recompute.granularity == "selective":
        overrides["recompute"] = "selective"
    if cfg.precision.fp8:
        # Transformer Engine layers only (validation refuses fp8 without TE); untested on our CPU machines.
        overrides.update(fp8_overrides(cfg))
    if cfg.parallel.virtual_pipeline_parallel and cfg.parallel.pipeline_parallel == 2:
        # With two stages the previous and next stage are the same rank, and the interleaved schedule sends
        # activations and gradients to it at once. Batched p2p posts both on one channel, so they can be
        # matched crosswise (seen on gloo: wrong losses from the first steady-state micro-batch on); the
        # unbatched path sends the two directions over two process groups (p2p_communication._p2p_ops).
        overrides["batch_p2p_comm"] = False
    return overrides


def fp8_overrides(cfg: TrainConfig) -> dict:
    """megatron-core 0.16.1 TransformerConfig FP8 fields from `--precision.fp8*` (cfg.precision.fp8 must be set)."""
    pr = cfg.precision
    start, end = pr.fp8_bf16_layers_at_start, pr.fp8_bf16_layers_at_end
    return {
        "fp8": pr.fp8,
        "fp8_recipe": pr.fp8_recipe,
        "fp8_amax_history_len": pr.fp8_amax_history_len,
        "fp8_amax_compute_algo": pr.fp8_amax_compute_algo,
        "fp8_margin": pr.fp8_margin,
        # megatron reads the two counts only behind this switch (fp8_utils.is_first_last_bf16_layer).
        "first_last_layers_bf16": start > 0 or end > 0,
        "num_layers_at_start_in_bf16": start,
        "num_layers_at_end_in_bf16": end,
    }


def build_chunks(cfg: TrainConfig, model_config: ModelConfig, device: torch.device | None) -> list:
    """This rank's model chunks, each wrapped in megatron's DistributedDataParallel."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from megatron_endprompt.model.gpt import build_model, to_transformer_config

    dtype = DTYPES[cfg.precision.dtype]
    tconfig = to_transformer_config(
        model_config,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        sequence_parallel=cfg.parallel.sequence_parallel,
        **config_overrides(cfg),
    )
    opt = cfg.optimizer
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=cfg.precision.grad_reduce_in_fp32,
        overlap_grad_reduce=opt.overlap_grad_reduce,
        overlap_param_gather=opt.overlap_param_gather,
        use_distributed_optimizer=opt.use_distributed_optimizer,
    )
    vp = cfg.parallel.virtual_pipeline_parallel
    chunks = []
    for vp_stage in range(vp) if vp else [None]:
        model = build_model(model_config, use_te=cfg.model.use_te, vp_stage=vp_stage, config=tconfig)
        if device is not None:
            model = model.to(device)
        # Megatron-LM buckets only the first chunk's gradients when overlapping (the others reduce at once).
        ddp = DistributedDataParallel(
            config=tconfig, ddp_config=ddp_config, module=model, disable_bucketing=bool(vp_stage)
        )
        ddp.broadcast_params()  # identical replicas whatever each rank's initialisation did
        chunks.append(ddp)
    return chunks


def build_optimizer(cfg: TrainConfig, chunks: list):
    """megatron's optimizer (AdamW; mixed precision, clipping, loss scaling, optional ZeRO-1) for `chunks`."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    opt, prec = cfg.optimizer, cfg.precision
    config = OptimizerConfig(
        optimizer="adam",
        lr=opt.lr,
        min_lr=opt.min_lr,
        weight_decay=opt.weight_decay,
        adam_beta1=opt.adam_beta1,
        adam_beta2=opt.adam_beta2,
        adam_eps=opt.adam_eps,
        decoupled_weight_decay=True,  # AdamW
        clip_grad=opt.clip_grad if opt.clip_grad > 0 else NO_CLIP,
        bf16=prec.dtype == "bf16",
        fp16=prec.dtype == "fp16",
        params_dtype=DTYPES[prec.dtype],
        loss_scale=prec.loss_scale if prec.dtype == "fp16" else None,
        initial_loss_scale=prec.initial_loss_scale,
        use_distributed_optimizer=opt.use_distributed_optimizer,
        overlap_param_gather=opt.overlap_param_gather,
    )
    return get_megatron_optimizer(config, chunks)


def wire_schedule_hooks(cfg: TrainConfig, chunks: list, optimizer) -> None:
    """The hooks megatron's forward/backward schedules look up on the (shared) model config."""
    tconfig = chunks[0].config
    no_sync = [c.no_sync for c in chunks]
    tconfig.no_sync_func = no_sync[0] if len(chunks) == 1 else no_sync
    tconfig.grad_scale_func = optimizer.scale_loss
    tconfig.finalize_model_grads_func = finalize_grads_without_token_division
    if cfg.optimizer.overlap_grad_reduce:
        grad_sync = [c.start_grad_sync for c in chunks]
        tconfig.grad_sync_func = grad_sync[0] if len(chunks) == 1 else grad_sync
    if cfg.optimizer.overlap_param_gather:
        param_sync = [c.start_param_sync for c in chunks]
        tconfig.param_sync_func = param_sync[0] if len(chunks) == 1 else param_sync


def finalize_grads_without_token_division(model, num_tokens, **kwargs) -> None:
    """megatron's finalize_model_grads minus the division by the token count (our loss is already global)."""
    from megatron.core.distributed import finalize_model_grads

    finalize_model_grads(model, None, **kwargs)
