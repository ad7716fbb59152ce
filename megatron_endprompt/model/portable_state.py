"""Loading a model's weights from a checkpoint written under another layer spec (Transformer Engine <-> local).

Both specs store the same weights under the same keys: megatron's local layer spec maps its input norms to
the names of TE's fused layernorm-linear weights (`input_layernorm.weight` is saved as
`self_attention.linear_qkv.layer_norm_weight`, `pre_mlp_layernorm.weight` as `mlp.linear_fc1.layer_norm_weight`),
so a checkpoint holds one set of tensor names whichever spec wrote it. What differs is TE's `_extra_state`:
every TE module (linears, core attention, norms) adds a serialized object with its FP8 scaling metadata.

- A checkpoint from the local spec (our HF conversion, a CPU run) has no `_extra_state`. A TE model loading
  it requests those objects; a strict load would fail. Here they are skipped and the TE modules keep their
  fresh FP8 metadata (amax histories start empty, as in any new FP8 run); every tensor must still be present.
- A checkpoint from the TE spec loads into the local spec as is: keys the model does not request (the
  `_extra_state` objects) are left unread by megatron's loader.

`_extra_state` objects are pickled bytes; loading them runs `pickle` (see docs/reliability.md, "Trust").
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

EXTRA_STATE = "_extra_state"


class CheckpointMismatchError(ValueError):
    """The checkpoint lacks weights the model needs (not only Transformer Engine metadata)."""


def is_extra_state_key(key: str) -> bool:
    """True for a TE `_extra_state` entry: a state-dict key `...x._extra_state` or a sharded key with a
    `/shard_...` suffix."""
    return key.split("/", 1)[0].rsplit(".", 1)[-1] == EXTRA_STATE


def load_sharded_model_state(sharded_state_dict: dict, ckpt_dir: str | Path, **load_kwargs) -> dict:
    """`dist_checkpointing.load` of a model's sharded state dict, tolerating absent `_extra_state` objects.

    Raises CheckpointMismatchError naming the directory and the first absent keys when anything else the
    model requests is not in the checkpoint. `load_kwargs` go to `dist_checkpointing.load` (strategies,
    `validate_access_integrity`).
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    # megatron's words: "unexpected" = requested but absent from the checkpoint (the third item returned);
    # "missing" = in the checkpoint but not requested, e.g. TE metadata when the local spec loads.
    state, _, absent = dist_checkpointing.load(
        sharded_state_dict, str(ckpt_dir), strict=StrictHandling.RETURN_UNEXPECTED, **load_kwargs
    )
    weights = sorted(k for k in absent if not is_extra_state_key(k))
    if weights:
        raise CheckpointMismatchError(
            f"{ckpt_dir}: the checkpoint lacks {len(weights)} entries the model needs, e.g. {weights[:4]}; "
            "was it saved for another architecture?"
        )
    if absent:
        logger.info(
            "%s: no Transformer Engine metadata for %d module(s) (a checkpoint from the local layer spec); "
            "their FP8 scaling state starts fresh",
            ckpt_dir,
            len(absent),
        )
    return state


def load_model_state(module: torch.nn.Module, state_dict: dict) -> None:
    """`module.load_state_dict` that accepts missing `_extra_state` entries and nothing else."""
    result = module.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not is_extra_state_key(k)]
    if missing or result.unexpected_keys:
        raise CheckpointMismatchError(
            f"loaded state does not fit the model: missing {missing[:4]}, unexpected {result.unexpected_keys[:4]}"
        )
