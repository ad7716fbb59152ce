"""Silence the upstream warnings that every launch prints and that say nothing about the run.

Each entry was checked against megatron-core 0.16.1 / torch 2.13 and is harmless for this project:

- "Transformer Engine and Apex are not installed. Falling back to ..." (megatron.core.optimizer, clip_grads,
  megatron_fsdp.mixed_precision) and "Apex is not installed. Falling back to Torch Norm" (models.backends,
  gpt_layer_specs): printed at import time whether or not TE/Apex would be used. Our layer-spec choice is logged
  once by `model.te_choice` (which names the reason when TE is not used); the torch fallbacks are the CPU path.
- "full scope is deprecated. Use empty cuda_graph_scope ...": megatron's own TransformerConfig default
  (`cuda_graph_scope="full"`) converted by its own __post_init__; CUDA graphs are never enabled here.
- "`load_state_dict` is deprecated ..." and "Please use DTensor instead and we are deprecating ShardedTensor":
  torch.distributed.checkpoint deprecations triggered inside megatron-core's checkpoint reader/writer.

Only these messages (matched from their start) in these categories are ignored; anything else still shows.
Call `quiet_upstream_warnings()` first thing in an entry point, before megatron.core is imported (the first
four are emitted while it is imported).
"""

from __future__ import annotations

import warnings

UPSTREAM_NOISE: tuple[tuple[str, type[Warning]], ...] = (
    (r"Transformer Engine and Apex are not installed\. Falling back to ", UserWarning),
    (r"Apex is not installed\. Falling back to Torch Norm", UserWarning),
    (r"full scope is deprecated\. Use empty cuda_graph_scope", UserWarning),
    (r"`load_state_dict` is deprecated and will be removed in future versions", FutureWarning),
    (r"Please use DTensor instead and we are deprecating ShardedTensor", FutureWarning),
)
"""(message regex, category) of every upstream warning this project silences."""


def quiet_upstream_warnings() -> None:
    """Install an ignore filter for each `UPSTREAM_NOISE` entry (idempotent: warnings dedups equal filters)."""
    for message, category in UPSTREAM_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
