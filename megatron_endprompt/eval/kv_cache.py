"""Final hidden states of token sequences through a KV cache: a sequence that shares a prefix with the previous
one runs only the tokens after that prefix.

Evaluation asks for the hidden states of one growing sequence: the prompt (+ the reference answer as a draft),
then the prompt + one new token per step. `PrefixCachedForward.hidden(ids, rows)` reuses the cached keys and
values of the longest common prefix with the previous sequence and feeds the rest: prefill once, then one
token per step (several while a draft is verified). Rows the previous forward already produced are returned
without any forward (causal: a row depends only on the tokens up to it), which keeps the answer-scoring forward
free for generation's first step. Positions are 0..s-1 (evaluation never jumps positions).

The model is megatron's GPTModel (our EndPromptGPTModel) at CP = 1; every rank of a TP group makes the same
calls, so the collectives inside the forward line up.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from megatron_endprompt.eval.megatron_hooks import final_hidden
from megatron_endprompt.model.kv_cache import KVCacheContext

HEADROOM = 256
"""Cache slots allocated past the sequence that opens a cache (the generated tokens go there)."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of a and b."""
    n = 0
    for x, y in zip(a, b, strict=False):  # unequal lengths: the shorter one bounds the prefix
        if x != y:
            break
        n += 1
    return n


class PrefixCachedForward:
    """Hidden states of the last rows of token sequences, computed incrementally through a `KVCacheContext`."""

    def __init__(self, gpt: torch.nn.Module, device: torch.device, max_positions: int):
        self.gpt, self.device, self.max_positions = gpt, device, max_positions
        self.context: KVCacheContext | None = None
        self.tokens: list[int] = []
        """Tokens whose keys and values fill cache slots [0, len(tokens))."""
        self.start = 0
        """First position the latest forward fed; `hidden_rows` holds positions [start, len(tokens))."""
        self.hidden_rows: torch.Tensor | None = None
        self.kwargs: dict = {}

    def _kept(self, ids: list[int], rows: int) -> bool:
        return (
            self.hidden_rows is not None
            and len(ids) - rows >= self.start
            and len(ids) <= len(self.tokens)
            and self.tokens[: len(ids)] == ids
        )

    def _reuse(self, ids: list[int], rows: int) -> int:
        """Cached prefix the next forward keeps (0 when the cache must be opened anew)."""
        if self.context is None or self.context.max_sequence_length < len(ids):
            return 0
        return min(common_prefix(self.tokens, ids), len(ids) - rows)

    @torch.no_grad()
    def hidden(self, ids: Sequence[int], rows: int) -> tuple[torch.Tensor, dict]:
        """Final hidden states [rows, 1, h] of the last `rows` positions of `ids`, and the output layer's kwargs."""
        ids = [int(t) for t in ids]
        if not 1 <= rows <= len(ids):
            raise ValueError(f"rows must be in [1, {len(ids)}], got {rows}")
        if not self._kept(ids, rows):
            self._forward(ids, self._reuse(ids, rows))
        end = len(ids) - self.start
        return self.hidden_rows[end - rows : end], self.kwargs

    def _forward(self, ids: list[int], reuse: int) -> None:
        if reuse == 0 and (self.context is None or self.context.max_sequence_length < len(ids)):
            self.context = None  # free the old buffers before allocating larger ones
            capacity = min(self.max_positions, len(ids) + HEADROOM)
            self.context = KVCacheContext(self.gpt, capacity)
        context = self.context
        context.sequence_len_offset = reuse
        new = ids[reuse:]
        tokens = torch.tensor([new], dtype=torch.long, device=self.device)
        positions = torch.arange(reuse, len(ids), device=self.device).unsqueeze(0)
        self.hidden_rows, self.kwargs = final_hidden(
            self.gpt,
            tokens,
            positions,
            inference_context=context,
            attention_mask=context.attention_mask(len(new)),
            runtime_gather_output=True,
        )
        context.sequence_len_offset = len(ids)
        self.tokens, self.start = ids, reuse
