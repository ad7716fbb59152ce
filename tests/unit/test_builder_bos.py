# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures are redefined as arguments)
"""--prepend-bos: every document starts with the tokenizer's BOS (a tokenizer without one is refused:
tests/integration/test_build_cli.py)."""

from __future__ import annotations

import numpy as np

from megatron_endprompt.data import load_samples
from megatron_endprompt.data.builder import BuildConfig, build
from megatron_endprompt.data.tokenizers import load_tokenizer
from megatron_endprompt.positions import SchemeConfig
from tests.fixtures.data_fixtures import corpus_jsonl, corpus_texts, data_dir, sp_model  # noqa: F401


def _build(tmp, corpus, model, packing, prepend_bos, name):
    return build(
        BuildConfig(
            input=[str(corpus)],
            output_prefix=str(tmp / name),
            tokenizer_type="SentencePieceTokenizer",
            tokenizer_model=model,
            scheme=SchemeConfig("contiguous", 32, 32),
            packing=packing,
            append_eod=True,
            prepend_bos=prepend_bos,
        )
    )


def test_every_document_starts_with_bos(tmp_path, corpus_jsonl, corpus_texts, sp_model) -> None:
    tok = load_tokenizer("SentencePieceTokenizer", sp_model)
    assert tok.bos is not None and tok.bos != tok.eod
    meta = _build(tmp_path, corpus_jsonl, sp_model, "concat", True, "concat")
    stream = np.concatenate([s["tokens"] for s in load_samples(meta["config"]["output_prefix"])])
    expected = np.concatenate([[tok.bos, *tok.encode(t), tok.eod] for t in corpus_texts])
    np.testing.assert_array_equal(stream, expected[: len(stream)])
    assert meta["config"]["prepend_bos"] is True and meta["tokenizer"]["bos"] == tok.bos
    for packing in ("aligned", "document"):
        meta = _build(tmp_path, corpus_jsonl, sp_model, packing, True, packing)
        samples = load_samples(meta["config"]["output_prefix"])
        assert len(samples) > 5
        assert all(int(samples[i]["tokens"][0]) == tok.bos for i in range(len(samples)))


def test_default_is_off(tmp_path, corpus_jsonl, corpus_texts, sp_model) -> None:
    tok = load_tokenizer("SentencePieceTokenizer", sp_model)
    meta = _build(tmp_path, corpus_jsonl, sp_model, "concat", False, "off")
    stream = np.concatenate([s["tokens"] for s in load_samples(meta["config"]["output_prefix"])])
    assert tok.bos not in stream.tolist()
    assert meta["config"]["prepend_bos"] is False
