"""`load_model`: a converted or trained megatron checkpoint as a single-process PyTorch module."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from megatron_endprompt.convert import megatron_io
from megatron_endprompt.model.config import ModelConfig

logger = logging.getLogger(__name__)


class LoadedModel(torch.nn.Module):
    """Wraps `EndPromptGPTModel` for inference: true-vocabulary float logits, default positions."""

    def __init__(self, model: torch.nn.Module, config: ModelConfig, checkpoint_dir: Path):
        super().__init__()
        self.model = model
        self.config = config
        self.checkpoint_dir = checkpoint_dir

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [b, s, vocab_size] (float32, on the model's device) for `input_ids` [b, s] (moved to the
        model's device); positions default to 0..s-1."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        device = next(self.model.parameters()).device
        input_ids = input_ids.to(device)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=device).expand_as(input_ids)
        logits = self.model(input_ids, position_ids.to(device))
        return logits[..., : self.config.vocab_size].float()


def load_model(
    megatron_dir: str | Path, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """Load a megatron checkpoint dir (ours, saved at any TP/PP) into one process, in eval mode.

    `megatron_dir` is a converted dir, a training iteration dir, or a training save root (its `latest`
    is followed). torch.distributed and parallel_state (TP=PP=CP=1) are initialised when needed.
    device: None means CUDA when available, else CPU. Parameters are frozen (requires_grad False).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    ckpt = megatron_io.resolve_checkpoint_dir(megatron_dir)
    cfg = megatron_io.read_model_json(ckpt)
    prefix = megatron_io.checkpoint_prefix(megatron_io.checkpoint_metadata(ckpt))
    model = megatron_io.build_model(cfg, dtype)
    sharded_sd = model.sharded_state_dict(prefix=prefix)
    loaded = megatron_io.load_dist_checkpoint(sharded_sd, ckpt)
    model.load_state_dict({k[len(prefix) :]: v for k, v in loaded.items()}, strict=True)
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    logger.info("loaded %s (%d layers, vocab %d)", ckpt, cfg.num_layers, cfg.vocab_size)
    return LoadedModel(model, cfg, ckpt).eval()
