# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures are redefined as arguments)
"""tools/build_endprompt_data.py run as a process: every failure exits 2 with one line and leaves no output
behind, --strict names the bad line, --report prints the coverage table, and a build killed by SIGKILL mid-way
leaves no complete-looking output. The builder in process: tests/unit/test_builder*.py, test_data_coverage.py."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_endprompt.data import load_samples
from megatron_endprompt.data.tokenizers import load_tokenizer
from tests.fixtures.data_fixtures import corpus_jsonl, corpus_texts, data_dir, sp_model  # noqa: F401
from tests.unit.test_builder import BAD_LINES, _build_with_sidecar_version, _outputs
from tests.unit.test_builder_failures import _leftovers

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "build_endprompt_data.py"

# The fault is injected from here, not by the builder: `python -c KILL_AFTER_SAMPLES TOOL N ARGS...` wraps the
# sidecar writer's per-sample `add` to SIGKILL the process once N samples are written, then runs the CLI.
KILL_AFTER_SAMPLES = """
import os, runpy, signal, sys
from megatron_endprompt.data.sidecar import SidecarWriter
tool, after = sys.argv[1], int(sys.argv[2])
add = SidecarWriter.add
def add_then_kill(self, segments):
    add(self, segments)
    if self.count >= after:
        print(f"killing the build after {self.count} samples", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
SidecarWriter.add = add_then_kill
sys.argv = [tool, *sys.argv[3:]]
runpy.run_path(tool, run_name="__main__")
"""


def _cli(*args: str, preexec_fn=None, kill_after: int | None = None) -> subprocess.CompletedProcess:
    cli = [sys.executable, str(TOOL)]
    if kill_after is not None:
        cli = [sys.executable, "-c", KILL_AFTER_SAMPLES, str(TOOL), str(kill_after)]
    return subprocess.run(
        [*cli, "--no-progress", *args],
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


# a build killed mid-way ------------------------------------------------------------------------------------


def test_killed_build_leaves_no_complete_output_and_rerun_succeeds(tmp_path, corpus_jsonl, sp_model):
    args = [
        "--input",
        str(corpus_jsonl),
        "--tokenizer-type",
        "SentencePieceTokenizer",
        "--tokenizer-model",
        sp_model,
        "--seq-length",
        "32",
        "--append-eod",
    ]
    prefix = tmp_path / "k"
    crashed = _cli(*args, "--output-prefix", str(prefix), kill_after=5)
    assert crashed.returncode == -9, crashed.stderr
    assert "killing the build after 5 samples" in crashed.stderr
    assert not Path(f"{prefix}.bin").exists() and not Path(f"{prefix}.idx").exists()
    # killed while writing samples: the partial output is only temporary files, the index was never begun
    assert list(tmp_path.glob("k.bin.tmp-*")) and list(tmp_path.glob("k.seg.tmp-*"))
    assert not list(tmp_path.glob("k.idx.tmp-*")) and not list(tmp_path.glob("k.meta.json.tmp-*"))
    with pytest.raises(FileNotFoundError):
        load_samples(prefix)
    ok = _cli(*args, "--output-prefix", str(prefix))
    assert ok.returncode == 0, ok.stderr
    assert len(load_samples(prefix)) > 5 and not list(tmp_path.glob("k.*.tmp-*"))
    # A killed rebuild over a complete build leaves the old build readable and unchanged.
    before = _outputs(prefix)
    crashed = _cli(*args, "--seed", "99", "--output-prefix", str(prefix), kill_after=5)
    assert crashed.returncode == -9 and _outputs(prefix) == before
    load_samples(prefix)


# bad input, bad sidecar, no BOS ----------------------------------------------------------------------------


def test_strict_exits_2_naming_the_first_bad_line(tmp_path, sp_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(BAD_LINES) + b"\n")
    cli = _cli(
        "--input",
        str(bad),
        "--output-prefix",
        str(tmp_path / "s2"),
        "--tokenizer-type",
        "SentencePieceTokenizer",
        "--tokenizer-model",
        sp_model,
        "--seq-length",
        "16",
        "--strict",
        "--packing",
        "document",
    )
    assert cli.returncode == 2 and "bad.jsonl:2: malformed_json" in cli.stderr


def test_report_of_an_unknown_sidecar_version_exits_2(tmp_path, corpus_jsonl, sp_model):
    prefix = _build_with_sidecar_version(tmp_path, corpus_jsonl, sp_model, 99)
    cli = _cli("--output-prefix", str(prefix), "--report")
    assert cli.returncode == 2 and "sidecar version 99" in cli.stderr


def test_tokenizer_without_bos_exits_2_naming_the_flag(tmp_path, corpus_jsonl) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(
        {w for line in corpus_jsonl.read_text().splitlines() for w in json.loads(line)["text"].split()}
    )
    vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    hf = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.save(str(tmp_path / "tokenizer.json"))
    assert load_tokenizer("HuggingFaceTokenizer", str(tmp_path / "tokenizer.json")).bos is None
    args = ["--input", str(corpus_jsonl), "--output-prefix", str(tmp_path / "nobos")]
    args += [
        "--tokenizer-type",
        "HuggingFaceTokenizer",
        "--tokenizer-model",
        str(tmp_path / "tokenizer.json"),
    ]
    proc = _cli(*args, "--seq-length", "32", "--prepend-bos")
    assert proc.returncode == 2, proc.stderr
    assert "--prepend-bos" in proc.stderr and "no BOS" in proc.stderr
    assert not list(tmp_path.glob("nobos*"))


# 0 samples (issue 17) --------------------------------------------------------------------------------------


def test_empty_corpus_exits_2_with_counts_and_writes_nothing(tmp_path, sp_model):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    line = _one_error_line(_cli_build(empty, tmp_path / "out", sp_model))
    assert "0 samples: documents read 0, used 0, skipped: none" in line
    assert "--input holds no documents" in line and f"Nothing written to {tmp_path / 'out'}" in line
    assert _leftovers(tmp_path, "out") == []


# unreadable / unwritable files (issue 17) ------------------------------------------------------------------


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


# --report --------------------------------------------------------------------------------------------------


def test_cli_report(tmp_path, corpus_jsonl, sp_model):
    prefix = tmp_path / "rep"
    out = _cli(
        "--input",
        str(corpus_jsonl),
        "--output-prefix",
        str(prefix),
        "--tokenizer-type",
        "SentencePieceTokenizer",
        "--tokenizer-model",
        sp_model,
        "--scheme",
        "endprompt-tail",
        "--seq-length",
        "32",
        "--target-length",
        "2048",
        "--terminal-length",
        "4",
        "--report",
    )
    assert out.returncode == 0, out.stderr
    assert "[1024, 2047]" in out.stdout
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["pairs"][-1] > 0 and summary["target_length"] == 2048
    assert (tmp_path / "rep.coverage.png").stat().st_size > 1000
