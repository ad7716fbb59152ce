"""Greedy decoding with draft verification, shared by the single-process and the multi-rank Megatron backends."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def greedy_recompute(
    tail_logits: Callable[[torch.Tensor, int], torch.Tensor],
    input_ids: Sequence[int],
    max_new_tokens: int,
    stop_ids: Sequence[int],
    device: torch.device | str,
    draft: Sequence[int] = (),
) -> list[int]:
    """Greedy decoding through `tail_logits`, whose backend decides a step's cost (the whole sequence without a
    KV cache; only the tokens not yet cached with one, see eval/kv_cache.py).

    `tail_logits(ids, n)` returns float logits [n, vocab] of the last n positions of ids [1, s]. A step feeds
    the tokens so far plus the rest of `draft` (a guess at the continuation) and reads the greedy token after
    every guessed prefix: tokens are accepted up to and including the first one that differs from the guess.
    The result is exactly the plain greedy continuation; a model that answers as guessed needs one forward
    instead of one per token (verification as in speculative decoding, with the reference as the draft).
    """
    prefix, guessed = [int(t) for t in input_ids], [int(t) for t in draft]
    new: list[int] = []
    while len(new) < max_new_tokens:
        on_draft = new == guessed[: len(new)]
        # at most max_new_tokens - len(new) tokens can be accepted: one after each guess token, one more
        guess = guessed[len(new) : max_new_tokens - 1] if on_draft else []
        ids = torch.tensor([prefix + new + guess], dtype=torch.long, device=device)
        for j, tok in enumerate(tail_logits(ids, len(guess) + 1).argmax(-1).tolist()):
            if tok in stop_ids:
                return new
            new.append(tok)
            if j == len(guess) or tok != guess[j]:
                break
    return new
