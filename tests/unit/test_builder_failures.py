# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures are redefined as arguments)
"""Builder failures (issue 17): a build that yields no sample, unreadable or unwritable files, and very long
documents. Every failure exits 2 with one line and leaves no output behind."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_endprompt.data.builder import BuildConfig, NoSamplesError, build
from megatron_endprompt.positions import SchemeConfig
from tests.fixtures.data_fixtures import corpus_jsonl, corpus_texts, data_dir, sp_model, write_jsonl  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


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


def _cli(*args: str, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_endprompt_data.py"), "--no-progress", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=preexec_fn,
        timeout=300,
    )


def _cli_build(corpus: Path, prefix: Path, model: str, *extra: str, **kw) -> subprocess.CompletedProcess:
    return _cli(
        "--input", str(corpus), "--output-prefix", str(prefix), "--tokenizer-type", "SentencePieceTokenizer",
        "--tokenizer-model", model, "--seq-length", "16", "--append-eod", *extra, **kw,
    )  # fmt: skip


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def _leftovers(directory: Path, stem: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(stem))


# 0 samples -------------------------------------------------------------------------------------------------


def test_empty_corpus_exits_2_with_counts_and_writes_nothing(tmp_path, sp_model):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    line = _one_error_line(_cli_build(empty, tmp_path / "out", sp_model))
    assert "0 samples: documents read 0, used 0, skipped: none" in line
    assert "--input holds no documents" in line and f"Nothing written to {tmp_path / 'out'}" in line
    assert _leftovers(tmp_path, "out") == []


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


# unreadable / unwritable files -----------------------------------------------------------------------------


def test_output_under_a_file_exits_2_with_path_and_reason(tmp_path, sp_model, corpus_jsonl):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    line = _one_error_line(_cli_build(corpus_jsonl, blocker / "sub" / "out", sp_model))
    assert line.startswith(f"error: {blocker / 'sub'}:") and "Not a directory" in line, line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_dir_exits_2_with_path_and_reason(tmp_path, sp_model, corpus_jsonl):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        line = _one_error_line(_cli_build(corpus_jsonl, ro / "out", sp_model))
    finally:
        ro.chmod(0o700)
    assert str(ro / "out") in line and "Permission denied" in line, line
    assert list(ro.iterdir()) == []


def _limit_file_size() -> None:
    """Child setup: files may not grow past 4 KiB; a larger write fails with EFBIG (like a full disk)."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_full_disk_exits_2_with_one_line_and_no_partial_output(tmp_path, sp_model, corpus_jsonl):
    prefix = tmp_path / "new_dir" / "out"
    line = _one_error_line(_cli_build(corpus_jsonl, prefix, sp_model, preexec_fn=_limit_file_size))
    assert line == f"error: {prefix}.* (--output-prefix): File too large", line
    assert not (tmp_path / "new_dir").exists()  # the directory the build created is gone too


def test_missing_input_exits_2_with_one_line(tmp_path, sp_model):
    line = _one_error_line(_cli_build(tmp_path / "nope.jsonl", tmp_path / "out", sp_model))
    assert "nope.jsonl" in line and "is not a file" in line
    assert _leftovers(tmp_path, "out") == []


def test_corrupt_gzip_input_exits_2_naming_the_file(tmp_path, sp_model, corpus_texts):
    good = gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts).encode())
    corrupt = tmp_path / "c.jsonl.gz"
    corrupt.write_bytes(good[: len(good) // 2])  # truncated download
    line = _one_error_line(_cli_build(corrupt, tmp_path / "out", sp_model))
    assert line.startswith(f"error: {corrupt}: read error after line ") and "end-of-stream" in line, line
    assert _leftovers(tmp_path, "out") == []
