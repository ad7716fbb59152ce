"""KV cache for `EndPromptGPTModel` through megatron-core's static inference context, per-token RoPE kept.

megatron's static-batching attention (`Attention._adjust_key_value_for_inference`) writes each layer's keys and
values, before RoPE, into the context's buffers at cache slots [offset, offset + n), then rotates the queries
with rotary rows [offset, offset + n) and all cached keys with rows [0, offset + n). Those rows are cache slots,
not positions: `KVCacheContext` records the position id of every slot and `EndPromptGPTModel._preprocess` builds
the angles from them (`rope_positions`), so cached decoding accepts any per-token positions.

Three things megatron leaves to the caller, handled here:
- its buffers are allocated on `torch.cuda.current_device()`; this context allocates them on the model's device;
- past the first forward it switches attention to `no_mask`, right for one new token only: several new tokens
  (a draft to verify) need the causal mask from `attention_mask(n)`;
- it keeps only the last token's hidden state unless told otherwise; callers here choose their rows.
Rolling back (a rejected draft) is setting `sequence_len_offset`: later writes overwrite the stale slots.
"""

from __future__ import annotations

import torch
from megatron.core.inference.contexts import StaticInferenceContext


class KVCacheContext(StaticInferenceContext):
    """megatron's `StaticInferenceContext` plus the RoPE position of every cache slot.

    Pass it as `inference_context=` to the model's forward with the new tokens and their positions, then advance
    `sequence_len_offset` by the number of new tokens (megatron's own generation loop does the same).
    """

    def __init__(self, gpt: torch.nn.Module, capacity: int, batch_size: int = 1) -> None:
        super().__init__(max_batch_size=batch_size, max_sequence_length=capacity)
        self.materialize_only_last_token_logits = False
        param = next(gpt.parameters())
        self.position_ids = torch.zeros(batch_size, capacity, dtype=torch.long, device=param.device)
        """[b, capacity] position id of every slot (valid below the current offset)."""
        for layer in gpt.decoder.layers:
            attention = layer.self_attention
            shape = (
                capacity,
                batch_size,
                attention.num_query_groups_per_partition,
                attention.hidden_size_per_attention_head,
            )
            self.key_value_memory_dict[attention.layer_number] = (
                torch.empty(shape, dtype=param.dtype, device=param.device),
                torch.empty(shape, dtype=param.dtype, device=param.device),
            )

    def rope_positions(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Record the new tokens' positions [b, n] at slots [offset, offset + n); return those of every slot
        up to there [b, offset + n] (megatron indexes its rotary rows by slot)."""
        start = self.sequence_len_offset
        end = start + position_ids.shape[1]
        if end > self.max_sequence_length:
            raise ValueError(f"KV cache holds {self.max_sequence_length} tokens, {end} requested")
        self.position_ids[:, start:end] = position_ids
        return self.position_ids[:, :end]

    def attention_mask(self, n: int) -> torch.Tensor | None:
        """Mask for n new tokens at the current offset: None where megatron's own choice is right (the first
        forward is causal, a single token sees every slot), else [1, 1, n, offset + n], True where a new token
        must not look (the new tokens after it)."""
        start = self.sequence_len_offset
        if start == 0 or n == 1:
            return None
        device = self.position_ids.device
        rows = torch.arange(n, device=device)[:, None] + start
        return (torch.arange(start + n, device=device)[None, :] > rows)[None, None]
