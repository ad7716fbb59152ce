"""RULER aggregation tasks over synthetic vocabularies: common words (cwe) and frequent words (fwe)."""

from __future__ import annotations

import math
import random

from megatron_endprompt.eval.tasks import vocab
from megatron_endprompt.eval.tasks.base import (
    Layout,
    PromptBuilder,
    Sample,
    TokenizerLike,
    build_sample,
    cycle_stream,
    derive_seed,
    largest_fitting_size,
)

CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the "
    "above list? Answer: The top 10 words that appear most often in the list are:"
)
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
    "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text? Answer: According to the coded "
    "text above, the three most frequently appeared words are:"
)
CWE_COMMON = 10
CWE_MAX_NEW_TOKENS = 96
FWE_MAX_NEW_TOKENS = 50
FWE_ALPHA = 2.0
CWE_VOCAB = 20000


def _numbered(words: list[str]) -> list[str]:
    return [f"{i + 1}. {w}" for i, w in enumerate(words)]


def _word_list(
    vocabulary: list[str], n_uncommon: int, repeats: tuple[int, int], seed: int
) -> tuple[list, list]:
    """10 common words repeated repeats[0] times and n_uncommon words repeated repeats[1] times, shuffled."""
    rng = random.Random(seed)
    chosen = rng.sample(vocabulary, CWE_COMMON + n_uncommon)
    common, uncommon = chosen[:CWE_COMMON], chosen[CWE_COMMON:]
    words = common * repeats[0] + uncommon * repeats[1]
    rng.shuffle(words)
    return words, common


def cwe(
    tokenizer: TokenizerLike, length: int, depth: float | None, seed: int, add_bos: bool = True
) -> Sample:
    """Common-word extraction at `length` tokens (`depth` is ignored); one solved example precedes it."""
    vocabulary = vocab.pseudo_words(random.Random(derive_seed(seed, "cwe-vocab")), CWE_VOCAB)
    # RULER's frequencies: below 4K tokens common words x6 and others x1 (example x3/x1), else x30/x3 (x10/x3).
    repeats, ex_repeats = ((6, 1), (3, 1)) if length < 4096 else ((30, 3), (10, 3))
    ex_words, ex_common = _word_list(vocabulary, 10, ex_repeats, derive_seed(seed, "cwe-example"))
    example = (
        CWE_TEMPLATE.format(context=" ".join(_numbered(ex_words))) + " " + " ".join(_numbered(ex_common))
    )
    head_text, tail_text = CWE_TEMPLATE.split("{context}")

    def layout_for(n_uncommon: int) -> Layout:
        words, _ = _word_list(vocabulary, n_uncommon, repeats, derive_seed(seed, "cwe-list"))
        items = _numbered(words)
        return Layout(example + "\n" + head_text, tail_text, cycle_stream(items), max_units=len(items))

    n_uncommon = min(largest_fitting_size(tokenizer, length, layout_for, add_bos), CWE_VOCAB - CWE_COMMON)
    _check_fits(tokenizer, length, layout_for(n_uncommon), add_bos, "cwe")
    _, common = _word_list(vocabulary, n_uncommon, repeats, derive_seed(seed, "cwe-list"))
    meta = {"depth": None, "seed": seed, "max_new_tokens": CWE_MAX_NEW_TOKENS, "uncommon_words": n_uncommon}
    return build_sample("cwe", tokenizer, layout_for(n_uncommon), length, common, meta, add_bos)


def _check_fits(tokenizer: TokenizerLike, length: int, layout: Layout, add_bos: bool, task: str) -> None:
    builder = PromptBuilder(tokenizer, layout, add_bos)
    if builder.count(builder.render(layout.max_units or 0, 0)) > length:
        raise ValueError(
            f"--lengths: {length} tokens is too short for task {task!r}: the word list does not fit"
        )


def _zeta(alpha: float, terms: int = 10000) -> float:
    """Riemann zeta by a partial sum plus the Euler-Maclaurin tail (no scipy needed)."""
    head = math.fsum(k**-alpha for k in range(1, terms))
    return head + terms ** (1 - alpha) / (alpha - 1) + 0.5 * terms**-alpha


def _zipf_text(codebook: list[str], num_words: int, seed: int) -> list[str]:
    """Rank k appears floor(num_words * k^-alpha / zeta(alpha)) times; rank 1 is the '...' noise."""
    z = _zeta(FWE_ALPHA)
    words = [w for k, w in enumerate(codebook, 1) for _ in range(int(num_words * k**-FWE_ALPHA / z))]
    random.Random(seed).shuffle(words)
    return words


def fwe(
    tokenizer: TokenizerLike, length: int, depth: float | None, seed: int, add_bos: bool = True
) -> Sample:
    """Frequent-word extraction at `length` tokens (`depth` is ignored)."""
    codebook = ["..."] + vocab.coded_words(
        random.Random(derive_seed(seed, "fwe-vocab")), max(length // 50, 10)
    )
    head_text, tail_text = FWE_TEMPLATE.split("{context}")

    def layout_for(num_words: int) -> Layout:
        words = _zipf_text(codebook, num_words, derive_seed(seed, "fwe-text"))
        return Layout(head_text, tail_text, cycle_stream(words or [""]), max_units=len(words))

    num_words = largest_fitting_size(tokenizer, length, layout_for, add_bos)
    # the three answers must be strictly more frequent than every other coded word
    counts = [int(num_words * k**-FWE_ALPHA / _zeta(FWE_ALPHA)) for k in range(2, 6)]
    if not counts[0] > counts[1] > counts[2] > counts[3]:
        raise ValueError(f"--lengths: {length} tokens is too short for task 'fwe' (word counts {counts} tie)")
    meta = {"depth": None, "seed": seed, "max_new_tokens": FWE_MAX_NEW_TOKENS, "num_words": num_words}
    return build_sample("fwe", tokenizer, layout_for(num_words), length, codebook[1:4], meta, add_bos)
