"""Rank-0 training metrics: a console line, `metrics.jsonl` (one JSON object per logged step), TensorBoard.

Throughput fields: tokens_per_s (whole job), tflops_per_gpu = tokens_per_s * F / world_size / 1e12 with F the
model FLOPs per token of `flops.flops_per_token` (6N + 6 L d_attn s; recomputation not counted), and
mfu = tflops_per_gpu / peak TFLOP/s of one device (None when the peak is unknown, e.g. on CPU).
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the message names the step."""


def check_finite(step: int, loss: float) -> None:
    """Stop the run on a NaN/Inf loss, naming the step (the caller exits non-zero)."""
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"step {step}: training loss is {loss}; stopping. Lower --optimizer.lr, raise --optimizer.warmup_steps, "
            "or resume from an earlier checkpoint"
        )


def peak_memory_gib() -> float:
    """Peak accelerator memory allocated by this process (CUDA), else its peak resident set size (CPU)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 1024**3
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def truncate_after(path: Path, step: int) -> int:
    """Drop records with step > `step` (written by a run that died after its last checkpoint); returns how many."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record_step = json.loads(line).get("step", -1)
        except json.JSONDecodeError:  # a line cut short by a crash
            dropped += 1
            continue
        if record_step > step:
            dropped += 1
        else:
            kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    return dropped


class MetricsLogger:
    """Collects per-step results and writes one record every `log_interval` steps (rank 0 only)."""

    def __init__(
        self, log_dir: str | None, *, enabled: bool, tensorboard: bool, resume_step: int = 0
    ) -> None:
        self.enabled = enabled
        self.path = Path(log_dir) / METRICS_FILE if (log_dir and enabled) else None
        self._tb = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            dropped = truncate_after(self.path, resume_step)
            if dropped:
                logger.warning(
                    "metrics.jsonl: dropped %d records after the resumed step %d", dropped, resume_step
                )
            if tensorboard:
                self._tb = _open_tensorboard(Path(log_dir) / "tensorboard")

    def log(self, record: dict[str, Any]) -> None:
        """Write `record` (must contain `step`) to the console, metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
        logger.info(format_record(record))
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record, allow_nan=True) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step" and value is not None:
                    self._tb.add_scalar(key, value, record["step"])
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _open_tensorboard(directory: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning("--logging.tensorboard: tensorboard is not installed; writing metrics.jsonl only")
        return None
    return SummaryWriter(str(directory))


def format_record(r: dict[str, Any]) -> str:
    """One human-readable line: step, losses, lr, grad norm, throughput, memory."""
    parts = [f"step {r['step']}"]
    for key, fmt in (
        ("loss", "{:.4f}"),
        ("text_loss", "{:.4f}"),
        ("cue_loss", "{:.4f}"),
        ("eval_loss", "{:.4f}"),
        ("lr", "{:.3e}"),
        ("grad_norm", "{:.3f}"),
        ("tokens_per_s", "{:.0f}"),
        ("tflops_per_gpu", "{:.3g}"),
        ("mfu", "{:.1%}"),
        ("peak_mem_gib", "{:.2f}"),
    ):
        value = r.get(key)
        if value is None:
            continue
        parts.append(f"{key} {fmt.format(value) if isinstance(value, (int, float)) else value}")
    if "mfu" in r and r["mfu"] is None:
        parts.append("mfu n/a")
    return " | ".join(parts)


class Throughput:
    """Wall-clock throughput between two log points."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()
        self._tokens = 0

    def add(self, tokens: int) -> None:
        self._tokens += tokens

    def read_and_reset(self) -> float:
        """Tokens per second since the last call."""
        now = time.perf_counter()
        rate = self._tokens / max(now - self._t0, 1e-9)
        self._t0, self._tokens = now, 0
        return rate
