"""RULER variable tracking: follow a chain of `VAR X = VAR Y` assignments hidden in noise."""

from __future__ import annotations

import random
import string

from megatron_endprompt.eval.tasks import vocab
from megatron_endprompt.eval.tasks.base import (
    Layout,
    Needle,
    Sample,
    TokenizerLike,
    build_sample,
    cycle_stream,
)

TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {value} in the text above."
)
ANSWER_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {n} variables are assgined "
    "the value {value}, they are:"
)
NUM_HOPS = 4
MAX_NEW_TOKENS = 30


def _chain(rng: random.Random, name_len: int) -> tuple[list[str], list[str], str]:
    names = vocab.distinct(
        lambda r: "".join(r.choices(string.ascii_uppercase, k=name_len)), rng, NUM_HOPS + 1
    )
    value = str(rng.randint(10000, 99999))
    statements = [f"VAR {names[0]} = {value}"]
    statements += [f"VAR {names[j + 1]} = VAR {names[j]}" for j in range(NUM_HOPS)]
    return names, statements, value


def _example(rng: random.Random) -> str:
    """A short solved example (RULER adds one few-shot example with 3-letter names)."""
    names, statements, value = _chain(rng, 3)
    noise = list(vocab.NOISE_SENTENCES)
    positions = sorted(rng.sample(range(len(noise)), len(statements)))
    for j, (pos, stmt) in enumerate(zip(positions, statements, strict=True)):
        noise.insert(pos + j, stmt)  # + j: earlier insertions shift later slots
    context = " ".join(noise)
    text = TEMPLATE.format(context=context, value=value) + ANSWER_PREFIX.format(n=len(names), value=value)
    return text + " " + " ".join(names)


def vt(tokenizer: TokenizerLike, length: int, depth: float | None, seed: int, add_bos: bool = True) -> Sample:
    """A variable-tracking prompt of `length` tokens; `depth` is ignored (statements at seeded random depths)."""
    rng = random.Random(seed)
    example = _example(rng)
    names, statements, value = _chain(rng, 5)
    depths = sorted(rng.random() for _ in statements)
    head_text, tail_text = TEMPLATE.split("{context}")
    layout = Layout(
        head=example + "\n\n" + head_text,
        tail=tail_text.format(value=value) + ANSWER_PREFIX.format(n=len(names), value=value),
        stream=cycle_stream(vocab.NOISE_SENTENCES),
        needles=[Needle(s, d) for s, d in zip(statements, depths, strict=True)],
        pad_words=vocab.NOISE_WORDS,
    )
    meta = {"depth": None, "seed": seed, "max_new_tokens": MAX_NEW_TOKENS, "num_hops": NUM_HOPS}
    return build_sample("vt", tokenizer, layout, length, names, meta, add_bos)
