"""RULER needle-in-a-haystack variants with download-free haystacks.

| task | haystack | key | value | keys / values / queries |
|---|---|---|---|---|
| niah_single_1 | repeat noise | word | number | 1/1/1 |
| niah_single_2 | synthetic prose | word | number | 1/1/1 |
| niah_single_3 | synthetic prose | word | uuid | 1/1/1 |
| niah_multikey_1 | synthetic prose | word | number | 4/1/1 |
| niah_multikey_2 | distractor needles | word | number | 1/1/1 |
| niah_multikey_3 | distractor needles | uuid | uuid | 1/1/1 |
| niah_multivalue | synthetic prose | word | number | 1/4/1 |
| niah_multiquery | synthetic prose | word | number | 4/1/4 |

RULER uses Paul Graham essays where we use synthetic prose; everything else follows RULER's definition.
The first queried needle goes at the requested depth; other needles at seeded random depths.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from megatron_endprompt.eval.tasks import vocab
from megatron_endprompt.eval.tasks.base import (
    Layout,
    Needle,
    Sample,
    TokenizerLike,
    UnitStream,
    build_sample,
    cycle_stream,
    derive_seed,
)

NEEDLE = "One of the special magic {kind} for {key} is: {value}."
INTRO = (
    "{some} special magic {kind} {are} hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind} afterwards."
)
QUESTION = "What {are_all} the special magic {kind} for {query} mentioned in the provided text?"
ANSWER_PREFIX = "The special magic {kind} for {query} mentioned in the provided text {are}"


@dataclass(frozen=True)
class NiahConfig:
    """One RULER niah variant."""

    haystack: str
    """`repeat` (noise sentences), `prose` (synthetic essay stand-in) or `needle` (distractor needles)."""
    key_type: str = "words"
    """Kind of keys: words, numbers or uuids."""
    value_type: str = "numbers"
    """Kind of values: words, numbers or uuids."""
    num_keys: int = 1
    """Keys hidden in the text (extra keys are distractors unless queried)."""
    num_values: int = 1
    """Values per key."""
    num_queries: int = 1
    """Keys asked about."""
    max_new_tokens: int = 24
    """Generation budget."""


VARIANTS: dict[str, NiahConfig] = {
    "niah_single_1": NiahConfig("repeat"),
    "niah_single_2": NiahConfig("prose"),
    "niah_single_3": NiahConfig("prose", value_type="uuids", max_new_tokens=48),
    "niah_multikey_1": NiahConfig("prose", num_keys=4),
    "niah_multikey_2": NiahConfig("needle"),
    "niah_multikey_3": NiahConfig("needle", key_type="uuids", value_type="uuids", max_new_tokens=48),
    "niah_multivalue": NiahConfig("prose", num_values=4, max_new_tokens=64),
    "niah_multiquery": NiahConfig("prose", num_keys=4, num_queries=4, max_new_tokens=64),
}


def _haystack(cfg: NiahConfig, seed: int, exclude: set[str]) -> UnitStream:
    if cfg.haystack == "repeat":
        return cycle_stream(vocab.NOISE_SENTENCES)
    if cfg.haystack == "prose":
        return UnitStream(lambda rng, _i: vocab.prose_sentence(rng), seed)

    def distractor(rng: random.Random, _i: int) -> str:
        key = vocab.distinct(lambda r: vocab.random_value(cfg.key_type, r), rng, 1, exclude)[0]
        return NEEDLE.format(kind=cfg.value_type, key=key, value=vocab.random_value(cfg.value_type, rng))

    return UnitStream(distractor, seed)


def _texts(cfg: NiahConfig, queries: list[str]) -> tuple[str, str]:
    """Head and tail of the prompt, singular when exactly one value is asked for (as RULER does)."""
    single = cfg.num_queries * cfg.num_values == 1
    kind = cfg.value_type[:-1] if single else cfg.value_type
    query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
    words = (
        {"some": "A", "are": "is", "are_all": "is"}
        if single
        else {"some": "Some", "are": "are", "are_all": "are all"}
    )
    head = INTRO.format(kind=kind, **words) + "\n"
    tail = (
        "\n"
        + QUESTION.format(kind=kind, query=query, **words)
        + " "
        + ANSWER_PREFIX.format(kind=kind, query=query, **words)
    )
    return head, tail


def niah(
    variant: str,
    tokenizer: TokenizerLike,
    length: int,
    depth: float,
    seed: int,
    add_bos: bool = True,
    number_digits: int = 7,
) -> Sample:
    """A RULER niah prompt of `length` tokens; the first queried needle sits at `depth`.

    `number_digits` sets the length of `numbers` values (RULER: 7); small models use fewer.
    """
    cfg = VARIANTS[variant]
    if not 1 <= number_digits <= 18:
        raise ValueError(f"niah number_digits must be in [1, 18], got {number_digits}")
    rng = random.Random(seed)
    keys = vocab.distinct(
        lambda r: vocab.random_value(cfg.key_type, r), rng, max(cfg.num_keys, cfg.num_queries)
    )

    def draw_value(r: random.Random) -> str:
        if cfg.value_type == "numbers":
            return vocab.random_number(r, number_digits)
        return vocab.random_value(cfg.value_type, r)

    values = [vocab.distinct(draw_value, rng, cfg.num_values) for _ in keys]
    queried = rng.sample(range(len(keys)), cfg.num_queries)
    needles, primary = [], None
    for k, key in enumerate(keys):
        for j, value in enumerate(values[k]):
            is_primary = k == queried[0] and j == 0
            text = NEEDLE.format(kind=cfg.value_type, key=key, value=value)
            needle = Needle(text, depth if is_primary else rng.random())
            primary = needle if is_primary else primary
            needles.append(needle)
    needles.remove(primary)
    needles.insert(0, primary)  # build_sample reports the first needle's depth
    head, tail = _texts(cfg, [keys[q] for q in queried])
    layout = Layout(
        head=head,
        tail=tail,
        stream=_haystack(cfg, derive_seed(seed, "haystack"), set(keys)),
        needles=needles,
        pad_words=vocab.NOISE_WORDS,
        sep="\n" if cfg.haystack == "needle" else " ",
    )
    answers = [v for q in queried for v in values[q]]
    meta = {"depth": depth, "seed": seed, "max_new_tokens": cfg.max_new_tokens, "variant": cfg.__dict__}
    return build_sample(variant, tokenizer, layout, length, answers, meta, add_bos)
