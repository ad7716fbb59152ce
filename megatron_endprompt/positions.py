"""Position schemes: how a physical sample of P tokens is mapped onto RoPE position ids.

Pure numpy (no torch): the builder, the reader, the coverage report and the tests share these functions, so what
the data files store is exactly what these functions return.

A sample is a list of `Segment`s in physical order. Each segment is a run of tokens with contiguous position ids
starting at `first_position`; `role` is "text" (document text) or "cue" (a terminal prompt inserted by the
builder). Notation follows docs (METHOD.md): P physical length, T target length (largest position id + 1),
b cue length, K terminal length, N PoSE chunks.

Randomised schemes take a `numpy.random.Generator`; the builder seeds one per sample from (seed, sample index),
so outputs do not depend on worker count or iteration order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Role = Literal["text", "cue"]
ROLES: tuple[str, ...] = ("text", "cue")
SCHEMES: tuple[str, ...] = ("contiguous", "endprompt", "endprompt-tail", "pose", "endprompt-pose")
PLACEMENTS: tuple[str, ...] = ("fixed", "random")
TAIL_SOURCES: tuple[str, ...] = ("sample", "document")
"""Where endprompt-tail's K terminal tokens come from: the sample's own last K tokens, or (the released collator)
the last K tokens of the document that fills the sample, its middle skipped (builder --tail-source)."""


@dataclass(frozen=True)
class Segment:
    """A run of `length` physical tokens whose position ids are first_position, first_position+1, ..."""

    length: int
    first_position: int
    role: Role

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"Segment.length must be >= 1, got {self.length}")
        if self.first_position < 0:
            raise ValueError(f"Segment.first_position must be >= 0, got {self.first_position}")
        if self.role not in ROLES:
            raise ValueError(f"Segment.role must be one of {ROLES}, got {self.role!r}")

    @property
    def last_position(self) -> int:
        """Position id of the segment's last token."""
        return self.first_position + self.length - 1


# ----------------------------------------------------------------------------------------------------------------
# validation (errors name the builder flag that sets the offending value)


def _check_p(seq_length: int) -> None:
    if seq_length < 2:
        raise ValueError(f"--seq-length (P) must be >= 2, got {seq_length}")


def _check_jump(seq_length: int, target_length: int) -> None:
    _check_p(seq_length)
    if target_length <= seq_length:
        raise ValueError(
            f"--target-length (T={target_length}) must be > --seq-length (P={seq_length}) for a scheme with a "
            "positional jump; use --scheme contiguous for T == P"
        )


def _check_terminal(seq_length: int, length: int, flag: str) -> None:
    if length < 1:
        raise ValueError(f"{flag} must be >= 1, got {length}")
    if length >= seq_length:
        raise ValueError(f"{flag} ({length}) must be < --seq-length (P={seq_length}): no room left for text")


def _check_chunks(text_length: int, num_chunks: int) -> None:
    if num_chunks < 1:
        raise ValueError(f"--pose-chunks must be >= 1, got {num_chunks}")
    if num_chunks > text_length:
        raise ValueError(
            f"--pose-chunks ({num_chunks}) must be <= the text length per sample ({text_length})"
        )


def validate(
    scheme: str,
    seq_length: int,
    target_length: int,
    *,
    terminal_length: int | None = None,
    max_cue_length: int | None = None,
    pose_chunks: int = 2,
    placement: str = "fixed",
    tail_source: str = "sample",
) -> None:
    """Reject impossible settings before any work; messages name the flag to fix.

    `terminal_length` is K (endprompt-tail); `max_cue_length` is the longest tokenised cue (endprompt schemes).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"--scheme must be one of {SCHEMES}, got {scheme!r}")
    if tail_source not in TAIL_SOURCES:
        raise ValueError(f"--tail-source must be one of {TAIL_SOURCES}, got {tail_source!r}")
    if tail_source != "sample" and scheme != "endprompt-tail":
        raise ValueError(f"--tail-source {tail_source} applies to --scheme endprompt-tail only, not {scheme}")
    if scheme == "contiguous":
        _check_p(seq_length)
        if target_length < seq_length:
            raise ValueError(f"--target-length ({target_length}) must be >= --seq-length ({seq_length})")
        return
    _check_jump(seq_length, target_length)
    if scheme == "endprompt-tail":
        if terminal_length is None:
            raise ValueError("--terminal-length (K) is required for --scheme endprompt-tail")
        _check_terminal(seq_length, terminal_length, "--terminal-length (K)")
        if placement not in PLACEMENTS:
            raise ValueError(f"--placement must be one of {PLACEMENTS}, got {placement!r}")
        return
    if scheme in ("endprompt", "endprompt-pose"):
        if max_cue_length is None:
            raise ValueError(f"--cue/--cue-file is required for --scheme {scheme}")
        _check_terminal(seq_length, max_cue_length, "the longest --cue (tokens)")
    text_length = seq_length - (max_cue_length or 0)
    if scheme in ("pose", "endprompt-pose"):
        _check_chunks(text_length, pose_chunks)


# ----------------------------------------------------------------------------------------------------------------
# schemes


def contiguous(seq_length: int) -> list[Segment]:
    """One text segment at positions 0..P-1 (baseline; full-length fine-tuning when P == T)."""
    _check_p(seq_length)
    return [Segment(seq_length, 0, "text")]


def endprompt(seq_length: int, target_length: int, cue_length: int) -> list[Segment]:
    """Paper scheme: text a = P - b tokens at [0, a-1], then the b-token cue at [T-b, T-1] (eq. 5).

    Which predictions cross the jump: the first cue token is predicted at the last text position a-1, which
    attends only to text at positions <= a-1, so that prediction is short-range. Only the b-1 predictions made
    FROM cue positions T-b .. T-2 attend back across the jump to the text. A one-token cue (`@token:<eot>`)
    therefore gives no long-range gradient at all; the paper's main numbers equal its EP_1 row (one sentence cue).
    """
    _check_jump(seq_length, target_length)
    _check_terminal(seq_length, cue_length, "the --cue length (tokens)")
    text = seq_length - cue_length
    return [Segment(text, 0, "text"), Segment(cue_length, target_length - cue_length, "cue")]


def endprompt_tail(
    seq_length: int,
    target_length: int,
    terminal_length: int,
    placement: str = "fixed",
    rng: np.random.Generator | None = None,
) -> list[Segment]:
    """Released-code scheme: P text tokens, the last K of them at the end of the target window.

    fixed: terminal positions [T-K, T-1] (the released "pose_fixed_split" with final position T-1).
    random: terminal start s ~ U{P-K, ..., T-K} per sample (s = P-K means no jump). Every token keeps weight 1.
    Which K tokens they are (the sample's own last K, or the document's last K with its middle skipped) is the
    packer's choice (`SchemeConfig.tail_source`); the positions are the same. The predictions made from the K
    terminal positions (the first terminal token is predicted from position P-K-1, short-range) cross the jump.
    """
    _check_jump(seq_length, target_length)
    _check_terminal(seq_length, terminal_length, "--terminal-length (K)")
    head = seq_length - terminal_length
    if placement == "fixed":
        start = target_length - terminal_length
    elif placement == "random":
        if rng is None:
            raise ValueError("--placement random needs a random generator (rng)")
        start = int(rng.integers(head, target_length - terminal_length, endpoint=True))
    else:
        raise ValueError(f"--placement must be one of {PLACEMENTS}, got {placement!r}")
    return [Segment(head, 0, "text"), Segment(terminal_length, start, "text")]


def _chunk_lengths(text_length: int, num_chunks: int, rng: np.random.Generator) -> list[int]:
    """Chunk lengths (each >= 1) summing to text_length.

    N = 2 follows the released code: r1 ~ U{1, ..., floor((L+1)/2)}. N > 2: N-1 distinct cut points drawn
    uniformly from {1, ..., L-1}.
    """
    if num_chunks == 1:
        return [text_length]
    if num_chunks == 2:
        first = int(rng.integers(1, (text_length + 1) // 2, endpoint=True))
        return [first, text_length - first]
    cuts = np.sort(rng.choice(np.arange(1, text_length), size=num_chunks - 1, replace=False))
    bounds = np.concatenate([[0], cuts, [text_length]])
    return [int(x) for x in np.diff(bounds)]


def _skip_biases(num_chunks: int, max_bias: int, rng: np.random.Generator) -> list[int]:
    """PoSE skip biases: u_1 = 0, u_i ~ U{u_{i-1}, ..., max_bias} (nondecreasing, as in the PoSE paper)."""
    biases = [0]
    for _ in range(num_chunks - 1):
        biases.append(int(rng.integers(biases[-1], max_bias, endpoint=True)))
    return biases


def _pose_text(text_length: int, max_bias: int, num_chunks: int, rng: np.random.Generator) -> list[Segment]:
    lengths = _chunk_lengths(text_length, num_chunks, rng)
    biases = _skip_biases(num_chunks, max_bias, rng)
    segments, start = [], 0
    for length, bias in zip(lengths, biases, strict=True):
        segments.append(Segment(length, start + bias, "text"))
        start += length
    return segments


def pose(seq_length: int, target_length: int, num_chunks: int, rng: np.random.Generator) -> list[Segment]:
    """PoSE: N text chunks; chunk i has positions (physical start + u_i), 0 = u_1 <= ... <= u_N <= T-P."""
    _check_jump(seq_length, target_length)
    _check_chunks(seq_length, num_chunks)
    return _pose_text(seq_length, target_length - seq_length, num_chunks, rng)


def endprompt_pose(
    seq_length: int, target_length: int, cue_length: int, num_chunks: int, rng: np.random.Generator
) -> list[Segment]:
    """Hybrid: the a = P - b text tokens are laid out as PoSE chunks within [0, T-b-1], then the cue at [T-b, T-1].

    The largest skip bias is (T - b) - a = T - P, so the last text chunk never overlaps the cue.
    """
    _check_jump(seq_length, target_length)
    _check_terminal(seq_length, cue_length, "the --cue length (tokens)")
    text = seq_length - cue_length
    _check_chunks(text, num_chunks)
    segments = _pose_text(text, target_length - seq_length, num_chunks, rng)
    return segments + [Segment(cue_length, target_length - cue_length, "cue")]


# ----------------------------------------------------------------------------------------------------------------
# per-token arrays


def position_ids(segments: Sequence[Segment]) -> np.ndarray:
    """Per-token position ids (int64, length = sum of segment lengths)."""
    parts = [np.arange(s.first_position, s.first_position + s.length, dtype=np.int64) for s in segments]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def roles(segments: Sequence[Segment]) -> np.ndarray:
    """Per-token role flags (bool, True where the token belongs to a cue segment)."""
    parts = [np.full(s.length, s.role == "cue", dtype=bool) for s in segments]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def loss_weights(segments: Sequence[Segment], cue_loss_weight: float) -> np.ndarray:
    """Per-position loss weights (float32) aligned with the labels: weights[j] weighs the prediction of token j+1.

    A prediction whose target is a cue token gets `cue_loss_weight` (paper eq. 11: "prompt-token losses are
    assigned a smaller but nonzero weight"); this includes the prediction of the first cue token, which is made
    at the last text position (a-1) and does not cross the jump: it sees only text at positions <= a-1. The b-1
    predictions made from cue positions are the ones that attend across the jump. A text target gets 1.0. The
    last position has no target inside the sample and gets 0.
    """
    if cue_loss_weight < 0:
        raise ValueError(f"--cue-loss-weight must be >= 0, got {cue_loss_weight}")
    is_cue = roles(segments)
    weights = np.zeros(is_cue.shape[0], dtype=np.float32)
    weights[:-1] = np.where(is_cue[1:], np.float32(cue_loss_weight), np.float32(1.0))
    return weights


def max_position(segments: Sequence[Segment]) -> int:
    """Largest position id used by the sample (must stay < T)."""
    return max(s.last_position for s in segments)


# ----------------------------------------------------------------------------------------------------------------
# one entry point for the builder


@dataclass(frozen=True)
class SchemeConfig:
    """A position scheme and its parameters (the builder's --scheme and related flags)."""

    scheme: str = "contiguous"
    """One of SCHEMES (--scheme)."""
    seq_length: int = 8192
    """P, physical tokens per sample (--seq-length)."""
    target_length: int = 8192
    """T, largest position id + 1 (--target-length)."""
    terminal_length: int = 20
    """K, tail length for endprompt-tail (--terminal-length; released recipe 20)."""
    placement: str = "fixed"
    """endprompt-tail terminal placement, fixed or random (--placement)."""
    pose_chunks: int = 2
    """N, PoSE chunks for pose and endprompt-pose (--pose-chunks)."""
    tail_source: str = "sample"
    """endprompt-tail: `sample` (the sample's own last K tokens) or `document` (the released collator: the
    document's first P-K tokens + its last K, middle skipped, jumping only when it is longer than its room)
    (--tail-source)."""

    @property
    def uses_cue(self) -> bool:
        """Whether the builder must insert a cue (endprompt, endprompt-pose)."""
        return self.scheme in ("endprompt", "endprompt-pose")

    def validate(self, max_cue_length: int | None = None) -> None:
        """See `validate`."""
        validate(
            self.scheme,
            self.seq_length,
            self.target_length,
            terminal_length=self.terminal_length,
            max_cue_length=max_cue_length,
            pose_chunks=self.pose_chunks,
            placement=self.placement,
            tail_source=self.tail_source,
        )

    def text_length(self, cue_length: int = 0) -> int:
        """Document tokens one sample consumes (P minus the inserted cue)."""
        return self.seq_length - (cue_length if self.uses_cue else 0)

    def segments(self, rng: np.random.Generator, cue_length: int = 0) -> list[Segment]:
        """The segments of one sample (cue_length is used only by the endprompt schemes)."""
        p, t = self.seq_length, self.target_length
        if self.scheme == "contiguous":
            return contiguous(p)
        if self.scheme == "endprompt":
            return endprompt(p, t, cue_length)
        if self.scheme == "endprompt-tail":
            return endprompt_tail(p, t, self.terminal_length, self.placement, rng)
        if self.scheme == "pose":
            return pose(p, t, self.pose_chunks, rng)
        if self.scheme == "endprompt-pose":
            return endprompt_pose(p, t, cue_length, self.pose_chunks, rng)
        raise ValueError(f"--scheme must be one of {SCHEMES}, got {self.scheme!r}")

    def max_segments(self) -> int:
        """Upper bound on segments per sample (fixes the sidecar's record count per sample)."""
        return {"contiguous": 1, "endprompt": 2, "endprompt-tail": 2, "pose": self.pose_chunks}.get(
            self.scheme, self.pose_chunks + 1
        )
