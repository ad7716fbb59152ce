"""Learning-rate schedule: one pure function of the step index.

The engine asks for the rate of every optimizer step and writes it into the optimizer's param groups, so the
schedule has no state to checkpoint beyond the step counter.

Convention: `step` is the 0-based index of the optimizer step about to be taken. Warmup is linear and reaches the
peak on the last warmup step: lr(step) = lr * (step + 1) / warmup_steps for step < warmup_steps (unlike HF's and
Megatron-LM's schedules, the first step does not run at lr 0). After warmup:

- `constant`: the peak `lr` (the EndPrompt recipe: 2e-5 after 20 warmup steps);
- `cosine`: half a cosine from `lr` down to `min_lr` over `decay_steps`, then `min_lr`;
- `linear`: a straight line from `lr` down to `min_lr` over `decay_steps`, then `min_lr`.

`decay_steps` None means "the rest of training": total_steps - warmup_steps.
"""

from __future__ import annotations

import math
from typing import Protocol

SCHEDULES: tuple[str, ...] = ("constant", "cosine", "linear")


class ScheduleConfig(Protocol):
    """The fields of `training.config.OptimizerSection` the schedule reads."""

    lr: float
    min_lr: float
    lr_schedule: str
    warmup_steps: int
    decay_steps: int | None


def lr_at(step: int, optimizer_cfg: ScheduleConfig, total_steps: int | None = None) -> float:
    """Learning rate of the 0-based optimizer step `step`.

    `total_steps` (the run's optimizer steps) is only needed by decaying schedules without `decay_steps`.
    """
    if step < 0:
        raise ValueError(f"lr_at: step must be >= 0, got {step}")
    peak, warmup = optimizer_cfg.lr, optimizer_cfg.warmup_steps
    kind = optimizer_cfg.lr_schedule
    if kind not in SCHEDULES:
        raise ValueError(f"--optimizer.lr_schedule: unknown schedule {kind!r}; choose one of {SCHEDULES}")
    if step < warmup:
        return peak * (step + 1) / warmup
    if kind == "constant":
        return peak
    progress = min(1.0, (step - warmup) / _decay_steps(optimizer_cfg, total_steps))
    floor = optimizer_cfg.min_lr
    if kind == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (peak - floor) * (1.0 - progress)


def _decay_steps(optimizer_cfg: ScheduleConfig, total_steps: int | None) -> int:
    """Length of the decay phase; refuses a decaying schedule that has no end."""
    if optimizer_cfg.decay_steps is not None:
        steps = optimizer_cfg.decay_steps
    elif total_steps is not None:
        steps = total_steps - optimizer_cfg.warmup_steps
    else:
        raise ValueError(
            f"--optimizer.decay_steps: the {optimizer_cfg.lr_schedule} schedule needs decay_steps "
            "or the total number of training steps"
        )
    return max(1, steps)
