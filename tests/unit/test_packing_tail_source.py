"""endprompt-tail's two constructions (--tail-source): the sample's own last K tokens, or the released collator's
document's last K after the sample's first P-K (middle skipped, jump only when the document exceeds its room);
and the (document, offset) origin recorded for every sample."""

import numpy as np
import pytest

from megatron_endprompt.data.builder import BuildConfig
from megatron_endprompt.data.packing import Packer
from megatron_endprompt.positions import SchemeConfig, Segment

P, T, K = 32, 512, 4


def _pack(packing: str, docs: list[np.ndarray], source: str = "document"):
    packer = Packer(SchemeConfig("endprompt-tail", P, T, K, "fixed", tail_source=source), [], 0, packing)
    for doc in docs:
        packer.feed(doc)
    return list(packer.drain()), packer


def _doc(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.int64)


def test_document_packing_takes_the_documents_last_k_tokens():
    long, exact = _doc(1000, 100), _doc(2000, P)
    samples, packer = _pack("document", [long, exact])
    (tokens, segments), (tokens2, segments2) = samples
    assert tokens.tolist() == long[: P - K].tolist() + long[-K:].tolist()  # middle 68 tokens skipped
    assert segments == [Segment(P - K, 0, "text"), Segment(K, T - K, "text")]
    assert tokens2.tolist() == exact.tolist() and segments2 == [Segment(P, 0, "text")]  # fits: no jump
    assert packer.counts()["tokens_truncated"] == 100 - P
    assert packer.origins().tolist() == [[0, 0], [1, 0]]


def test_sample_source_keeps_the_samples_own_last_k_tokens():
    long = _doc(1000, 100)
    [(tokens, segments)], _ = _pack("document", [long], source="sample")
    assert tokens.tolist() == long[:P].tolist()
    assert segments == [Segment(P - K, 0, "text"), Segment(K, T - K, "text")]


def test_aligned_packing_tails_the_overflowing_document():
    a, b = _doc(100, 10), _doc(200, 40)  # b has 22 tokens of room, overflows: its last 4 end the sample
    c, d = _doc(300, 30), _doc(400, 10)  # d has 2 tokens of room (<= K): a plain contiguous sample
    samples, packer = _pack("aligned", [a, b, c, d])
    (t1, s1), (t2, s2) = samples
    assert t1.tolist() == a.tolist() + b[: P - K - 10].tolist() + b[-K:].tolist()
    assert s1 == [Segment(P - K, 0, "text"), Segment(K, T - K, "text")]
    assert t2.tolist() == c.tolist() + d[:2].tolist() and s2 == [Segment(P, 0, "text")]
    assert packer.origins().tolist() == [[0, 0], [2, 0]]
    assert packer.counts()["tokens_truncated"] == (40 - 22) + (10 - 2)


def test_concat_packing_origins_carry_the_offset_inside_the_document():
    packer = Packer(SchemeConfig("contiguous", P, P), [], 0, "concat")
    for doc in (_doc(0, 20), _doc(100, 50)):
        packer.feed(doc)
    assert packer.origins().tolist() == [[0, 0], [1, 12]]  # the second sample starts 12 tokens into doc 1


def test_document_tails_refused_with_concat_and_other_schemes():
    scheme = SchemeConfig("endprompt-tail", P, T, K, tail_source="document")
    cfg = BuildConfig(
        input=["x.jsonl"], output_prefix="o", tokenizer_type="t", tokenizer_model="m", scheme=scheme
    )
    with pytest.raises(ValueError, match="--tail-source document needs --packing aligned or document"):
        cfg.validate()
    with pytest.raises(ValueError, match="--tail-source document applies to --scheme endprompt-tail only"):
        SchemeConfig("pose", P, T, tail_source="document").validate()
    with pytest.raises(ValueError, match="--tail-source must be one of"):
        SchemeConfig("endprompt-tail", P, T, K, tail_source="middle").validate()
