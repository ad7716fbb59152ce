"""RMSNorm for megatron's local spec that supports sequence parallelism.

Megatron's torch-norm wrapper (used when neither TE nor Apex is installed) refuses sequence parallelism and
allocates its weight in fp32 on the CPU whatever the config says. This one follows the config (dtype, device)
and tags its weight `sequence_parallel` so megatron's `finalize_model_grads` all-reduces its gradient over the
tensor-parallel group when sequence parallelism is on. The math is HF Llama's: normalise in float32, cast
back to the input dtype, then scale.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.transformer_config import TransformerConfig


class RMSNorm(torch.nn.Module):
    """y = weight * (x / sqrt(mean(x^2) + eps)), statistics in float32."""

    def __init__(
        self,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str = "RMSNorm",
    ) -> None:
        super().__init__()
        if normalization != "RMSNorm" or zero_centered_gamma:
            raise ValueError("megatron_endprompt RMSNorm supports only plain RMSNorm (LLaMA)")
        device = "cpu" if config.use_cpu_initialization else torch.cuda.current_device()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype, device=device))
        self.weight.sequence_parallel = config.sequence_parallel
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)
