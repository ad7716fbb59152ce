"""LR schedule: warmup convention, and the decay phases against torch's own schedulers."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron_endprompt.training.config import OptimizerSection
from megatron_endprompt.training.schedule import lr_at


def _cfg(**changes) -> OptimizerSection:
    return dataclasses.replace(OptimizerSection(), **changes)


def test_constant_with_warmup_matches_the_paper_recipe():
    cfg = _cfg(lr=2e-5, lr_schedule="constant", warmup_steps=20)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-6)  # the first step already trains
    assert lrs[19] == pytest.approx(2e-5)
    assert all(b >= a for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[20:] == [2e-5] * 80


def test_no_warmup_starts_at_peak():
    assert lr_at(0, _cfg(lr=3e-4, warmup_steps=0)) == 3e-4


def _torch_decay(kind: str, peak: float, floor: float, steps: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    if kind == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=floor)
    else:
        sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, floor / peak, total_iters=steps)
    out = []
    for _ in range(steps + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_decay_after_warmup_matches_torch(kind):
    cfg = _cfg(lr=1e-3, min_lr=1e-4, lr_schedule=kind, warmup_steps=5, decay_steps=30)
    ours = [lr_at(5 + t, cfg) for t in range(31)]
    assert ours == pytest.approx(_torch_decay(kind, 1e-3, 1e-4, 30), rel=1e-9)
    assert lr_at(1000, cfg) == pytest.approx(1e-4)


def test_decay_steps_default_to_rest_of_training():
    cfg = _cfg(lr=1.0, min_lr=0.0, lr_schedule="linear", warmup_steps=10, decay_steps=None)
    assert lr_at(60, cfg, total_steps=110) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="decay_steps"):
        lr_at(60, cfg)


def test_errors_name_the_flag():
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_at(0, _cfg(lr_schedule="wsd"))
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, _cfg())
