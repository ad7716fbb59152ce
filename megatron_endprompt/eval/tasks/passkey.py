"""Passkey retrieval (Landmark attention / PoSE template; see docs/evaluation.md)."""

from __future__ import annotations

import random

from megatron_endprompt.eval.tasks.base import (
    Layout,
    Needle,
    Sample,
    TokenizerLike,
    build_sample,
    cycle_stream,
)
from megatron_endprompt.eval.tasks.vocab import NOISE_SENTENCES, NOISE_WORDS

INSTRUCTION = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
MAX_NEW_TOKENS = 12


DEFAULT_KEY_MAX = 50000
"""Keys are drawn from 1..50000 as in Landmark attention and PoSE."""


def passkey(
    tokenizer: TokenizerLike,
    length: int,
    depth: float,
    seed: int,
    add_bos: bool = True,
    key_max: int = DEFAULT_KEY_MAX,
) -> Sample:
    """A passkey prompt of `length` tokens with the needle at `depth` (0 = start, 1 = end of the filler).

    `key_max` bounds the key (1..key_max); small models trained on shorter keys are evaluated with the same bound.
    """
    if key_max < 1:
        raise ValueError(f"passkey key_max must be >= 1, got {key_max}")
    key = str(random.Random(seed).randint(1, key_max))
    layout = Layout(
        head=INSTRUCTION + "\n",
        tail="\n" + QUESTION,
        stream=cycle_stream(NOISE_SENTENCES),
        needles=[Needle(NEEDLE.format(key=key), depth)],
        pad_words=NOISE_WORDS,
    )
    meta = {"depth": depth, "seed": seed, "max_new_tokens": MAX_NEW_TOKENS}
    return build_sample("passkey", tokenizer, layout, length, [key], meta, add_bos)
