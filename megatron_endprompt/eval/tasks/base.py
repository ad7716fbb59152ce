"""Shared machinery of the synthetic tasks: the Sample record, seeds, and filling a haystack to a token budget.

A prompt is `head + context + tail`. The context is a list of filler units (sentences, list items, lines) with
needles inserted between units at a requested token depth, then a few padding words so that the whole prompt
hits the requested token length. Unit counts are found by exponential + binary search on the real tokenizer,
so lengths are exact up to the size of one padding word.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class TokenizerLike(Protocol):
    """What the tasks need from a tokenizer (`megatron_endprompt.data.tokenizers.Tokenizer` satisfies it)."""

    bos: int | None
    eod: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class Sample:
    """One evaluation prompt and what a correct answer must contain."""

    task: str
    """Task name, e.g. `passkey` or `niah_multikey_2`."""
    prompt_ids: list[int]
    """Token ids fed to the model (BOS included when the tokenizer has one)."""
    prompt_text: str
    """The prompt as text (without BOS)."""
    answers: list[str]
    """Reference strings; RULER string match looks for them in the generated text."""
    needle_depth_tokens: int | None
    """Index in `prompt_ids` where the target needle starts; None for tasks without a needle."""
    metadata: dict = field(default_factory=dict)
    """length, depth, seed, measured depth fraction, context span, generation budget, ..."""


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 63-bit seed from a base seed and labels (Python's hash() is salted per process)."""
    text = "|".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class UnitStream:
    """A prefix-stable, lazily extended list of filler units: unit i never depends on how many are taken."""

    def __init__(self, make_unit: Callable[[random.Random, int], str], seed: int):
        self._make_unit = make_unit
        self._rng = random.Random(seed)
        self._units: list[str] = []

    def take(self, n: int) -> list[str]:
        while len(self._units) < n:
            self._units.append(self._make_unit(self._rng, len(self._units)))
        return self._units[:n]


def cycle_stream(units: Sequence[str]) -> UnitStream:
    """A stream that repeats `units` forever (the 'repeat' haystack)."""
    return UnitStream(lambda _rng, i: units[i % len(units)], seed=0)


@dataclass(frozen=True)
class Needle:
    """Text to insert into the haystack at `depth` (fraction of haystack tokens before it)."""

    text: str
    depth: float


@dataclass
class Layout:
    """Everything that defines a prompt except the amount of filler."""

    head: str
    tail: str
    stream: UnitStream
    needles: list[Needle] = field(default_factory=list)
    pad_words: Sequence[str] = ()
    sep: str = " "
    max_units: int | None = None
    """Cap on filler units (a finite list such as a word list); None means the stream is endless."""


def _insert_points(unit_tokens: list[int], needles: list[Needle]) -> list[int]:
    """Index of the unit before which each needle goes, chosen by cumulative token count."""
    cumulative = list(itertools.accumulate(unit_tokens, initial=0))
    total = cumulative[-1]
    points = []
    for needle in needles:
        target = needle.depth * total
        k = bisect.bisect_left(cumulative, target)
        # pick the closer of the two boundaries around the target
        if k > 0 and (k >= len(cumulative) or target - cumulative[k - 1] < cumulative[k] - target):
            k -= 1
        points.append(min(k, len(unit_tokens)))
    return points


@dataclass
class _Rendered:
    text: str
    needle_offsets: list[int]
    context_span: tuple[int, int]


class PromptBuilder:
    """Renders a Layout with n units and p padding words, and counts tokens."""

    def __init__(self, tokenizer: TokenizerLike, layout: Layout, add_bos: bool = True):
        self.tok = tokenizer
        self.layout = layout
        # a Hugging Face tokenizer that never prepends its bos_token (prepends_bos False) gets none here either
        prepends = getattr(tokenizer, "prepends_bos", True)
        self.bos = [tokenizer.bos] if add_bos and prepends and tokenizer.bos is not None else []
        self._unit_tokens: list[int] = []

    def _unit_token_counts(self, n: int) -> list[int]:
        units = self.layout.stream.take(n)
        for unit in units[len(self._unit_tokens) :]:
            self._unit_tokens.append(len(self.tok.encode(self.layout.sep + unit)))
        return self._unit_tokens[:n]

    def render(self, n_units: int, n_pad: int) -> _Rendered:
        lay = self.layout
        units = lay.stream.take(n_units)
        points = _insert_points(self._unit_token_counts(n_units), lay.needles)
        # insert from the back so earlier indices stay valid; remember which part each needle is
        parts: list[str] = list(units)
        # ties keep Layout order (chains in variable tracking rely on it)
        order = sorted(range(len(points)), key=lambda i: (points[i], i), reverse=True)
        for i in order:
            parts.insert(points[i], _NeedleText(lay.needles[i].text, i))
        pad = [lay.pad_words[j % len(lay.pad_words)] for j in range(n_pad)] if lay.pad_words else []
        if pad:
            parts.append(" ".join(pad))
        text, offsets = lay.head, [0] * len(lay.needles)
        start = len(text)
        for j, part in enumerate(parts):
            text += lay.sep if j else ""
            if isinstance(part, _NeedleText):
                offsets[part.index] = len(text)
            text += str(part)
        end = len(text)
        return _Rendered(text + lay.tail, offsets, (start, end))

    def count(self, rendered: _Rendered) -> int:
        return len(self.bos) + len(self.tok.encode(rendered.text))

    def token_index(self, text: str, char_offset: int) -> int:
        """Token index at which the text starting at `char_offset` begins (whitespace belongs to it)."""
        return len(self.bos) + len(self.tok.encode(text[:char_offset].rstrip()))

    def ids(self, rendered: _Rendered) -> list[int]:
        return self.bos + self.tok.encode(rendered.text)


class _NeedleText(str):
    """A needle inside the parts list, tagged with its index in Layout.needles."""

    def __new__(cls, text: str, index: int):
        obj = super().__new__(cls, text)
        obj.index = index
        return obj


def _largest(fits: Callable[[int], bool], upper: int | None = None) -> int:
    """Largest n >= 0 with fits(n), assuming fits is monotone decreasing and fits(0) holds."""
    lo, hi = 0, 1
    while (upper is None or hi <= upper) and fits(hi):
        lo, hi = hi, hi * 2
    if upper is not None:
        hi = min(hi, upper + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def largest_fitting_size(
    tokenizer: TokenizerLike, length: int, layout_for_size: Callable[[int], Layout], add_bos: bool = True
) -> int:
    """Largest size s whose layout, with all its units, fits in `length` tokens (0 when none does)."""

    def fits(size: int) -> bool:
        layout = layout_for_size(size)
        builder = PromptBuilder(tokenizer, layout, add_bos)
        return builder.count(builder.render(layout.max_units or 0, 0)) <= length

    return _largest(fits)


def build_sample(
    task: str,
    tokenizer: TokenizerLike,
    layout: Layout,
    length: int,
    answers: list[str],
    metadata: dict,
    add_bos: bool = True,
) -> Sample:
    """Fill `layout` with as many units, then padding words, as fit in `length` tokens; build the Sample."""
    builder = PromptBuilder(tokenizer, layout, add_bos)
    fixed = builder.count(builder.render(0, 0))
    if fixed > length:
        raise ValueError(
            f"--lengths: {length} tokens is too short for task {task!r}: its instructions, needles and question "
            f"alone take {fixed} tokens"
        )
    n_units = _largest(lambda n: builder.count(builder.render(n, 0)) <= length, layout.max_units)
    max_pad = 4 * len(layout.pad_words) if layout.pad_words else 0
    n_pad = _largest(lambda p: builder.count(builder.render(n_units, p)) <= length, max_pad) if max_pad else 0
    rendered = builder.render(n_units, n_pad)
    ids = builder.ids(rendered)
    ctx_start = builder.token_index(rendered.text, rendered.context_span[0])
    ctx_end = builder.token_index(rendered.text, rendered.context_span[1])
    needle_starts = [builder.token_index(rendered.text, off) for off in rendered.needle_offsets]
    meta = dict(metadata, length=length, prompt_tokens=len(ids), context_span_tokens=[ctx_start, ctx_end])
    meta["filler_units"] = n_units
    needle_depth = None
    if needle_starts:
        needle_depth = needle_starts[0]
        meta["needle_starts_tokens"] = needle_starts
        lengths = [len(tokenizer.encode(" " + n.text)) for n in layout.needles]
        # depth = share of haystack tokens (other needles excluded) before the target needle
        before = (
            needle_depth
            - ctx_start
            - sum(n for s, n in zip(needle_starts, lengths, strict=True) if s < needle_depth)
        )
        haystack = max(1, ctx_end - ctx_start - sum(lengths))
        meta["needle_depth_fraction"] = before / haystack
    return Sample(task, ids, rendered.text, list(answers), needle_depth, meta)
