"""The training engine: model chunks in megatron DDP, megatron's optimizer, our LR schedule, one step at a time.

`Engine(cfg)` builds everything on the parallel layout that `megatron_endprompt.parallel.initialize` set up
(sizes must match `cfg.parallel`). `train_step(micro_batches)` takes this data-parallel rank's micro-batches
(full sequences: `tokens`, `labels`, `loss_weights`, `position_ids`, each [micro_batch_size, P]; optionally a
boolean `cue_mask`), slices them for context parallelism, runs megatron's forward/backward schedule (1F1B with
pipeline parallelism; position ids are fed to every stage), and takes an optimizer step.

Loss normalisation. The objective is sum(w * ce) / W with W the loss-weight sum of the whole global batch. The
engine all-reduces W over data-parallel ranks before the schedule runs; each micro-batch returns its numerator
divided by W. `calculate_per_token_loss=True` makes megatron's schedule leave that value alone (no division by
the micro-batch count, no multiplication by the CP size) and makes DDP SUM gradients over data- and
context-parallel ranks instead of averaging them; our `finalize_model_grads` wrapper drops megatron's division by
the token count. The summed gradient is then exactly the gradient of the global objective, for any split of the
batch over micro-batches, DP and CP ranks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch

from megatron_endprompt.model.config import ModelConfig
from megatron_endprompt.training import engine_build
from megatron_endprompt.training.config import TrainConfig
from megatron_endprompt.training.loss import LossStats, loss_sums, weighted_loss
from megatron_endprompt.training.schedule import lr_at

logger = logging.getLogger(__name__)

BATCH_KEYS: tuple[str, ...] = ("tokens", "labels", "loss_weights", "position_ids")


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step (or one evaluation) measured; identical on every rank."""

    loss: float
    """sum(w * ce) / sum(w) over the global batch."""
    text_loss: float
    """Mean CE over text tokens (weight 1, or not in cue_mask); nan when there are none."""
    cue_loss: float
    """Mean CE over cue tokens (0 < weight < 1, or in cue_mask); nan when there are none."""
    grad_norm: float
    """Global L2 norm of the gradient before clipping (nan when the step was skipped)."""
    lr: float
    """Learning rate used by this step."""
    num_tokens: int
    """Tokens with a positive loss weight in the global batch."""
    weight_sum: float
    """sum(w) over the global batch (the objective's denominator)."""
    skipped: bool
    """True when fp16 loss scaling found inf/nan gradients and the update was skipped."""
    iteration: int
    """Optimizer steps taken so far, this one included."""
    consumed_samples: int
    """Samples consumed so far over all data-parallel ranks, this step included."""
    nonfinite_grad_norm: bool = False
    """True when the optimizer measured a NaN/Inf gradient norm and still updated the weights (megatron-core
    skips such steps only under fp16 loss scaling; the norm is measured only with --optimizer.clip_grad > 0).
    The training loop then stops (exit 3) before anything is saved."""


class Engine:
    """Model chunks + optimizer + LR schedule for the current parallel layout (see module docstring)."""

    def __init__(self, cfg: TrainConfig, model_config: ModelConfig | None = None) -> None:
        from megatron.core import parallel_state

        if not parallel_state.model_parallel_is_initialized():
            raise RuntimeError(
                "Engine: call megatron_endprompt.parallel.initialize(tp, pp, cp, vp=...) first"
            )
        self.cfg = cfg
        self.model_config = model_config or cfg.model_config()
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        engine_build.check_initialised_layout(cfg)
        self.model = engine_build.build_chunks(cfg, self.model_config, self.device)
        """This rank's model chunks in megatron DDP (several with a virtual pipeline)."""
        _apply_performance_options(cfg, self.model)
        self.optimizer = engine_build.build_optimizer(cfg, self.model)
        engine_build.wire_schedule_hooks(cfg, self.model, self.optimizer)
        self.iteration = 0
        """Optimizer steps taken (skipped fp16 steps included, as in Megatron-LM)."""
        self.lr_step = 0
        """Steps that updated the weights: the LR schedule's clock."""
        self.consumed_samples = 0

    # ------------------------------------------------------------------ stepping

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> StepResult:
        """One optimizer step on this data-parallel rank's micro-batches (see module docstring)."""
        for chunk in self.model:
            chunk.train()
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        lr = self._set_lr()
        sums = self._forward_backward(micro_batches, forward_only=False)
        updated, grad_norm, _ = self.optimizer.step()
        self.iteration += 1
        self.lr_step += int(updated)
        self.consumed_samples += self._global_samples(micro_batches)
        stats = LossStats.from_sums(sums)
        if not updated:
            logger.warning("step %d skipped: inf/nan gradients under fp16 loss scaling", self.iteration)
        return StepResult(
            loss=stats.loss,
            text_loss=stats.text_loss,
            cue_loss=stats.cue_loss,
            grad_norm=float(grad_norm) if updated and grad_norm is not None else math.nan,
            lr=lr,
            num_tokens=stats.num_tokens,
            weight_sum=stats.weight_sum,
            skipped=not updated,
            iteration=self.iteration,
            consumed_samples=self.consumed_samples,
            nonfinite_grad_norm=bool(
                updated and grad_norm is not None and not math.isfinite(float(grad_norm))
            ),
        )

    @torch.no_grad()
    def eval_stats(self, micro_batches: list[dict[str, torch.Tensor]]) -> LossStats:
        """Global loss statistics of micro-batches without touching gradients or weights."""
        for chunk in self.model:
            chunk.eval()
        try:
            return LossStats.from_sums(self._forward_backward(micro_batches, forward_only=True))
        finally:
            for chunk in self.model:
                chunk.train()

    def eval_loss(self, micro_batches: list[dict[str, torch.Tensor]]) -> float:
        """sum(w * ce) / sum(w) over the global batch formed by every rank's micro-batches."""
        return self.eval_stats(micro_batches).loss

    def current_lr(self) -> float:
        """Learning rate of the next step."""
        total = self.cfg.train_steps or None
        return lr_at(self.lr_step, self.cfg.optimizer, total_steps=total)

    def _set_lr(self) -> float:
        lr, wd = self.current_lr(), self.cfg.optimizer.weight_decay
        for group in self.optimizer.param_groups:
            # megatron's param groups carry multipliers (wd_mult = 0 for norms and biases); applying them is
            # the scheduler's job, so ours does it too.
            group["lr"] = lr * group.get("lr_mult", 1.0)
            group["weight_decay"] = wd * group.get("wd_mult", 1.0)
        return lr

    def _forward_backward(
        self, micro_batches: list[dict[str, torch.Tensor]], forward_only: bool
    ) -> torch.Tensor:
        """Run megatron's schedule; return the global `loss_sums` vector (same on every rank)."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        shape = check_micro_batches(micro_batches, self.cfg)
        weight_total = self._global_weight(micro_batches)
        if not weight_total > 0:  # decided on every rank alike (a raise on the last stage only would hang)
            if not forward_only:
                raise ValueError("train_step: no token of the global batch has a positive loss weight")
            weight_total = 1.0  # evaluation only reads the statistics
        prepared = [self._prepare(mb) for mb in micro_batches]
        outputs = get_forward_backward_func()(
            forward_step_func=partial(self._forward_step, weight_total=weight_total),
            data_iterator=[iter(prepared) for _ in self.model] if len(self.model) > 1 else iter(prepared),
            model=self.model,
            num_microbatches=len(prepared),
            seq_length=shape[1],
            micro_batch_size=shape[0],
            forward_only=forward_only,
        )
        return self._reduce_sums(outputs)

    def _forward_step(self, data_iterator: Iterator[dict], model: torch.nn.Module, *, weight_total: float):
        """Megatron forward-step callback: every stage gets the positions; the last one also the labels."""
        batch = next(data_iterator)
        post_process = model.module.post_process
        labels = batch["labels"] if post_process else None
        output = model(batch["tokens"], batch["position_ids"], attention_mask=None, labels=labels)
        return output, partial(_loss_func, batch, weight_total)

    def _prepare(self, micro_batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Move to the device and keep this context-parallel rank's share of the sequence."""
        from megatron.core import parallel_state

        batch = {
            k: v.to(self.device, non_blocking=True) if self.device is not None and torch.is_tensor(v) else v
            for k, v in micro_batch.items()
        }
        if parallel_state.get_context_parallel_world_size() > 1:
            from megatron_endprompt.parallel import slice_batch_for_cp

            batch = slice_batch_for_cp(batch)
        return batch

    def _global_weight(self, micro_batches: list[dict[str, torch.Tensor]]) -> float:
        """Loss-weight sum over all micro-batches of all data-parallel ranks (CP ranks hold the same data)."""
        from megatron.core import parallel_state

        local = sum(mb["loss_weights"].double().sum() for mb in micro_batches)
        total = torch.as_tensor(local, dtype=torch.float64, device=self.device).reshape(1)
        torch.distributed.all_reduce(total, group=parallel_state.get_data_parallel_group())
        return float(total.item())

    def _reduce_sums(self, outputs: list[dict]) -> torch.Tensor:
        """Sum the micro-batch statistics over micro-batches and DP x CP ranks; share them along the pipeline."""
        from megatron.core import parallel_state

        sums = torch.zeros(7, dtype=torch.float64, device=self.device)
        for out in outputs:
            sums += out["sums"].to(sums.device)
        torch.distributed.all_reduce(
            sums, group=parallel_state.get_data_parallel_group(with_context_parallel=True)
        )
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            torch.distributed.broadcast(
                sums,
                src=parallel_state.get_pipeline_model_parallel_last_rank(),
                group=parallel_state.get_pipeline_model_parallel_group(),
            )
        return sums.cpu()

    def _global_samples(self, micro_batches: list[dict[str, torch.Tensor]]) -> int:
        from megatron.core import parallel_state

        local = sum(mb["tokens"].shape[0] for mb in micro_batches)
        return local * parallel_state.get_data_parallel_world_size()

    # ------------------------------------------------------------------ access

    def sync_params(self) -> None:
        """Finish the distributed optimizer's pending parameter all-gather (overlap_param_gather).

        With overlap, updated parameter shards reach the other data-parallel ranks only in the next forward
        pass; checkpointing must see complete parameters first.
        """
        if self.cfg.optimizer.overlap_param_gather:
            for chunk in self.model:
                chunk.start_param_sync(force_sync=True)

    def unwrapped_model(self) -> list[torch.nn.Module]:
        """The EndPromptGPTModel chunks without their DDP wrappers."""
        return [chunk.module for chunk in self.model]


def _apply_performance_options(cfg: TrainConfig, chunks: list) -> None:
    """`--model.attention_backend / rope_fusion / ce_chunk_size` onto the (shared) TransformerConfig.

    The chunked cross entropy replaces the logits + vocab-parallel CE of the last stage; the per-token CE it
    returns goes through the same `_loss_func`, so the objective and its gradients are unchanged.
    """
    from megatron_endprompt.model import rope_fused
    from megatron_endprompt.model.gpt import set_performance_options

    m = cfg.model
    if m.rope_fusion == "triton" and not rope_fused.triton_available():
        raise ValueError("--model.rope_fusion triton needs CUDA and Triton; use none, compile or auto")
    for chunk in chunks:
        set_performance_options(
            chunk.module.config,
            sdpa_backend=m.attention_backend,
            rope_fusion=m.rope_fusion,
            ce_chunk_size=m.ce_chunk_size,
        )


def _loss_func(batch: dict[str, torch.Tensor], weight_total: float, per_token_ce: torch.Tensor):
    """Megatron loss callback (3-tuple form): (this micro-batch's share of the objective, 1, statistics)."""
    loss = weighted_loss(per_token_ce, batch["loss_weights"], weight_total)
    sums = loss_sums(per_token_ce, batch["loss_weights"], batch.get("cue_mask"))
    # The token count is unused (our finalize ignores it); it must be an int tensor for the schedule's sum.
    return loss, torch.ones((), dtype=torch.int, device=loss.device), {"sums": sums}


def check_micro_batches(micro_batches: list[dict[str, torch.Tensor]], cfg: TrainConfig) -> tuple[int, int]:
    """All micro-batches have every key and one [micro_batch_size, P] shape; returns that shape."""
    if not micro_batches:
        raise ValueError("train_step: got no micro-batches")
    for i, mb in enumerate(micro_batches):
        missing = [k for k in BATCH_KEYS if k not in mb]
        if missing:
            raise ValueError(f"micro-batch {i} lacks {missing}; expected keys {BATCH_KEYS}")
    shape = tuple(micro_batches[0]["tokens"].shape)
    for i, mb in enumerate(micro_batches):
        bad = [k for k in BATCH_KEYS if tuple(mb[k].shape) != shape]
        if len(shape) != 2 or bad:
            raise ValueError(
                f"micro-batch {i}: {bad or BATCH_KEYS} must all be [micro_batch_size, P] = {shape}"
            )
    p = cfg.parallel
    if p.context_parallel > 1 and shape[1] % (2 * p.context_parallel):
        raise ValueError(
            f"--data.seq_length: P={shape[1]} must be divisible by 2 * context_parallel = {2 * p.context_parallel}"
        )
    if p.sequence_parallel and (shape[1] // p.context_parallel) % p.tensor_parallel:
        raise ValueError(
            f"--data.seq_length: with sequence parallelism P / context_parallel = {shape[1] // p.context_parallel} "
            f"must be divisible by tensor_parallel = {p.tensor_parallel}"
        )
    return shape[0], shape[1]
