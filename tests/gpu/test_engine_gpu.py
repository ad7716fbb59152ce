"""On CUDA: the training engine steps in bf16 and fp16 (loss scaling), and resumes exactly from a checkpoint.

Single process (nccl, world of 1). The CPU tests cover layouts and loss normalisation; this covers the device
paths the CPU cannot take: CUDA grad buffers, the fp16 grad scaler, CUDA RNG state in checkpoints.
"""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

from megatron_endprompt import positions  # noqa: E402
from megatron_endprompt.parallel import initialize  # noqa: E402
from megatron_endprompt.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from megatron_endprompt.training.config import TrainConfig  # noqa: E402
from megatron_endprompt.training.engine import Engine  # noqa: E402

SEQ, TARGET = 256, 65536


def _batches(n: int = 2, b: int = 2) -> list[dict[str, torch.Tensor]]:
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        segs = [positions.endprompt_pose(SEQ, TARGET, 8, 2, rng) for _ in range(b)]
        tokens = torch.from_numpy(rng.integers(0, 512, (b, SEQ + 1))).long()
        out.append({
            "tokens": tokens[:, :-1], "labels": tokens[:, 1:],
            "loss_weights": torch.stack([torch.from_numpy(positions.loss_weights(s, 0.1)) for s in segs]),
            "position_ids": torch.stack([torch.from_numpy(positions.position_ids(s)) for s in segs]),
        })  # fmt: skip
    return out


def _engine(dtype: str) -> Engine:
    initialize(1, 1, 1, seed=1234)
    cfg = TrainConfig()
    cfg.model.preset, cfg.model.use_te = "tiny", False
    cfg.precision.dtype = dtype
    cfg.optimizer.lr, cfg.optimizer.warmup_steps = 3e-3, 0
    cfg.training.train_steps = 10
    return Engine(cfg)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_steps_learn_and_resume_exactly(dtype, tmp_path):
    engine, data = _engine(dtype), _batches()
    results = [engine.train_step(data) for _ in range(4)]
    assert all(math.isfinite(r.loss) for r in results)
    updated = [r for r in results if not r.skipped]
    assert updated, f"{dtype}: every step was skipped by the loss scaler"
    assert results[-1].loss < results[0].loss
    save_checkpoint(engine, tmp_path, engine.iteration, engine.consumed_samples)
    expected = engine.train_step(data)
    resumed = _engine(dtype)
    load_checkpoint(resumed, tmp_path)
    got = resumed.train_step(data)
    assert got.loss == pytest.approx(expected.loss, rel=1e-6)
    assert got.grad_norm == pytest.approx(expected.grad_norm, rel=1e-6)
    assert got.skipped == expected.skipped and got.iteration == expected.iteration
