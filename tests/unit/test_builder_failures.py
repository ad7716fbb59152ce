# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures are redefined as arguments)
"""Builder failures (issue 17) in process: a build that yields no sample raises NoSamplesError with per-reason
counts and leaves no output behind (a rebuild keeps the previous build). The CLI's exit 2 with one line for
these and for unreadable or unwritable files: tests/integration/test_build_cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_endprompt.data.builder import BuildConfig, NoSamplesError, build
from megatron_endprompt.positions import SchemeConfig
from tests.fixtures.data_fixtures import corpus_jsonl, corpus_texts, data_dir, sp_model, write_jsonl  # noqa: F401


def _cfg(tmp: Path, corpus, model: str, seq: int = 16, **kw) -> BuildConfig:
    return BuildConfig(
        input=[str(corpus)],
        output_prefix=str(kw.pop("prefix", tmp / "out")),
        tokenizer_type="SentencePieceTokenizer",
        tokenizer_model=model,
        scheme=SchemeConfig("contiguous", seq, seq),
        append_eod=True,
        **kw,
    )


def _leftovers(directory: Path, stem: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(stem))


# 0 samples -------------------------------------------------------------------------------------------------


def test_missing_text_key_fails_with_the_count_and_the_flag(tmp_path, sp_model, corpus_texts):
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_texts[:5], key="content")
    with pytest.raises(NoSamplesError, match="skipped: missing_key=5.*documents lack --json-keys text"):
        build(_cfg(tmp_path, corpus, sp_model))
    assert _leftovers(tmp_path, "out") == []


def test_too_short_documents_fail_with_per_reason_counts(tmp_path, sp_model):
    lines = [{"text": "the sky"}, {"text": "  "}, {"body": "x"}, {"text": "the sun is yellow"}]
    corpus = tmp_path / "short.jsonl"
    corpus.write_text("\n".join(json.dumps(d) for d in lines) + "\nnot json\n")
    with pytest.raises(NoSamplesError) as err:
        build(_cfg(tmp_path, corpus, sp_model, seq=64, packing="document"))
    msg = str(err.value)
    assert (
        "documents read 5, used 0, skipped: malformed_json=1, missing_key=1, empty_text=1, too_short=2" in msg
    )
    assert "--packing document skips documents shorter than one sample" in msg
    assert _leftovers(tmp_path, "out") == []


def test_corpus_shorter_than_one_sample_fails_naming_seq_length(tmp_path, sp_model, corpus_texts):
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_texts[:2])
    with pytest.raises(NoSamplesError, match=r"--seq-length 100000 \(the \d+ tokens left are fewer than one"):
        build(_cfg(tmp_path, corpus, sp_model, seq=100_000))
    assert _leftovers(tmp_path, "out") == []


def test_zero_sample_rebuild_keeps_the_previous_build(tmp_path, sp_model, corpus_jsonl):
    build(_cfg(tmp_path, corpus_jsonl, sp_model))
    before = {p.name: p.read_bytes() for p in tmp_path.glob("out.*")}
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(NoSamplesError, match="skipped: blank_line=2"):
        build(_cfg(tmp_path, empty, sp_model))
    assert {p.name: p.read_bytes() for p in tmp_path.glob("out.*")} == before
