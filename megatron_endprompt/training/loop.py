"""The training loop: parallel init -> data -> engine -> (resume | init-from) -> steps, eval, checkpoints, logs.

`train(cfg)` runs on every rank of a torchrun job (or as one process). Rank 0 writes the logs; every rank takes
part in checkpoint saves and loads (megatron's distributed checkpointing is collective).
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from megatron_endprompt.training import batches, fault_injection, flops
from megatron_endprompt.training.config import TrainConfig
from megatron_endprompt.training.metrics import (
    MetricsLogger,
    NonFiniteLossError,
    Throughput,
    check_finite,
    peak_memory_gib,
)
from megatron_endprompt.training.signals import StopSignal
from megatron_endprompt.training.validation import data_identity, resume_data_problems

logger = logging.getLogger(__name__)


@dataclass
class TrainSummary:
    """What a finished run reports back (rank 0 has the same values as every other rank)."""

    start_iteration: int
    iteration: int
    consumed_samples: int
    losses: list[float] = field(default_factory=list)
    last_eval_loss: float | None = None
    stopped_by_signal: bool = False


@dataclass
class _Interval:
    """Per-step values accumulated between two log points."""

    losses: list[float] = field(default_factory=list)
    text: list[float] = field(default_factory=list)
    cue: list[float] = field(default_factory=list)
    skipped: int = 0
    sample_indices: list[int] = field(default_factory=list)
    sample_crc32: list[int] = field(default_factory=list)

    def add(self, result, ids: dict | None) -> None:
        self.losses.append(result.loss)
        self.text.append(result.text_loss)
        self.cue.append(result.cue_loss)
        self.skipped += int(result.skipped)
        if ids is not None:
            self.sample_indices.extend(ids["sample_indices"])
            self.sample_crc32.extend(ids["sample_crc32"])


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else None


def _set_determinism(cfg: TrainConfig) -> None:
    if cfg.debug.deterministic:
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def _data_parallel() -> tuple[int, int]:
    """(rank, size) of this process among data-parallel replicas (CP/TP/PP peers share data)."""
    from megatron.core import parallel_state as ps

    return ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()


def restore(cfg: TrainConfig, engine) -> tuple[int, int]:
    """Resume everything from --checkpoint.save when it already holds a checkpoint (this run's own progress: a
    requeued job continues), else from --checkpoint.load (a save dir or one checkpoint dir; must hold one), else
    load --checkpoint.init_from weights only. Returns (iteration, consumed_samples).

    Never starts over silently (`checkpoint_io.find_latest` raises instead), and never lets a later save meet an
    existing iteration directory: those newer than the resume point are renamed to `*.aside` first."""
    c = cfg.checkpoint
    if not (c.load or c.save or c.init_from):
        return 0, 0
    from megatron_endprompt.training import checkpoint as ckpt

    for source in (c.save, c.load):
        if source and _holds_checkpoint(source, allow_fresh_start=c.allow_fresh_start and source == c.save):
            state = ckpt.load_checkpoint(engine, source, fallback_to_previous=c.fallback_to_previous)
            iteration, consumed = _state_position(state, engine)
            _check_same_data(cfg, state)
            _set_aside_after(cfg, iteration)
            logger.info("resumed from %s at iteration %d (%d samples consumed)", source, iteration, consumed)
            return iteration, consumed
    if c.load:
        raise ValueError(f"--checkpoint.load {c.load}: no complete checkpoint found there")
    _set_aside_after(cfg, None)  # --checkpoint.allow_fresh_start: incomplete iterations make way
    if c.init_from:
        ckpt.load_checkpoint(engine, c.init_from, weights_only=True)
        logger.info("initialised weights from %s", c.init_from)
    return 0, 0


def _check_paths(cfg: TrainConfig) -> None:
    """Directories the run must read exist (before any process group or model is built)."""
    c = cfg.checkpoint
    for flag, path in (("--checkpoint.init_from", c.init_from), ("--checkpoint.load", c.load)):
        if path and not Path(path).is_dir():
            raise ValueError(f"{flag} {path}: no such directory")


def _holds_checkpoint(directory: str, allow_fresh_start: bool) -> bool:
    """Whether `directory` is a checkpoint dir or a save dir with one; CheckpointError (exit 2) when it holds
    iterations but none to resume from, unless a fresh start is allowed."""
    from megatron_endprompt.training.checkpoint_io import find_latest

    if (Path(directory) / "metadata.json").is_file():
        return True
    return find_latest(directory, allow_fresh_start=allow_fresh_start) is not None


def _check_same_data(cfg: TrainConfig, state: dict) -> None:
    from megatron_endprompt.training.checkpoint_io import CheckpointError

    problems = resume_data_problems(cfg, state.get("extra") or {})
    if problems and cfg.checkpoint.allow_changed_data:
        logger.warning(
            "resuming with changed data settings (--checkpoint.allow_changed_data): %s", "; ".join(problems)
        )
    elif problems:
        raise CheckpointError(
            f"resuming {state.get('path')}: " + "; ".join(problems) + ". Restore the setting, or pass "
            "--checkpoint.allow_changed_data true to resume anyway (the data order then differs from an "
            "uninterrupted run)"
        )


def _set_aside_after(cfg: TrainConfig, iteration: int | None) -> None:
    """Rank 0 renames iteration dirs of --checkpoint.save newer than `iteration` (all for None) to `*.aside`."""
    import torch.distributed as dist

    from megatron_endprompt.training.checkpoint_io import set_aside_after

    if cfg.checkpoint.save and _rank() == 0:
        set_aside_after(cfg.checkpoint.save, iteration)
    if dist.is_initialized():
        dist.barrier()


def _state_position(state, engine) -> tuple[int, int]:
    def get(name: str) -> int:
        if isinstance(state, dict) and name in state:
            return int(state[name])
        if hasattr(state, name):
            return int(getattr(state, name))
        return int(getattr(engine, name))

    return get("iteration"), get("consumed_samples")


def _save(cfg: TrainConfig, engine, iteration: int, consumed: int) -> None:
    from megatron_endprompt.training import checkpoint as ckpt

    save = cfg.checkpoint.save
    extra = data_identity(cfg)
    with fault_injection.kill_during_save(cfg.debug.kill_during_save_at, save, iteration) as before_commit:
        ckpt.save_checkpoint(
            engine,
            save,
            iteration,
            consumed,
            extra,
            keep_last=cfg.checkpoint.keep_last,
            before_commit=before_commit,
        )


def evaluate(cfg: TrainConfig, engine, valid: Sequence, dp: tuple[int, int]) -> dict[str, float | None]:
    """Loss on the first `eval_steps` global batches of the validation split (the same batches every time)."""
    d = cfg.data
    stream = batches.index_stream(0, cfg.logging.eval_steps, d.global_batch_size, d.micro_batch_size, *dp)
    weighted, weight, text, cue = 0.0, 0.0, [], []
    for _ in range(cfg.logging.eval_steps):
        micro = [batches.collate([valid[int(i)] for i in next(stream)]) for _ in range(cfg.num_micro_batches)]
        stats = engine.eval_stats(micro)
        weighted += stats.loss * stats.weight_sum
        weight += stats.weight_sum
        text.append(stats.text_loss)
        cue.append(stats.cue_loss)
    return {
        "eval_loss": weighted / weight if weight else None,
        "eval_text_loss": _mean(text),
        "eval_cue_loss": _mean(cue),
    }


class _Reporter:
    """Turns step results into metric records every log_interval steps (rank 0 writes them)."""

    def __init__(self, cfg: TrainConfig, start_iteration: int) -> None:
        self.cfg = cfg
        model = cfg.model_config()
        self.flops_per_token = flops.flops_per_token(model, cfg.data.seq_length)
        self.peak = _peak_flops(cfg)
        log_dir = cfg.logging.log_dir or cfg.checkpoint.save
        self.metrics = MetricsLogger(
            log_dir, enabled=_rank() == 0, tensorboard=cfg.logging.tensorboard, resume_step=start_iteration
        )
        self.throughput = Throughput()
        self.interval = _Interval()
        self.t_start = time.perf_counter()

    def step(self, result, ids: dict | None, last: bool) -> None:
        self.interval.add(result, ids)
        self.throughput.add(self.cfg.tokens_per_step)
        if result.iteration % self.cfg.logging.log_interval and not last:
            return
        tokens_per_s = self.throughput.read_and_reset()
        per_gpu = tokens_per_s * self.flops_per_token / self.cfg.world_size
        record = {
            "step": result.iteration,
            "consumed_samples": result.consumed_samples,
            "loss": _mean(self.interval.losses),
            "text_loss": _mean(self.interval.text),
            "cue_loss": _mean(self.interval.cue),
            "lr": result.lr,
            "grad_norm": None if math.isnan(result.grad_norm) else result.grad_norm,
            "skipped_steps": self.interval.skipped,
            "tokens_per_s": tokens_per_s,
            "tflops_per_gpu": per_gpu / 1e12,
            "mfu": flops.mfu(tokens_per_s / self.cfg.world_size, self.flops_per_token, self.peak),
            "peak_mem_gib": peak_memory_gib(),
            "elapsed_s": time.perf_counter() - self.t_start,
        }
        if self.cfg.debug.log_sample_indices:
            record["sample_indices"] = self.interval.sample_indices
            record["sample_crc32"] = self.interval.sample_crc32
        self.metrics.log(record)
        self.interval = _Interval()

    def log_eval(self, iteration: int, values: dict) -> None:
        self.metrics.log({"step": iteration, **values})


def _peak_flops(cfg: TrainConfig) -> float | None:
    if cfg.logging.peak_tflops:
        return cfg.logging.peak_tflops * 1e12
    import torch

    if not torch.cuda.is_available():
        return None
    dtype = "fp8" if cfg.precision.fp8 else cfg.precision.dtype
    return flops.peak_flops(torch.cuda.get_device_name(), dtype)


def _micro_batches(loader: Iterator[dict], n: int) -> list[dict]:
    return [next(loader) for _ in range(n)]


def train(cfg: TrainConfig) -> TrainSummary:
    """Run the whole training job described by a validated `cfg` (see module docstring)."""
    from megatron_endprompt.parallel import initialize
    from megatron_endprompt.training.datasets import build_splits
    from megatron_endprompt.training.engine import Engine

    _check_paths(cfg)
    _set_determinism(cfg)
    p = cfg.parallel
    initialize(
        p.tensor_parallel,
        p.pipeline_parallel,
        p.context_parallel,
        seed=cfg.training.seed,
        vp=p.virtual_pipeline_parallel,
    )
    model_config = cfg.model_config()
    train_set, valid_set = build_splits(cfg, model_config)
    if cfg.logging.eval_interval and valid_set is None:
        raise ValueError(
            "--logging.eval_interval: the validation split is empty; give --data.split a valid share"
        )
    engine = Engine(cfg, model_config)
    start, consumed = restore(cfg, engine)
    _write_config(cfg)
    total = cfg.train_steps
    summary = TrainSummary(start_iteration=start, iteration=start, consumed_samples=consumed)
    if start >= total:
        logger.info("nothing to do: checkpoint iteration %d >= train steps %d", start, total)
        return summary
    dp = _data_parallel()
    d = cfg.data
    stream = batches.index_stream(consumed, total - start, d.global_batch_size, d.micro_batch_size, *dp)
    loader = batches.micro_batch_loader(train_set, stream, d.num_workers, _pin_memory())
    reporter = _Reporter(cfg, start)
    logger.info(
        "training steps %d..%d (%d micro-batches per step per rank)", start + 1, total, cfg.num_micro_batches
    )
    stop = StopSignal(cfg.training.exit_signal)
    try:
        _run_steps(cfg, engine, loader, reporter, valid_set, dp, summary, stop)
    finally:
        stop.restore()
        reporter.metrics.close()
    logger.info("finished at step %d (%d samples consumed)", summary.iteration, summary.consumed_samples)
    return summary


def _run_steps(cfg, engine, loader, reporter, valid_set, dp, summary: TrainSummary, stop: StopSignal) -> None:
    total, gbs, c = cfg.train_steps, cfg.data.global_batch_size, cfg.checkpoint
    saved_at = None
    for iteration in range(summary.iteration + 1, total + 1):
        position = summary.consumed_samples
        micro_batches = _micro_batches(loader, cfg.num_micro_batches)
        result = engine.train_step(micro_batches)
        _check_step(result)
        fault_injection.kill_after_step(cfg.debug.kill_at_step, result.iteration)
        summary.iteration, summary.consumed_samples = result.iteration, position + gbs
        summary.losses.append(result.loss)
        if cfg.debug.signal_at_step == iteration and _rank() == 0:
            stop.send_to_self()
        summary.stopped_by_signal = stop.requested()
        last = iteration == total or summary.stopped_by_signal
        reporter.step(result, _sample_ids(cfg, position, micro_batches), last=last)
        if cfg.logging.eval_interval and (iteration % cfg.logging.eval_interval == 0 or iteration == total):
            values = evaluate(cfg, engine, valid_set, dp)
            summary.last_eval_loss = values["eval_loss"]
            reporter.log_eval(iteration, values)
        if c.save and c.save_interval and iteration % c.save_interval == 0:
            _save(cfg, engine, iteration, summary.consumed_samples)
            saved_at = iteration
        if summary.stopped_by_signal:
            break
    wanted = c.save_at_end or summary.stopped_by_signal
    if c.save and wanted and saved_at != summary.iteration:
        _save(cfg, engine, summary.iteration, summary.consumed_samples)
    if summary.stopped_by_signal:
        logger.warning(
            "stopped by %s after step %d%s; rerun the same command to resume",
            cfg.training.exit_signal,
            summary.iteration,
            " (checkpoint saved)" if c.save else " (no --checkpoint.save: nothing saved)",
        )


def _check_step(result) -> None:
    """Stop (exit 3) on a NaN/Inf loss or gradient norm, before this step can be saved."""
    check_finite(result.iteration, result.loss)
    if result.nonfinite_grad_norm:
        raise NonFiniteLossError(
            f"step {result.iteration}: gradient norm is {result.grad_norm} (loss {result.loss:.4f}); the update "
            "reached the weights, so the run stops before saving and `latest` still names the last good "
            "checkpoint. Lower --optimizer.lr or raise --optimizer.warmup_steps, and resume"
        )


def _sample_ids(cfg: TrainConfig, position: int, micro_batches: list[dict]) -> dict | None:
    """Debug: the step's stream positions (all ranks) and a CRC32 of each of this rank's token rows."""
    if not cfg.debug.log_sample_indices:
        return None
    rows = [row.numpy().tobytes() for mb in micro_batches for row in mb["tokens"]]
    return {
        "sample_indices": list(range(position, position + cfg.data.global_batch_size)),
        "sample_crc32": [zlib.crc32(row) for row in rows],
    }


def _pin_memory() -> bool:
    import torch

    return torch.cuda.is_available()


def _write_config(cfg: TrainConfig) -> None:
    """<save>/config.yaml: the resolved recipe of the (latest) run, for humans and for reruns."""
    if not cfg.checkpoint.save or _rank() != 0:
        return
    import yaml

    path = Path(cfg.checkpoint.save)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
