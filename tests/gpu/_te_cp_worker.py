"""2-GPU worker for test_te_gpu.py: the loss of one batch under the TE spec at CP=1 (DP=2, same batch on both
ranks) and at CP=2 (TE's context-parallel attention over our CP slicing). argv: CHECKPOINT OUT_FILE."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_te_gpu import SEQ, _batch  # noqa: E402


def eval_loss(ckpt: Path, cp: int) -> float:
    from megatron_endprompt.parallel import initialize
    from megatron_endprompt.training.checkpoint import load_checkpoint
    from megatron_endprompt.training.config import from_dict
    from megatron_endprompt.training.engine import Engine

    cfg = from_dict(
        {
            "model": {"config_file": str(ckpt / "endprompt_model.json"), "use_te": True},
            "parallel": {"context_parallel": cp},
            "precision": {"dtype": "bf16"},
            "optimizer": {"lr": 1e-5, "warmup_steps": 0},
            "data": {"seq_length": SEQ, "micro_batch_size": 2, "global_batch_size": 2 * (2 // cp),
                     "mock": True},
            "training": {"train_steps": 1},
        }
    )  # fmt: skip
    cfg.validate(2)
    initialize(tp=1, pp=1, cp=cp)
    engine = Engine(cfg)
    load_checkpoint(engine, ckpt, weights_only=True)
    batch = {**_batch(), "loss_weights": torch.ones(2, SEQ, device="cuda")}
    return engine.eval_loss([batch])


if __name__ == "__main__":
    checkpoint, out = Path(sys.argv[1]), Path(sys.argv[2])
    losses = [eval_loss(checkpoint, 1), eval_loss(checkpoint, 2)]
    if dist.get_rank() == 0:
        out.write_text(f"{losses[0]} {losses[1]}\n")
