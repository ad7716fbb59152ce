"""Forming fixed-length samples from tokenised documents (the builder's --packing modes).

concat:   documents (each preceded by BOS with --prepend-bos, followed by EOD with --append-eod) form one token
          stream; sample i takes the next `text_length_i` tokens of it. The stream's tail shorter than a sample is dropped (counted).
document: one document per sample; its first `text_length_i` tokens are used (the rest counted as truncated) and a
          document shorter than that is skipped with reason "too_short".
aligned:  like concat, but every sample starts at a document start: whole documents fill the sample and the one
          that overflows it is cut, the rest of that document dropped (counted as truncated). No sample holds the
          end of a document without its beginning (a question without the passage it asks about), which is what
          concat packing does to every document that straddles a boundary ("fewer truncations" packing).
endprompt-tail with tail_source "document" (the released collator): the K terminal tokens are the last K tokens of
          the document that fills the sample (aligned: the one that overflows it; document: the sample's document),
          after the sample's first P-K tokens, its middle skipped; when that document fits (or has no more than K
          tokens inside the sample) the sample is the plain P tokens at contiguous positions (no jump).
text_length_i = P, minus the cue length b_i for the endprompt schemes. Sample i draws, from
np.random.default_rng([seed, i]) and in this order: the cue index (endprompt schemes), then the scheme's
randomness (placement, PoSE chunks and biases). Text tokens fill the text segments in physical order, the cue
tokens the cue segment (always last).

`origins()` gives, per sample, (document ordinal, token offset) of its first token: which source document it
starts in. Datasets built from the same documents (any scheme) share these, which is what lets training read the
same documents in the same order in every variant (data/blended.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np

from megatron_endprompt.positions import SchemeConfig, Segment, contiguous

PACKING_MODES = ("concat", "aligned", "document")


def sample_plan(scheme: SchemeConfig, cues: Sequence[np.ndarray], seed: int, index: int):
    """(rng, cue tokens or None, text length) for sample `index`; the rng continues into `scheme.segments`."""
    rng = np.random.default_rng([seed, index])
    cue = cues[int(rng.integers(len(cues)))] if scheme.uses_cue else None
    return rng, cue, scheme.text_length(0 if cue is None else len(cue))


class Packer:
    """Consumes documents (`feed`) and yields finished samples (`drain`) as (tokens int64 [P], segments)."""

    def __init__(self, scheme: SchemeConfig, cues: Sequence[np.ndarray], seed: int, packing: str) -> None:
        if scheme.tail_source == "document" and packing == "concat":
            raise ValueError(
                "--tail-source document needs --packing aligned or document (with concat the document that "
                "fills a sample continues into the next one)"
            )
        self.scheme, self.cues, self.seed, self.packing = scheme, list(cues), seed, packing
        self._chunks: deque[tuple[np.ndarray, int, int]] = deque()  # (tokens, document ordinal, offset)
        self._buffered = 0
        self._documents = 0
        self._ready: list[tuple[np.ndarray, list[Segment]]] = []
        self._origins: list[tuple[int, int]] = []
        self.samples = self.text_tokens = self.cue_tokens = self.truncated = 0
        self._plan = sample_plan(scheme, self.cues, seed, 0)

    def feed(self, ids: np.ndarray) -> str | None:
        """Add one document's tokens; returns a skip reason ("too_short") or None."""
        document = self._documents
        self._documents += 1
        ids = np.asarray(ids, dtype=np.int64)
        if self.packing == "document":
            need = self._plan[2]
            if len(ids) < need:
                return "too_short"
            self._chunks.append((ids, document, 0))
            self._buffered = len(ids)
            self._emit(*self._text(need, ids, room=need))
            self.truncated += self._buffered
            self._chunks.clear()
            self._buffered = 0
            return None
        if len(ids):
            self._chunks.append((ids, document, 0))
            self._buffered += len(ids)
        while self._buffered >= self._plan[2]:
            room = self._plan[2] - (self._buffered - len(ids))
            self._emit(*self._text(self._plan[2], ids, room))
            if self.packing == "aligned":  # the next sample starts with the next document
                self.truncated += self._buffered
                self._chunks.clear()
                self._buffered = 0
        return None

    def _text(self, need: int, last: np.ndarray, room: int) -> tuple[np.ndarray, bool | None]:
        """The sample's text and, for tail_source "document", whether it jumps (None: the scheme decides)."""
        if self.scheme.tail_source != "document":
            return self._take(need), None
        k = self.scheme.terminal_length
        if (
            len(last) <= room or room <= k
        ):  # the filling document fits, or too little of it is inside: no jump
            return self._take(need), False
        head = self._take(need - k)
        self._buffered -= k  # the document's last K tokens are used, not truncated
        return np.concatenate([head, last[-k:]]), True

    def _take(self, n: int) -> np.ndarray:
        parts, missing = [], n
        self._origins.append(self._chunks[0][1:])
        while missing:
            head, document, offset = self._chunks[0]
            if len(head) <= missing:
                parts.append(self._chunks.popleft()[0])
                missing -= len(head)
            else:
                parts.append(head[:missing])
                self._chunks[0] = (head[missing:], document, offset + missing)
                missing = 0
        self._buffered -= n
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _emit(self, text: np.ndarray, jump: bool | None = None) -> None:
        rng, cue, _ = self._plan
        segments = self.scheme.segments(rng, 0 if cue is None else len(cue))
        if jump is False:  # tail_source document without a jump: drawn (for the rng's sake), then replaced
            segments = contiguous(self.scheme.seq_length)
        tokens = text if cue is None else np.concatenate([text, cue])
        if len(tokens) != self.scheme.seq_length or sum(s.length for s in segments) != len(tokens):
            raise AssertionError("packer produced a sample whose length differs from --seq-length")
        self._ready.append((tokens, segments))
        self.samples += 1
        self.text_tokens += len(text)
        self.cue_tokens += 0 if cue is None else len(cue)
        self._plan = sample_plan(self.scheme, self.cues, self.seed, self.samples)

    def drain(self) -> Iterator[tuple[np.ndarray, list[Segment]]]:
        """Finished samples since the last call, in order."""
        ready, self._ready = self._ready, []
        yield from ready

    def counts(self) -> dict[str, int]:
        """Sample and token counts for meta.json (call after the last document)."""
        return {
            "samples": self.samples,
            "tokens": self.samples * self.scheme.seq_length,
            "text_tokens": self.text_tokens,
            "cue_tokens": self.cue_tokens,
            "tokens_truncated": self.truncated,
            "tokens_dropped_tail": self._buffered,
        }

    def origins(self) -> np.ndarray:
        """int64 [samples, 2]: (document ordinal among fed documents, token offset) of each sample's first token."""
        return np.asarray(self._origins, dtype=np.int64).reshape(-1, 2)
